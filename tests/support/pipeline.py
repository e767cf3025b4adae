"""The steps on small data, in-process, against the test's own tracking store."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.entities import Run

from fraud_detection.config import (
    DataConfig,
    EvaluateConfig,
    GateConfig,
    ModelConfig,
    RegisterConfig,
    SimulatorConfig,
    TrainConfig,
)
from fraud_detection.contract import Step, step_filter
from fraud_detection.data.simulator import simulate_transactions
from fraud_detection.steps.evaluate import evaluate
from fraud_detection.steps.register import register
from fraud_detection.steps.train import train
from tests.support import LAUNCHER_VARIABLES

# Small enough for seconds, large enough that every window has both classes.
SMALL_DATA = DataConfig(n_customers=500, n_terminals=1_000, n_days=60, seed=1)
FAST_MODEL = ModelConfig(grid="none", n_estimators=60, checkpoint_every=20, n_jobs=1)
LENIENT_GATE = GateConfig(min_roc_auc=0.5, min_average_precision=0.01)
MODEL_NAME = "fraud-detector"
EXPERIMENT = "fraud-detection"
# A second, different model (fewer rounds, XGBoost only): its scores differ from version 1's, so
# a test can tell which version answered.
SECOND_MODEL_CHANGES = {"model_kinds": "xgboost", "n_estimators": 15, "max_depth": 3}


def tiny_simulation(seed: int = 0, n_days: int = 20) -> pd.DataFrame:
    return simulate_transactions(
        SimulatorConfig(n_customers=100, n_terminals=200, n_days=n_days, seed=seed)
    )


def latest_run(step: str | Step, experiment_name: str = EXPERIMENT) -> Run:
    """The most recently started run of a pipeline step."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=step_filter(Step(step)),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0]


def train_small(**model_changes) -> str:
    """Run the train step on SMALL_DATA with FAST_MODEL (+ changes); return its run id."""
    train(TrainConfig(data=SMALL_DATA, model=replace(FAST_MODEL, **model_changes)))
    return latest_run(Step.TRAIN).info.run_id


def evaluate_and_register(
    train_run_id: str, gate: GateConfig = LENIENT_GATE, **register_options
) -> tuple[str, str]:
    """Evaluate a train run and register the result; return (evaluate, register) run ids."""
    evaluate(EvaluateConfig(run_id=train_run_id, gate=gate))
    evaluate_run_id = latest_run(Step.EVALUATE).info.run_id
    register(RegisterConfig(run_id=evaluate_run_id, **register_options))
    return evaluate_run_id, latest_run(Step.REGISTER).info.run_id


@dataclass(frozen=True)
class TwoVersionStore:
    """A tracking store where version 1 is @champion and version 2 is @challenger."""

    database: Path  # the SQLite file to copy; artifacts stay where they are (read only)


@contextmanager
def private_store(root: Path, migrated_store: Path) -> Iterator[Path]:
    """A copy of ``migrated_store`` in ``root`` as this process's tracking store, with the
    pipeline's experiment (artifacts under ``root``), for fixtures that outlive one test."""
    database = root / "mlflow.db"
    shutil.copy(migrated_store, database)
    uri = f"sqlite:///{database}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        for name in LAUNCHER_VARIABLES:
            patch.delenv(name, raising=False)
        mlflow.set_tracking_uri(uri)
        try:
            mlflow.MlflowClient().create_experiment(
                EXPERIMENT, artifact_location=(root / "artifacts").as_uri()
            )
            yield database
        finally:
            mlflow.set_tracking_uri(None)
