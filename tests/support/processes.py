"""Helpers shared by the end-to-end and integration tests: project copies, `mlflow run`,
background processes on loopback, and the checks every finished pipeline must pass.

Every process a test starts gets a session (process group) of its own and is stopped through it,
so nothing it started (steps, uvicorn workers, database backends) outlives the test.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from tests.support import LAUNCHER_VARIABLES, PROJECT_DIR, PROJECT_FILES

EXPERIMENT = "fraud-detection"
CHAMPION_URI = "models:/fraud-detector@champion"
PIPELINE_STEPS = ("train", "evaluate", "register")
COMMAND_TIMEOUT_S = 900


def copy_project(destination: Path) -> Path:
    """Copy the files `mlflow run` needs into ``destination`` (created) and return it."""
    destination.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = PROJECT_DIR / name
        if source.is_dir():
            shutil.copytree(
                source, destination / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(source, destination / name)
    return destination


def mlflow_environment(tracking_uri: str | None, **variables: str) -> dict[str, str]:
    """This process's environment for a launcher: the given tracking URI (None: MLflow's
    default, the working directory's mlflow.db), no inherited run or experiment, and this
    interpreter first on PATH (`mlflow run` starts `python main.py` through the shell)."""
    env = dict(os.environ)
    for name in (*LAUNCHER_VARIABLES, "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    if tracking_uri is not None:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(variables)
    return env


def writing_bytecode(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with Python writing its compiled bytecode (``__pycache__``), its default.

    This machine sets PYTHONDONTWRITEBYTECODE=1. In an environment that uv has just built for
    `mlflow run` or `mlflow models serve`, nothing is compiled yet, so with that setting every
    process compiles every module it imports again (13.5 s instead of 5 s per step). Unset, the
    first process compiles what it imports, once, and the others read it. The tests used to set
    UV_COMPILE_BYTECODE=1 instead, which compiles all 8,500 files of the environment as uv
    installs it, imported or not. Measured on the 2-core machine, each test alone, alternating
    with the old setting (medians of three pairs and two): `mlflow models serve --env-manager
    uv` 20 s of CPU instead of 51 (tests/integration/test_model_environment.py), the pipeline
    under uv 47 s instead of 59 (tests/integration/test_launchers.py).
    """
    return {name: value for name, value in env.items() if name != "PYTHONDONTWRITEBYTECODE"}


