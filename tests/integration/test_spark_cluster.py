"""A real standalone Spark cluster (one master, two one-core workers on 127.0.0.1, started from
pyspark's own scripts) runs the template's Spark session and a distributed XGBoost fit: every
worker takes part, and no Spark process listens beyond loopback."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.support import PROJECT_DIR
from tests.support.processes import assert_succeeded, run_command
from tests.support.spark_cluster import SparkCluster, listening_addresses

pytestmark = pytest.mark.slow

PROBE_TIMEOUT_S = 600


@pytest.mark.no_tracking_store
def test_distributed_xgboost_fit_uses_both_workers(spark_cluster: SparkCluster, tmp_path: Path):
    report = tmp_path / "probe.json"
    result = run_command(
        [sys.executable, "-m", "tests.support.spark_cluster_probe", str(report)],
        {**_driver_environment(), **spark_cluster.client_environment},
        cwd=PROJECT_DIR,
        timeout=PROBE_TIMEOUT_S,
    )
    assert_succeeded(result)
    probe = json.loads(report.read_text())

    # The template's session found the master in the cluster's spark-defaults.conf, and the
    # driver stayed on loopback.
    assert probe["master"] == spark_cluster.master_url
    assert probe["driver_host"] == "127.0.0.1"
    assert probe["slots"] == spark_cluster.task_slots == 2

    # Each worker ran one executor of the application, and each executor one training task of
    # XGBoost's barrier stage: both workers took part in the fit.
    by_worker = spark_cluster.executors_by_worker(probe["app_id"])
    assert all(len(executors) == 1 for executors in by_worker.values()), by_worker
    executors = sorted(executor for found in by_worker.values() for executor in found)
    assert probe["training_task_executors"] == executors, (probe, by_worker)
    # The barrier probe's tasks ran in each worker's own work directory.
    worker_dirs = {Path(path).parents[1].name for path in probe["task_directories"]}
    assert worker_dirs == {"worker-0", "worker-1"}, probe["task_directories"]

    assert probe["booster_rounds"] == 40
    assert probe["training_auc"] > 0.8

    # Nothing beyond loopback: the driver and executors while the application ran, and the
    # master and workers now.
    assert probe["application_listens_on"] == ["127.0.0.1"], probe["application_listens_on"]
    assert listening_addresses(spark_cluster.daemon_pids) == {"127.0.0.1"}


def _driver_environment() -> dict[str, str]:
    env = dict(os.environ)
    # The driver imports the template from this checkout (tests run it from the work tree).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_DIR), env.get("PYTHONPATH")]))
    return env
