"""A real standalone Spark cluster (one master, two one-core workers on 127.0.0.1, started from
pyspark's own scripts, once for this file):

- the template's Spark session and a distributed XGBoost fit: every worker takes part, and no
  Spark process listens beyond loopback;
- the pipeline through `mlflow run . -P engine=spark` to a @champion that `serve.py api` serves.

(`serve.py batch --engine spark` is checked against the pandas scorer in local mode,
tests/spark/test_engine.py; the command line of `serve.py batch` in tests/serving/test_batch.py.)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fraud_detection.modelling.pyfunc import DECISION_COLUMN, PROBABILITY_COLUMN
from tests.support import PROJECT_DIR, SMALL_RUN
from tests.support.processes import (
    assert_champion_scores,
    assert_pipeline_finished,
    assert_succeeded,
    background_process,
    copy_project,
    free_port,
    http_ok,
    mlflow_environment,
    mlflow_run,
    post_json,
    run_command,
)
from tests.support.spark_cluster import SparkCluster, listening_addresses

pytestmark = [pytest.mark.slow, pytest.mark.minutes, pytest.mark.no_tracking_store]

PROBE_TIMEOUT_S = 600
CHAMPION = "models:/fraud-detector@champion"
# Fewer cards than SMALL_RUN (two one-core workers on a shared machine; still frauds in every
# window), and any model promoted: the round trip is tested, not the model's quality.
SPARK_RUN = {
    **SMALL_RUN,
    "n_customers": "200",
    "n_terminals": "400",
    "min_roc_auc": "0",
    "min_average_precision": "0",
    "engine": "spark",
}


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


def test_pipeline_on_a_cluster_to_a_served_champion(spark_cluster: SparkCluster, tmp_path: Path):
    project = copy_project(tmp_path / "project")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = mlflow_environment(uri, **spark_cluster.client_environment)
    result = mlflow_run(
        project, env, "--experiment-name", "fraud-detection", model_kinds="xgboost", **SPARK_RUN
    )
    assert_succeeded(result)

    steps = assert_pipeline_finished(MlflowClient(uri))
    assert steps["train"].data.params["engine"] == "spark"
    assert steps["evaluate"].data.params["engine"] == "spark"
    model = assert_champion_scores(uri)

    _served_champion_answers(project, env, model.input_example)


def _served_champion_answers(project: Path, env: dict[str, str], rows: pd.DataFrame) -> None:
    port = str(free_port())
    command = [sys.executable, "serve.py", "api", "--model-uri", CHAMPION, "--port", port]
    with background_process(command, project / "api.log", env=env, cwd=project) as server:
        server.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ping"), 120, "serve.py api")
        body = {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
        status, answer = post_json(f"http://127.0.0.1:{port}/invocations", body)
    assert status == 200, answer
    predictions = pd.DataFrame(answer["predictions"])
    assert list(predictions.columns) == [PROBABILITY_COLUMN, DECISION_COLUMN]
    assert len(predictions) == len(rows) and predictions[PROBABILITY_COLUMN].between(0, 1).all()
