"""`mlflow run` of the real project, then the registered @champion served by MLflow itself.

These launch real processes: the MLflow project launcher (env manager local, the current
interpreter) and MLflow's scoring server on a free loopback port.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from fraud_detection.features import FEATURE_COLUMNS
from tests.conftest import PROJECT_DIR

pytestmark = pytest.mark.slow

PROJECT_FILES = [
    "MLproject",
    "python_env.yaml",
    "conda.yaml",
    "pyproject.toml",
    "main.py",
    "train.py",
    "evaluate.py",
    "register.py",
    "serve.py",
    "fraud_detection",
]
SMALL_RUN = {
    "n_customers": "500",
    "n_terminals": "1000",
    "n_days": "60",
    "seed": "1",
    "n_estimators": "60",
    "min_roc_auc": "0.5",
    "min_average_precision": "0.01",
}


def _environment(tracking_uri: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(name, None)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    # `mlflow run` starts `python main.py` through the shell: make that this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def _mlflow_run(
    project: Path, tracking_uri: str, *args: str, **params: str
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local", *args]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    return subprocess.run(
        command, env=_environment(tracking_uri), capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A copy of the project, and a tracking store where `mlflow run` ran its main entry point."""
    root = tmp_path_factory.mktemp("e2e")
    project = root / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        source = PROJECT_DIR / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, project / name)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment("fraud-detection", artifact_location=(root / "artifacts").as_uri())
    result = _mlflow_run(project, uri, "--experiment-name", "fraud-detection", **SMALL_RUN)
    assert result.returncode == 0, result.stderr[-4000:]
    previous = mlflow.get_tracking_uri()
    yield project, uri
    mlflow.set_tracking_uri(previous)


def test_mlflow_run_ends_with_a_champion_that_scores(pipeline_store):
    _, uri = pipeline_store
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("fraud-detection")
    runs = client.search_runs([experiment.experiment_id])
    steps = {run.data.tags.get("fraud.step") for run in runs}
    assert {"main", "train", "evaluate", "register", "candidate"} <= steps
    assert all(run.info.status == "FINISHED" for run in runs)
    main = next(run for run in runs if run.data.tags.get("fraud.step") == "main")
    for step in ("train", "evaluate", "register"):
        child = next(run for run in runs if run.data.tags.get("fraud.step") == step)
        assert child.data.tags["mlflow.parentRunId"] == main.info.run_id, step
        assert child.data.tags["mlflow.project.entryPoint"] == step

    model = mlflow.pyfunc.load_model("models:/fraud-detector@champion")
    rows = model.input_example
    scored = model.predict(rows)
    assert list(scored.columns) == ["fraud_probability", "is_fraud"]
    assert len(scored) == len(rows)


def test_step_launched_without_an_experiment_lands_in_the_pipeline_experiment(pipeline_store):
    project, uri = pipeline_store
    result = _mlflow_run(
        project,
        uri,
        "-e",
        "train",
        model_kinds="xgboost",
        **{k: v for k, v in SMALL_RUN.items() if not k.startswith("min_")},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(tracking_uri=uri)
    launcher = client.search_runs(["0"], max_results=1)[0]
    continued = client.get_run(launcher.data.tags["fraud.continued_in"])
    assert client.get_experiment(continued.info.experiment_id).name == "fraud-detection"
    assert continued.data.tags["fraud.step"] == "train"
    assert continued.info.status == "FINISHED"
    assert launcher.info.status == "FINISHED"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def scoring_server(pipeline_store) -> Iterator[str]:
    """`mlflow models serve` of @champion on a free loopback port; stopped after the tests."""
    _, uri = pipeline_store
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/fraud-detector@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        env=_environment(uri),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: stopped together below
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(server.stderr.read().decode()[-3000:]) from None
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_mlflow_scoring_server_answers_with_probability_and_decision(scoring_server):
    row = {name: 0.0 for name in FEATURE_COLUMNS}
    row.update({"TX_AMOUNT": 250.0, "CUSTOMER_ID_NB_TX_1DAY_WINDOW": 1.0})
    status, body = _post(f"{scoring_server}/invocations", {"dataframe_records": [row]})
    assert status == 200
    prediction = body["predictions"][0]
    assert 0.0 <= prediction["fraud_probability"] <= 1.0
    assert prediction["is_fraud"] in (0, 1)

    width = len(FEATURE_COLUMNS)
    split = {
        "dataframe_split": {"columns": list(FEATURE_COLUMNS), "data": [[1] * width, [2] * width]}
    }
    status, body = _post(f"{scoring_server}/invocations", split)
    assert status == 200
    assert len(body["predictions"]) == 2


def test_mlflow_scoring_server_rejects_missing_columns(scoring_server):
    status, body = _post(
        f"{scoring_server}/invocations", {"dataframe_records": [{"TX_AMOUNT": 1.0}]}
    )
    assert status == 400
    assert "TX_DURING_WEEKEND" in body["message"]
    # It keeps serving afterwards.
    status, _ = _post(
        f"{scoring_server}/invocations",
        {"dataframe_records": [{name: 0.0 for name in FEATURE_COLUMNS}]},
    )
    assert status == 200
