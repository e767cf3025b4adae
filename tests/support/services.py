"""Real services for the integration tests, each started on 127.0.0.1 (free port) and stopped
through its process group: a throwaway PostgreSQL cluster, the moto S3 server, `git daemon`,
and MLflow tracking servers started with the project's own scripts in deploy/.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from tests.support import PROJECT_DIR
from tests.support.processes import (
    BackgroundProcess,
    background_process,
    basic_auth,
    free_port,
    http_ok,
    mlflow_environment,
    post_json,
    start_background_process,
)

DEV_SERVER_SCRIPT = PROJECT_DIR / "deploy" / "dev-server.sh"
PRODUCTION_SERVER_SCRIPT = PROJECT_DIR / "deploy" / "production-server.sh"
SERVER_START_TIMEOUT_S = 180
# initdb refuses to run as root: as root, the cluster belongs to Debian's `postgres` user.
POSTGRES_OS_USER = "postgres"
# Test-only credentials of throwaway services; nothing outside this test run can reach them.
POSTGRES_USER = "mlflow"
POSTGRES_PASSWORD = "throwaway-postgres-password"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "throwaway-admin-password"
USER = "fraud-team"
USER_PASSWORD = "throwaway-user-password"
S3_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Never look for credentials or settings anywhere else (instance metadata, ~/.aws).
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
S3_VARIABLES = (*S3_ENVIRONMENT, "MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN")


def postgres_bindir() -> Path | None:
    """Where initdb and postgres are (Debian keeps them off PATH), or None if not installed."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


