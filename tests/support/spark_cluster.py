"""A real standalone Spark cluster on 127.0.0.1 for the integration tests: one master and two
workers, started from the ``pyspark`` package's own scripts (``bin/spark-class``), each in a
process group of its own and stopped through it.

The cluster also writes a ``spark-defaults.conf`` for its clients: a driver started with
`SparkCluster.client_environment` (``SPARK_CONF_DIR`` pointing there, loopback variables) finds
the master through Spark's own configuration, as `fraud_detection.spark.session` reads it, and
waits until every worker's executor has registered before it schedules anything: a barrier job
(``SparkXGBClassifier``) asking for every task slot would otherwise fail on a cluster whose
executors are still starting.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import socket
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.processes import BackgroundProcess, background_process, free_port
from tests.support.spark import INTERPRETED_EXPRESSIONS, LOOPBACK, SHORT_LIVED_JVM_OPTIONS

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# Measured on the 2-core machine busy with other jobs: both workers registered 20 to 60 s after
# the start; the time limit leaves room for a busier one.
START_TIMEOUT_S = 120
# Each daemon idles at 240 MB; Spark's default heap for a daemon is 1 GB.
DAEMON_MEMORY = "512m"


def spark_home() -> Path:
    """The pyspark package's directory: it holds ``bin/spark-class`` and Spark's jars."""
    spec = importlib.util.find_spec("pyspark")
    assert spec is not None and spec.origin is not None, "PySpark is not installed"
    return Path(spec.origin).parent


@dataclass(frozen=True)
class SparkCluster:
    """A running standalone cluster: where its master listens and how a driver reaches it."""

    master_url: str  # spark://127.0.0.1:<port>
    web_ui_url: str  # the master's web UI; its JSON at /json
    worker_web_ui_urls: tuple[str, ...]
    cores_per_worker: int
    conf_dir: Path  # the clients' spark-defaults.conf
    daemon_pids: tuple[int, ...]  # master first; each leads the process group of its daemon

    @property
    def task_slots(self) -> int:
        """Tasks that can run at once: the most workers a barrier job (XGBoost) may ask for."""
        return self.cores_per_worker * len(self.worker_web_ui_urls)

    @property
    def client_environment(self) -> dict[str, str]:
        """What a driver process needs, beside its own environment, to run on this cluster."""
        return {
            **LOOPBACK,
            "SPARK_CONF_DIR": str(self.conf_dir),
            # The master twice: in spark-defaults.conf for Spark's own tools (spark-submit,
            # pyspark) and as the variable the template's session reads for `mlflow run`.
            "SPARK_MASTER": self.master_url,
            # Executors run the driver's Python (the session sets it too; a bare spark-submit
            # of a script does not go through the session first).
            "PYSPARK_PYTHON": sys.executable,
        }

    def master_status(self) -> dict[str, Any]:
        """The master's JSON: its workers (state, cores used) and applications."""
        return _json(f"{self.web_ui_url}/json")

    def alive_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.master_status()["workers"] if w["state"] == "ALIVE"]

    def executors_by_worker(self, app_id: str) -> dict[str, list[str]]:
        """The executor ids each worker ran for application ``app_id`` (running or finished),
        keyed by the worker's web UI URL: from each worker's own JSON."""
        found = {}
        for url in self.worker_web_ui_urls:
            status = _json(f"{url}/json")
            executors = status.get("executors", []) + status.get("finishedexecutors", [])
            found[url] = sorted(str(e["id"]) for e in executors if e.get("appid") == app_id)
        return found


def listening_addresses(pids: tuple[int, ...]) -> set[str]:
    """The local IP addresses on which the processes ``pids`` listen for TCP (from /proc)."""
    sockets = set()
    for pid in pids:
        for descriptor in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(descriptor)
            except OSError:  # closed since the listing
                continue
            if target.startswith("socket:["):
                sockets.add(target.removeprefix("socket:[").removesuffix("]"))
    addresses = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            # fields: sl, local address, remote address, state (0A: LISTEN), ..., inode (9th)
            if fields[3] == "0A" and fields[9] in sockets:
                addresses.add(_proc_address(fields[1].split(":")[0], family))
    return addresses


