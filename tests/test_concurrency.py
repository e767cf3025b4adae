"""Several processes at once: a brand-new SQLite store, racing promotions.

Real processes (the root scripts), started together and waited for.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fraud_detection.config import EvaluateConfig
from fraud_detection.steps.evaluate import evaluate
from tests.support import PROJECT_DIR
from tests.support.pipeline import LENIENT_GATE, SMALL_DATA, latest_run, train_small

pytestmark = pytest.mark.slow

SMALL_FLAGS = [
    "--n-customers",
    str(SMALL_DATA.n_customers),
    "--n-terminals",
    str(SMALL_DATA.n_terminals),
    "--n-days",
    str(SMALL_DATA.n_days),
    "--seed",
    str(SMALL_DATA.seed),
    "--grid",
    "none",
    "--n-estimators",
    "30",
    "--model-kinds",
    "xgboost",
    "--n-jobs",
    "1",
]


def _start(script: str, args: list[str], uri: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / script), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_trainings_started_together_on_a_brand_new_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    processes = [_start("train.py", SMALL_FLAGS, uri, tmp_path) for _ in range(3)]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    assert set(experiments) == {"Default", "fraud-detection"}
    runs = client.search_runs([experiments["fraud-detection"]], "tags.`fraud.step` = 'train'")
    assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}
    assert client.search_runs([experiments["Default"]]) == []


def test_racing_registrations_promote_exactly_one(experiment, tracking_uri, tmp_path):
    evaluations = []
    for _ in range(2):
        evaluate(EvaluateConfig(run_id=train_small(), gate=LENIENT_GATE))
        evaluations.append(latest_run("evaluate").info.run_id)
    processes = [
        _start("register.py", ["--run-id", run_id], tracking_uri, tmp_path)
        for run_id in evaluations
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    client = MlflowClient()
    champion = str(client.get_model_version_by_alias("fraud-detector", "champion").version)
    versions = client.search_model_versions("name = 'fraud-detector'")
    decisions = sorted(v.tags["fraud.decision"] for v in versions)
    assert decisions == ["not promoted", "promoted"]
    promoted = next(v for v in versions if v.tags["fraud.decision"] == "promoted")
    assert str(promoted.version) == champion
    # The loser said so: a conflict (exit 1) or "champion ... compared against none".
    loser_said = [
        (process.returncode, stdout + stderr)
        for process, (stdout, stderr) in zip(processes, outputs, strict=True)
        if "not promoted" in stdout or process.returncode != 0
    ]
    assert len(loser_said) == 1
    code, text = loser_said[0]
    assert (code == 1 and "promotion" in text) or "compared against none" in text
