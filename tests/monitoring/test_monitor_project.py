"""`mlflow run . -e monitor`: the generated entry point, end to end, in the launcher's run."""

from __future__ import annotations

from dataclasses import replace

import mlflow
import pandas as pd
import pytest

from fraud_detection import contract
from fraud_detection.config import BatchConfig
from fraud_detection.contract import Step
from fraud_detection.data.simulator import simulate_transactions
from fraud_detection.serving.batch import score_batch
from tests.support.pipeline import EXPERIMENT, SMALL_DATA, latest_run
from tests.support.processes import assert_succeeded, copy_project, mlflow_environment, mlflow_run

pytestmark = pytest.mark.slow


def test_monitor_entry_point_runs_in_the_launchers_run(registry, tmp_path):
    table = simulate_transactions(replace(SMALL_DATA, n_days=95).simulator())
    table = table[table["TX_DATETIME"] >= pd.Timestamp("2018-04-24")]
    source, scored = tmp_path / "in.csv", tmp_path / "scored.csv"
    table.to_csv(source, index=False)
    score_batch(BatchConfig(input=str(source), output=str(scored)))
    project = copy_project(tmp_path / "project")

    result = mlflow_run(
        project,
        mlflow_environment(registry),
        *("-e", "monitor", "--experiment-name", EXPERIMENT),
        cwd=tmp_path,
        scored=str(scored),
    )

    assert_succeeded(result)
    parent = latest_run(Step.MONITOR)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags.get("mlflow.project.entryPoint") == "monitor"
    assert contract.RETRAIN_TAG not in parent.data.tags
    history = mlflow.MlflowClient().get_metric_history(parent.info.run_id, "score_psi")
    assert len(history) == 5
