"""Bad data and bad parameters, through the entry points as a user meets them.

Each bad input must end in one clear error line (file, column, problem), a non-zero exit, the
step's run FAILED (never RUNNING), nothing registered and no alias moved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fraud_detection.cli import (
    EXIT_BAD_PARAMETERS,
    EXIT_FAILED,
    main_with_exit_code,
)
from fraud_detection.config import (
    EvaluateConfig,
    RegisterConfig,
    TrainConfig,
)
from fraud_detection.steps.evaluate import evaluate
from fraud_detection.steps.register import register
from fraud_detection.steps.train import train
from tests.support.pipeline import SMALL_DATA, tiny_simulation

FAST = ["--grid", "none", "--n-estimators", "20", "--n-jobs", "1"]


def _frame() -> pd.DataFrame:
    return tiny_simulation(n_days=60).drop(columns="TX_FRAUD_SCENARIO")


def _csv(frame: pd.DataFrame) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / "transactions.csv"
        frame.to_csv(path, index=False)
        return path

    return write


def _truncated_parquet(folder: Path) -> Path:
    path = folder / "transactions.parquet"
    _frame().to_parquet(path)
    path.write_bytes(path.read_bytes()[:-200])
    return path


def _empty(folder: Path) -> Path:
    path = folder / "transactions.csv"
    path.write_text("")
    return path


BAD_DATA = {
    "missing file": (lambda folder: folder / "absent.csv", [], "no such file"),
    "empty file": (_empty, [], "the file is empty"),
    "no rows after the date filter": (
        _csv(_frame()),
        ["--train-start", "2019-01-01"],
        "the split does not fit the data",
    ),
    "missing column": (
        _csv(_frame().drop(columns="TERMINAL_ID")),
        [],
        "missing column(s) TERMINAL_ID",
    ),
    "labels not 0/1": (
        _csv(_frame().assign(TX_FRAUD=lambda t: t["TX_FRAUD"].replace({1: 2}))),
        [],
        "column TX_FRAUD must hold 0/1 labels",
    ),
    "single class": (
        _csv(_frame().assign(TX_FRAUD=0)),
        [],
        "no fraud; a fraud model needs both classes",
    ),
    "NaN in a feature": (
        _csv(_frame().assign(TX_AMOUNT=lambda t: t["TX_AMOUNT"].mask(t.index % 97 == 0))),
        [],
        "column TX_AMOUNT has",
    ),
    "duplicated transaction ids": (
        _csv(_frame().assign(TRANSACTION_ID=lambda t: t["TRANSACTION_ID"] // 2)),
        [],
        "column TRANSACTION_ID has",
    ),
    "timestamps that do not parse": (
        _csv(_frame().assign(TX_DATETIME=lambda t: t["TX_DATETIME"].astype(str).str[:4] + "-xx")),
        [],
        "column TX_DATETIME has",
    ),
    "truncated Parquet": (_truncated_parquet, [], "not a readable Parquet file"),
}


def _assert_nothing_registered() -> None:
    assert MlflowClient().search_registered_models() == []


@pytest.mark.parametrize("case", BAD_DATA, ids=list(BAD_DATA))
def test_bad_data_fails_cleanly(case, experiment, tmp_path, caplog):
    make, extra, message = BAD_DATA[case]
    path = make(tmp_path)
    caplog.set_level(logging.INFO)
    code = main_with_exit_code(TrainConfig, train, ["--data", str(path), *extra, *FAST], "train")
    assert code == EXIT_FAILED
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert message in line and str(path) in line and "\n" not in line
    runs = MlflowClient().search_runs([experiment])
    assert [run.info.status for run in runs] == ["FAILED"]
    assert message in runs[0].data.tags["fraud.error"]
    _assert_nothing_registered()


BAD_TRAINING_PARAMETERS = [
    (["--model-kinds", "xgboost,forest"], "unknown model forest; allowed: xgboost, logistic"),
    (["--n-customers", "-5"], "n_customers must be at least 1"),
    (["--train-days", "0"], "train_days must be more than 0 and at most 366 days, got '0'"),
    (["--delay-days", "-2"], "delay_days must be at least 0 and at most 366 days, got '-2'"),
    (["--test-days", "a fortnight"], "test_days must be a number of days or a duration"),
    (["--feature-windows", "1d,24h"], "feature_windows lists the same window twice (1DAY)"),
    (["--n-estimators", "ten"], "n_estimators must be int"),
    (["--review-cost", "-1"], "review_cost must be >= 0"),
    (["--grid", "huge"], "grid must be one of none, small, large"),
]
BAD_STEP_PARAMETERS = [
    (EvaluateConfig, evaluate, ["--min-roc-auc", "1.5"], "min_roc_auc must be between 0 and 1"),
    (EvaluateConfig, evaluate, ["--champion-tolerance", "-0.1"], "between 0 and 1"),
    (RegisterConfig, register, ["--approve-version", "two"], "must be a version number"),
    (RegisterConfig, register, ["--rollback", "maybe"], "rollback must be true or false"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_TRAINING_PARAMETERS)
def test_bad_training_parameters_are_refused_before_any_work(flags, message, tracking_uri, caplog):
    assert main_with_exit_code(TrainConfig, train, flags, "train") == EXIT_BAD_PARAMETERS
    assert message in caplog.text
    assert MlflowClient().search_runs(["0"]) == []
    assert MlflowClient().get_experiment_by_name("fraud-detection") is None


@pytest.mark.parametrize(("config_type", "step", "flags", "message"), BAD_STEP_PARAMETERS)
def test_bad_gate_and_registry_parameters(config_type, step, flags, message, tracking_uri, caplog):
    assert main_with_exit_code(config_type, step, flags, "") == EXIT_BAD_PARAMETERS
    assert message in caplog.text
    assert MlflowClient().get_experiment_by_name("fraud-detection") is None


def test_a_failed_step_moves_no_alias(experiment, tmp_path, caplog):
    from tests.support.pipeline import evaluate_and_register, train_small

    evaluate_and_register(train_small())
    before = MlflowClient().get_registered_model("fraud-detector").aliases
    path = tmp_path / "bad.csv"
    _frame().drop(columns="TX_AMOUNT").to_csv(path, index=False)
    code = main_with_exit_code(
        TrainConfig, train, ["--data", str(path), *FAST, "--n-days", str(SMALL_DATA.n_days)], ""
    )
    assert code == EXIT_FAILED
    assert MlflowClient().get_registered_model("fraud-detector").aliases == before
    assert len(MlflowClient().search_model_versions("name = 'fraud-detector'")) == 1
