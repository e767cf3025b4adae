"""`mlflow run` of the real project, then the registered @champion served by MLflow itself.

These launch real processes: the MLflow project launcher (env manager local, the current
interpreter) and MLflow's scoring server on a free loopback port.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from fraud_detection.data.features import FEATURE_COLUMNS
from tests.support import SMALL_RUN
from tests.support.processes import (
    CHAMPION_URI,
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
)
from tests.support.services import dev_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, str, subprocess.CompletedProcess]]:
    """A copy of the project where `mlflow run .` ran its main entry point as the README runs
    it (from the clone, no tracking URI: MLflow's default store, ``./mlflow.db``), the store's
    URI, and what the command printed. (tests/integration/test_backends.py runs the same
    pipeline against the other stores.)"""
    project = copy_project(tmp_path_factory.mktemp("e2e") / "project")
    result = mlflow_run(
        ".",
        mlflow_environment(None),
        "--experiment-name",
        "fraud-detection",
        cwd=project,
        **SMALL_RUN,
    )
    assert_succeeded(result)
    yield project, f"sqlite:///{project / 'mlflow.db'}", result
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def pipeline_store(pipeline_run) -> tuple[Path, str]:
    project, uri, _ = pipeline_run
    return project, uri


def test_mlflow_run_ends_with_a_champion_that_scores(pipeline_store):
    _, uri = pipeline_store
    assert_pipeline_finished(MlflowClient(tracking_uri=uri))
    assert_champion_scores(uri)


def test_the_default_store_is_the_clones_and_the_dev_server_serves_it(pipeline_store):
    project, uri = pipeline_store
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fraud-detection")
    assert (project / "mlflow.db").is_file()
    artifacts = Path(experiment.artifact_location.removeprefix("file://"))
    assert artifacts.is_relative_to(project / "mlruns")
    assert any(artifacts.rglob("MLmodel"))
    # deploy/dev-server.sh started in the clone serves that same store (the README says so).
    with dev_server(project) as server:
        assert_champion_scores(server.url)


def test_the_run_prints_no_warning_a_user_cannot_act_on(pipeline_run):
    """Warnings of the template itself (``fraud_detection``) say what to change; no other
    library's warning may reach the user (MLflow's, scikit-learn's, pandas')."""
    _, _, result = pipeline_run
    output = result.stdout + result.stderr
    foreign = [
        line
        for line in output.splitlines()
        if re.search(r"\bWARNING\b(?! fraud_detection)|Warning:", line)
    ]
    assert foreign == []


def test_step_launched_without_an_experiment_lands_in_the_pipeline_experiment(pipeline_store):
    project, uri = pipeline_store
    result = mlflow_run(
        project,
        mlflow_environment(uri),
        "-e",
        "train",
        model_kinds="xgboost",
        **{k: v for k, v in SMALL_RUN.items() if not k.startswith("min_")},
    )
    assert_succeeded(result)
    client = MlflowClient(tracking_uri=uri)
    launcher = client.search_runs(["0"], max_results=1)[0]
    continued = client.get_run(launcher.data.tags["fraud.continued_in"])
    assert client.get_experiment(continued.info.experiment_id).name == "fraud-detection"
    assert continued.data.tags["fraud.step"] == "train"
    assert continued.info.status == "FINISHED"
    assert launcher.info.status == "FINISHED"


@pytest.fixture(scope="module")
def scoring_server(pipeline_store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow models serve` of @champion on a free loopback port; stopped after the tests."""
    _, uri = pipeline_store
    port = free_port()
    command = [
        *(sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION_URI),
        *("--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"),
    ]
    log = tmp_path_factory.mktemp("scoring-server") / "server.log"
    base = f"http://127.0.0.1:{port}"
    with background_process(command, log, env=mlflow_environment(uri)) as server:
        server.wait_until(lambda: http_ok(f"{base}/ping"), 120, "mlflow models serve")
        yield base


def test_mlflow_scoring_server_answers_with_probability_and_decision(scoring_server):
    row = {name: 0.0 for name in FEATURE_COLUMNS}
    row.update({"TX_AMOUNT": 250.0, "CUSTOMER_ID_NB_TX_1DAY_WINDOW": 1.0})
    status, body = post_json(f"{scoring_server}/invocations", {"dataframe_records": [row]})
    assert status == 200
    prediction = body["predictions"][0]
    assert 0.0 <= prediction["fraud_probability"] <= 1.0
    assert prediction["is_fraud"] in (0, 1)

    width = len(FEATURE_COLUMNS)
    split = {
        "dataframe_split": {"columns": list(FEATURE_COLUMNS), "data": [[1] * width, [2] * width]}
    }
    status, body = post_json(f"{scoring_server}/invocations", split)
    assert status == 200
    assert len(body["predictions"]) == 2


def test_mlflow_scoring_server_rejects_missing_columns(scoring_server):
    status, body = post_json(
        f"{scoring_server}/invocations", {"dataframe_records": [{"TX_AMOUNT": 1.0}]}
    )
    assert status == 400
    assert "TX_DURING_WEEKEND" in body["message"]
    # It keeps serving afterwards.
    status, _ = post_json(
        f"{scoring_server}/invocations",
        {"dataframe_records": [{name: 0.0 for name in FEATURE_COLUMNS}]},
    )
    assert status == 200