def run_command(
    command: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = COMMAND_TIMEOUT_S,
) -> subprocess.CompletedProcess:
    """Run ``command`` in a session of its own; on timeout stop the whole session and fail.

    Unless ``env`` names a TMPDIR, the command gets a private one, removed afterwards: MLflow
    leaves a folder in it for every project run.
    """
    with tempfile.TemporaryDirectory(prefix="test-command-") as scratch:
        process = subprocess.Popen(
            list(command),
            env={"TMPDIR": scratch, **env},
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(
                f"{' '.join(command[:4])}... did not finish in {timeout:.0f} s\n{stderr[-4000:]}"
            ) from None
        finally:
            # Anything the command left behind in its session (none expected) goes with it.
            _signal_group(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def mlflow_run(
    project: str | Path,
    env: Mapping[str, str],
    *args: str,
    env_manager: str = "local",
    cwd: Path | None = None,
    timeout: float = COMMAND_TIMEOUT_S,
    **params: str,
) -> subprocess.CompletedProcess:
    """`mlflow run <project> --env-manager <env_manager> <args> -P key=value...`."""
    command = [sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", env_manager]
    command += args
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    return run_command(command, env, cwd=cwd, timeout=timeout)


def assert_succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-6000:]}"


_PORT_POOL_START = 10_000
_PORTS_PER_WORKER = 1_500
_next_port: Iterator[int] | None = None


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999


def _port_candidates() -> Iterator[int]:
    """This process's own block of ports, below the kernel's ephemeral range.

    A port asked of the kernel (bind to 0) and released is free only for a moment: another test
    worker's Spark gateway, Redis client or HTTP connection may take it from the ephemeral range
    before our server binds it (CI once met a py4j gateway on the port of a scoring server). The
    kernel never hands out ports below its ephemeral range, and each xdist worker has a block of
    its own, so a port given here is taken only by the server it was meant for.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    low = _PORT_POOL_START + index * _PORTS_PER_WORKER
    high = min(low + _PORTS_PER_WORKER, _ephemeral_range()[0])
    if high - low < 10:  # an unusual ephemeral range: fall back to the kernel's choice
        while True:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                yield probe.getsockname()[1]
    offset = os.getpid() % (high - low)  # two runs on one machine start apart
    while True:
        for step in range(high - low):
            yield low + (offset + step) % (high - low)


def free_port() -> int:
    """A loopback port nothing listens on, not given out before by this process."""
    global _next_port
    if _next_port is None:
        _next_port = _port_candidates()
    for port in _next_port:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("unreachable: the port candidates never end")


class BackgroundProcess:
    """A long-running process (a server) in its own session, its output in a log file."""

    def __init__(self, process: subprocess.Popen, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log_tail(self, characters: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:]

    def wait_until(self, ready: Any, timeout: float, what: str) -> None:
        """Poll ``ready()`` until it is true; fail with the log if the process dies first."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{what} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self, grace_s: float = 30, signum: int = signal.SIGTERM) -> None:
        """``signum`` (SIGTERM) to the whole session, SIGKILL after ``grace_s``."""
        _signal_group(self.process.pid, signum)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # Children that ignored SIGTERM or outlived the leader.
        _signal_group(self.process.pid, signal.SIGKILL)


def start_background_process(
    command: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> BackgroundProcess:
    """Start ``command`` in a new session (as ``user``, if given); the caller stops it."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(command),
            env=None if env is None else dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
    return BackgroundProcess(process, log_path)


@contextmanager
def background_process(
    command: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> Iterator[BackgroundProcess]:
    """Start ``command`` in a new session (as ``user``, if given); stop the session on exit."""
    running = start_background_process(command, log_path, env, cwd, user)
    try:
        yield running
    finally:
        running.stop()


def http_ok(url: str, headers: Mapping[str, str] | None = None) -> bool:
    """True when ``url`` answers 2xx; False while nothing listens yet."""
    try:
        return http_status(url, headers) < 300
    except OSError:
        return False


def http_status(url: str, headers: Mapping[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def post_json(
    url: str, payload: dict, headers: Mapping[str, str] | None = None
) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def basic_auth(username: str, password: str) -> dict[str, str]:
    """The header of HTTP basic authentication."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _signal_group(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, signum)


def pipeline_runs(client: MlflowClient, experiment: str = EXPERIMENT) -> dict[str, Any]:
    """The runs of ``experiment`` by their ``fraud.step`` tag (the latest of each)."""
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
    return {run.data.tags.get("fraud.step"): run for run in runs}


def assert_pipeline_finished(client: MlflowClient, experiment: str = EXPERIMENT) -> dict[str, Any]:
    """Every run of the pipeline finished, each step a project run nested under `main`."""
    steps = pipeline_runs(client, experiment)
    assert {"main", *PIPELINE_STEPS, "candidate"} <= set(steps), sorted(map(str, steps))
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    assert all(run.info.status == "FINISHED" for run in runs)
    main = steps["main"]
    for step in PIPELINE_STEPS:
        child = steps[step]
        assert child.data.tags["mlflow.parentRunId"] == main.info.run_id, step
        assert child.data.tags["mlflow.project.entryPoint"] == step
    return steps


def assert_champion_scores(tracking_uri: str) -> mlflow.pyfunc.PyFuncModel:
    """`models:/fraud-detector@champion` loads from ``tracking_uri`` and scores its example."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(CHAMPION_URI)
    finally:
        mlflow.set_tracking_uri(None)
    rows = model.input_example
    scored = model.predict(rows)
    assert list(scored.columns) == ["fraud_probability", "is_fraud"]
    assert len(scored) == len(rows) > 0
    assert scored["fraud_probability"].between(0, 1).all()
    return model
