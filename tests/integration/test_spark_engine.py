"""engine=spark on a standalone cluster (one master, two workers on 127.0.0.1): the pipeline
through `mlflow run . -P engine=spark` to a @champion that `serve.py api` serves, and
`serve.py batch --engine spark` writing the pandas batch scorer's scores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fraud_detection.modelling.pyfunc import DECISION_COLUMN, PROBABILITY_COLUMN
from tests.support import SMALL_RUN
from tests.support.pipeline import tiny_simulation
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
from tests.support.spark_cluster import SparkCluster

pytestmark = [pytest.mark.slow, pytest.mark.no_tracking_store]

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


def test_pipeline_on_a_cluster_to_a_served_champion_and_a_spark_batch(
    spark_cluster: SparkCluster, tmp_path: Path
):
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
    _spark_batch_scores_as_pandas(project, env, tmp_path)


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


def _spark_batch_scores_as_pandas(project: Path, env: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "raw.parquet"
    tiny_simulation(seed=8, n_days=40).drop(columns="TX_FRAUD_SCENARIO").to_parquet(source)
    outputs = {engine: tmp_path / f"{engine}.parquet" for engine in ("pandas", "spark")}
    for engine, output in outputs.items():
        command = [sys.executable, "serve.py", "batch", "--engine", engine]
        command += ["--model-uri", CHAMPION, "--input", str(source), "--output", str(output)]
        assert_succeeded(run_command(command, env, cwd=project))
    expected = pd.read_parquet(outputs["pandas"]).set_index("TRANSACTION_ID")
    actual = pd.read_parquet(outputs["spark"]).set_index("TRANSACTION_ID").loc[expected.index]
    assert outputs["spark"].is_dir()
    np.testing.assert_allclose(
        actual[PROBABILITY_COLUMN], expected[PROBABILITY_COLUMN], rtol=1e-5, atol=1e-9
    )
    assert actual[DECISION_COLUMN].sum() == expected[DECISION_COLUMN].sum()