def _proc_address(hexadecimal: str, family: int) -> str:
    """/proc/net/tcp* addresses are 32-bit words in the machine's (little-endian) order."""
    raw = bytes.fromhex(hexadecimal)
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(socket.inet_ntop(family, packed))
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def _json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _registered_workers(web_ui_url: str) -> int:
    """How many workers the master lists as alive; 0 while it does not answer yet."""
    try:
        workers = _json(f"{web_ui_url}/json")["workers"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(worker["state"] == "ALIVE" for worker in workers)


def _daemon_environment(root: Path) -> dict[str, str]:
    """The daemons' environment: loopback, and a configuration folder of their own, so that
    neither the clients' spark-defaults.conf nor the machine's Spark settings reach them."""
    daemon_conf = root / "daemon-conf"
    daemon_conf.mkdir(exist_ok=True)
    return {
        **os.environ,
        **LOOPBACK,
        "SPARK_HOME": str(spark_home()),
        "SPARK_CONF_DIR": str(daemon_conf),
        "SPARK_LOG_DIR": str(root / "logs"),
        "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
        "SPARK_DAEMON_JAVA_OPTS": SHORT_LIVED_JVM_OPTIONS,
        "PYSPARK_PYTHON": sys.executable,
    }


def _write_client_conf(conf_dir: Path, master_url: str, task_slots: int) -> None:
    """spark-defaults.conf for drivers of this cluster."""
    conf_dir.mkdir(exist_ok=True)
    settings = {
        "spark.master": master_url,
        # Take every slot, and wait (up to a minute) until all of them have registered before
        # running anything: a barrier stage needs them all at once.
        "spark.cores.max": str(task_slots),
        "spark.scheduler.minRegisteredResourcesRatio": "1.0",
        "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s",
        "spark.executor.memory": "1g",
        "spark.driver.extraJavaOptions": SHORT_LIVED_JVM_OPTIONS,
        "spark.executor.extraJavaOptions": SHORT_LIVED_JVM_OPTIONS,
        # Small test data: Spark's 200 shuffle partitions would be 200 tiny tasks per shuffle,
        # and compiling each query's expressions costs more than running them.
        "spark.sql.shuffle.partitions": str(2 * task_slots),
        **INTERPRETED_EXPRESSIONS,
    }
    lines = [f"{key} {value}" for key, value in settings.items()]
    (conf_dir / "spark-defaults.conf").write_text("\n".join(lines) + "\n")


@contextmanager
def standalone_cluster(
    root: Path, workers: int = 2, cores_per_worker: int = 1, worker_memory: str = "2g"
) -> Iterator[SparkCluster]:
    """Start a master and ``workers`` workers on 127.0.0.1 (free ports), logs under ``root``;
    yield once every worker has registered with the master; stop them all on exit (SIGTERM to
    each daemon's process group, which holds its executors too; SIGKILL after 30 s).

    A failure to start raises with the logs of the daemons.
    """
    spark_class = str(spark_home() / "bin" / "spark-class")
    env = _daemon_environment(root)
    master_port, master_ui_port = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{master_port}"
    web_ui_url = f"http://127.0.0.1:{master_ui_port}"
    master_command = [spark_class, MASTER_CLASS, "--host", "127.0.0.1", "--port", str(master_port)]
    with ExitStack() as stack:
        started = [
            stack.enter_context(
                background_process(
                    [*master_command, "--webui-port", str(master_ui_port)],
                    root / "master.log",
                    env=env,
                    cwd=root,
                )
            )
        ]
        worker_urls = []
        for index in range(workers):
            work_dir = root / f"worker-{index}"
            work_dir.mkdir()
            ui_port = free_port()
            worker_urls.append(f"http://127.0.0.1:{ui_port}")
            command = [spark_class, WORKER_CLASS, "--host", "127.0.0.1", "--webui-port"]
            command += [str(ui_port), "--cores", str(cores_per_worker), "--memory"]
            command += [worker_memory, "--work-dir", str(work_dir), master_url]
            log = root / f"worker-{index}.log"
            started.append(stack.enter_context(background_process(command, log, env, root)))
        _wait_for_workers(started, web_ui_url, workers)
        conf_dir = root / "client-conf"
        _write_client_conf(conf_dir, master_url, workers * cores_per_worker)
        pids = tuple(daemon.process.pid for daemon in started)
        yield SparkCluster(
            master_url, web_ui_url, tuple(worker_urls), cores_per_worker, conf_dir, pids
        )


def _wait_for_workers(daemons: list[BackgroundProcess], web_ui_url: str, workers: int) -> None:
    """Until the master lists ``workers`` alive workers; fail with the log of a daemon that
    died, or with every log when the time is up."""

    def ready() -> bool:
        for daemon in daemons:
            if daemon.process.poll() is not None:
                raise AssertionError(
                    f"{daemon.log_path.name}: exited with {daemon.process.returncode}\n"
                    f"{daemon.log_tail()}"
                )
        return _registered_workers(web_ui_url) >= workers

    master = daemons[0]
    try:
        master.wait_until(ready, START_TIMEOUT_S, "the Spark master and its workers")
    except AssertionError as error:
        logs = "\n".join(f"--- {d.log_path.name}\n{d.log_tail(2000)}" for d in daemons[1:])
        raise AssertionError(f"{error}\n{logs}") from None
