"""The forking guide's three edits, each applied to a fresh copy of the repository and run
through `mlflow run` to a registered @champion that scores (docs/forking.md)."""

from __future__ import annotations

import sys

import pytest

from fraud_detection.data.simulator import simulate_transactions
from tests.support import SMALL_RUN
from tests.support.docs import apply_diff, forking_diffs
from tests.support.pipeline import SMALL_DATA
from tests.support.processes import (
    assert_champion_scores,
    assert_succeeded,
    copy_project,
    mlflow_environment,
    mlflow_run,
    run_command,
)

pytestmark = [pytest.mark.slow, pytest.mark.no_tracking_store]

# What the bank's table calls each column (edit 1 of the guide).
BANK_COLUMNS = {
    "TX_DATETIME": "event_time",
    "CUSTOMER_ID": "card_id",
    "TERMINAL_ID": "merchant_id",
    "TX_AMOUNT": "amount_eur",
    "TX_FRAUD": "is_fraud",
    "TRANSACTION_ID": "tx_id",
}


def _run_the_pipeline(tmp_path, index: int, **params: str) -> str:
    project = copy_project(tmp_path / "project")
    apply_diff(forking_diffs()[index], project)
    regenerate = [sys.executable, "-m", "fraud_detection.config.mlproject"]
    assert_succeeded(run_command(regenerate, mlflow_environment(None), cwd=project))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = mlflow_run(
        project, mlflow_environment(uri), "--experiment-name", "fraud-detection", **params
    )
    assert_succeeded(result)
    return uri


def test_your_own_data_with_other_column_names(tmp_path):
    bank = simulate_transactions(SMALL_DATA.simulator()).rename(columns=BANK_COLUMNS)
    path = tmp_path / "transactions.csv"
    bank.drop(columns="TX_FRAUD_SCENARIO").to_csv(path, index=False)
    params = {key: value for key, value in SMALL_RUN.items() if not key.startswith("n_")}
    uri = _run_the_pipeline(tmp_path, 0, data=str(path), **params)
    model = assert_champion_scores(uri)
    assert model.metadata.get_input_schema().input_names()[0] == "TX_AMOUNT"


def test_a_new_feature(tmp_path):
    uri = _run_the_pipeline(tmp_path, 1, **SMALL_RUN)
    model = assert_champion_scores(uri)
    assert "TX_ROUND_AMOUNT" in model.metadata.get_input_schema().input_names()


def test_another_kind_of_model(tmp_path):
    uri = _run_the_pipeline(tmp_path, 2, **{**SMALL_RUN, "model_kinds": "hist_gradient_boosting"})
    model = assert_champion_scores(uri)
    assert model.model_config["model_kind"] == "hist_gradient_boosting"