class _Postmaster:
    """A cluster's server process, which can be stopped and started again on the same port and
    data directory (so URIs and databases stay valid across an outage)."""

    # How `stop` ends the server: PostgreSQL's fast and immediate shutdowns (the latter skips
    # the checkpoint, so the next start runs crash recovery), or SIGKILL to the postmaster and
    # every backend at once (a crash).
    SIGNALS: ClassVar[dict[str, int]] = {
        "fast": signal.SIGINT,
        "immediate": signal.SIGQUIT,
        "kill": signal.SIGKILL,
    }

    def __init__(self, command: list[str], root: Path, os_user: str | None) -> None:
        self.command = command
        self.root = root
        self.os_user = os_user
        self._lock = threading.RLock()
        self._process: BackgroundProcess | None = None

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(self, ready: Callable[[], bool]) -> None:
        with self._lock:
            if self._process is not None:
                return
            process = start_background_process(
                self.command, self.root / "postgres.log", cwd=self.root, user=self.os_user
            )
            try:
                process.wait_until(ready, 60, "PostgreSQL")
            except BaseException:
                process.stop(signum=signal.SIGINT)
                raise
            self._process = process

    def stop(self, mode: str = "fast") -> None:
        with self._lock:
            if self._process is None:
                return
            # Backends lead sessions of their own (PostgreSQL makes them), so a crash must
            # kill them one by one: one left alive would keep the next start from starting.
            if mode == "kill":
                for pid in _children(self._process.process.pid):
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self._process.stop(grace_s=30, signum=self.SIGNALS[mode])
            self._process = None


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
    return children


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server on 127.0.0.1:``port``; one of `postgres_cluster` can also be stopped
    and started again (`stop`, `start`, `outage`, `down_for`) to test what depends on it."""

    port: int
    _postmaster: _Postmaster | None = field(default=None, repr=False, compare=False)

    def uri(self, database: str, driver: str = "+psycopg") -> str:
        """The database's URI; with ``+psycopg`` for SQLAlchemy (MLflow), which would otherwise
        pick its default driver: psycopg2 before SQLAlchemy 2.1, psycopg 3 from it on."""
        return (
            f"postgresql{driver}://{POSTGRES_USER}:{POSTGRES_PASSWORD}"
            f"@127.0.0.1:{self.port}/{database}"
        )

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its SQLAlchemy URI."""
        import psycopg

        with psycopg.connect(self.uri("postgres", driver=""), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def accepts_connections(self) -> bool:
        return _can_connect(self)

    @property
    def running(self) -> bool:
        return self._control().running

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down and return once it has exited (then connections are refused:
        nothing listens on the port). ``mode``: "fast" (PostgreSQL's fast shutdown: sessions
        are ended, a checkpoint is written), "immediate" (no checkpoint, recovery at the next
        start) or "kill" (SIGKILL to the postmaster and its backends: a crash)."""
        self._control().stop(mode)

    def start(self) -> None:
        """Start the stopped server again (same port, same data); return once it accepts
        connections. Does nothing if it is running."""
        self._control().start(self.accepts_connections)

    @contextmanager
    def outage(self, mode: str = "fast") -> Iterator[None]:
        """The server is down inside the block and running again after it, whatever happens."""
        self.stop(mode)
        try:
            yield
        finally:
            self.start()

    @contextmanager
    def down_for(self, seconds: float, mode: str = "fast", after: float = 0.0) -> Iterator[Outage]:
        """An outage in a background thread: ``after`` seconds from now the server stops, then
        it starts again ``seconds`` later, while the block goes on (e.g. sending requests). On
        leaving the block the thread is waited for and the server is running again; an error of
        the thread is raised there. The yielded `Outage` tells when it stopped and restarted."""
        outage = Outage(threading.Event(), threading.Event())

        def run() -> None:
            try:
                time.sleep(after)
                self.stop(mode)
                outage.stopped_at = time.monotonic()
                outage.stopped.set()
                time.sleep(seconds)
                self.start()
                outage.restarted_at = time.monotonic()
                outage.restarted.set()
            except BaseException as error:  # noqa: BLE001 - raised again in the test's thread
                outage.error = error

        thread = threading.Thread(target=run, name="postgres-outage", daemon=True)
        thread.start()
        try:
            yield outage
        finally:
            thread.join(timeout=after + seconds + 120)
            self.start()
        if outage.error is not None:
            raise outage.error

    def _control(self) -> _Postmaster:
        assert self._postmaster is not None, "only a cluster of postgres_cluster() can stop"
        return self._postmaster


@dataclass
class Outage:
    """What `Postgres.down_for` did, and when (time.monotonic())."""

    stopped: threading.Event
    restarted: threading.Event
    stopped_at: float | None = None
    restarted_at: float | None = None
    error: BaseException | None = None


def _can_connect(postgres: Postgres) -> bool:
    import psycopg

    try:
        psycopg.connect(postgres.uri("postgres", driver=""), connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


@contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    """A new PostgreSQL cluster (password authentication, TCP on 127.0.0.1 only), which the
    test can stop and start again (`Postgres.stop`, `start`, `outage`, `down_for`)."""
    bindir = postgres_bindir()
    assert bindir is not None, "PostgreSQL is not installed"
    os_user = POSTGRES_OS_USER if os.geteuid() == 0 else None
    # Not under pytest's tmp folder: that one is private to root, and the cluster's owner must
    # reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="fraud-postgres-"))
    try:
        password_file = root / "password"
        password_file.write_text(POSTGRES_PASSWORD + "\n")
        if os_user is not None:
            for path in (root, password_file):
                shutil.chown(path, os_user, os_user)
        initdb = subprocess.run(
            [
                str(bindir / "initdb"),
                *("--pgdata", str(root / "data"), "--username", POSTGRES_USER),
                *("--pwfile", str(password_file), "--auth", "scram-sha-256"),
                *("--encoding", "UTF8", "--locale", "C", "--no-sync"),
            ],
            cwd=root,
            user=os_user,
            group=os_user,
            extra_groups=[] if os_user else None,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert initdb.returncode == 0, initdb.stderr[-3000:]
        port = free_port()
        command = [
            *(str(bindir / "postgres"), "-D", str(root / "data"), "-p", str(port)),
            *("-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="),
            # A throwaway cluster: durability is not worth its fsyncs.
            *("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
        ]
        postgres = Postgres(port, _Postmaster(command, root, os_user))
        postgres.start()
        try:
            yield postgres
        finally:
            postgres.stop("fast")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class S3:
    endpoint_url: str

    @property
    def client_environment(self) -> dict[str, str]:
        """What an S3 client (MLflow with boto3) needs to use this endpoint."""
        return {**S3_ENVIRONMENT, "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url}

    def _client(self):  # a boto3 client (no static type)
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=S3_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_ENVIRONMENT["AWS_DEFAULT_REGION"],
        )

    def create_bucket(self, name: str) -> None:
        self._client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self._client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextmanager
def moto_s3(workdir: Path) -> Iterator[S3]:
    """moto's S3 server, the stand-in for S3 (or MinIO) in these tests."""
    port = free_port()
    s3 = S3(endpoint_url=f"http://127.0.0.1:{port}")
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with background_process(command, workdir / "moto.log", cwd=workdir) as server:
        server.wait_until(lambda: http_ok(f"{s3.endpoint_url}/moto-api/"), 60, "moto server")
        yield s3


@dataclass(frozen=True)
class TrackingServer:
    url: str
    # What a client needs besides the URL (credentials; S3 access in direct mode).
    client_environment: dict[str, str] = field(default_factory=dict)
    process: BackgroundProcess | None = None

    def kill(self) -> None:
        """SIGKILL the server and its workers: a crash, not a shutdown."""
        assert self.process is not None
        os.killpg(self.process.process.pid, signal.SIGKILL)
        self.process.process.wait()


@contextmanager
def _tracking_server(
    script: Path, workdir: Path, port: int, settings: Mapping[str, str]
) -> Iterator[TrackingServer]:
    env = mlflow_environment(
        None,
        MLFLOW_PORT=str(port),
        MLFLOW_WORKERS="1",
        # mktemp in the production script lands here, where the test can look for leftovers.
        TMPDIR=str(workdir),
        **settings,
    )
    url = f"http://127.0.0.1:{port}"
    command = ["bash", str(script)]
    with background_process(command, workdir / "server.log", env=env, cwd=workdir) as server:
        server.wait_until(lambda: http_ok(f"{url}/health"), SERVER_START_TIMEOUT_S, script.name)
        yield TrackingServer(url, process=server)


@contextmanager
def dev_server(
    workdir: Path, port: int | None = None, settings: Mapping[str, str] | None = None
) -> Iterator[TrackingServer]:
    """deploy/dev-server.sh with its defaults (mlflow.db and ./mlartifacts in ``workdir``),
    or the server variables in ``settings``; started again on the same ``port`` and
    ``workdir``, it is the same server restarted."""
    port = port or free_port()
    with _tracking_server(DEV_SERVER_SCRIPT, workdir, port, settings or {}) as server:
        yield server


@contextmanager
def production_server(
    workdir: Path,
    postgres: Postgres,
    s3: S3,
    name: str,
    proxied: bool,
    *,
    s3_endpoint_for_server: str | None = None,
    s3_endpoint_for_clients: str | None = None,
) -> Iterator[TrackingServer]:
    """deploy/production-server.sh on new PostgreSQL databases and a new S3 bucket ``name``.

    Proxied: artifacts go through the server, which alone holds S3 credentials. Direct: the
    server hands out s3:// locations and clients need S3 credentials and the endpoint. Clients
    sign in as a user the admin created, not as the admin.

    The server reaches S3 at ``s3_endpoint_for_server`` and direct-mode clients at
    ``s3_endpoint_for_clients`` (both default to ``s3.endpoint_url``), e.g. a `TcpProxy` in
    front of moto that a test cuts, while the test itself still reads moto through ``s3``.
    """
    port = free_port()
    s3.create_bucket(name)
    artifacts = f"s3://{name}/artifacts"
    server_s3 = S3(s3_endpoint_for_server or s3.endpoint_url)
    clients_s3 = S3(s3_endpoint_for_clients or s3.endpoint_url)
    settings = {
        "MLFLOW_BACKEND_STORE_URI": postgres.create_database(f"{name}_tracking"),
        "MLFLOW_AUTH_DATABASE_URI": postgres.create_database(f"{name}_auth"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "throwaway-secret-key",
        "MLFLOW_HOST": "127.0.0.1",
        # The one Host name clients use; anything else is refused.
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{port}",
        **server_s3.client_environment,
    }
    if proxied:
        settings["MLFLOW_ARTIFACTS_DESTINATION"] = artifacts
    else:
        settings.update(MLFLOW_SERVE_ARTIFACTS="false", MLFLOW_DEFAULT_ARTIFACT_ROOT=artifacts)
    with _tracking_server(PRODUCTION_SERVER_SCRIPT, workdir, port, settings) as server:
        status, body = post_json(
            f"{server.url}/api/2.0/mlflow/users/create",
            {"username": USER, "password": USER_PASSWORD},
            basic_auth(ADMIN_USER, ADMIN_PASSWORD),
        )
        assert status == 200, body
        credentials = {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": USER_PASSWORD}
        client = credentials if proxied else {**credentials, **clients_s3.client_environment}
        # The process too, so that a test can kill() this server as well.
        yield replace(server, client_environment=client)


def git(*args: str, cwd: Path) -> str:
    """Run git with a fixed identity (no user configuration needed); return its output."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


@contextmanager
def git_daemon(base: Path) -> Iterator[str]:
    """`git daemon` serving the repositories under ``base``; yields the git:// base URL."""
    port = free_port()
    command = [
        *("git", "daemon", f"--base-path={base}", "--export-all", "--reuseaddr"),
        *("--listen=127.0.0.1", f"--port={port}", "--informative-errors", str(base)),
    ]
    url = f"git://127.0.0.1:{port}"
    with background_process(command, base.parent / "git-daemon.log", cwd=base) as daemon:
        daemon.wait_until(lambda: _port_open(port), 30, "git daemon")
        yield url


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0
