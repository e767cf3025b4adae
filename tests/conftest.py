"""Shared fixtures: a private MLflow tracking store per test, and small simulated data.

Every test that touches MLflow gets its own SQLite store and artifact folder under tmp_path
(copied from a store migrated once per session: creating one costs about a second), so tests
never share runs, models or aliases. A test that leaves a run open fails.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from fraud_detection.config import DataConfig, GateConfig, ModelConfig, SplitConfig
from fraud_detection.simulator import SimulatorConfig, simulate_transactions

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Small enough for seconds, large enough that every window has both classes.
SMALL_DATA = DataConfig(n_customers=500, n_terminals=1_000, n_days=60, seed=1)
FAST_MODEL = ModelConfig(grid="none", n_estimators=60, checkpoint_every=20, n_jobs=1)
LENIENT_GATE = GateConfig(min_roc_auc=0.5, min_average_precision=0.01)


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated SQLite tracking store to copy from."""
    directory = tmp_path_factory.mktemp("template-store")
    path = directory / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(
    tmp_path: Path, migrated_store: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Point MLflow (this process and its children) at a fresh store under tmp_path."""
    store = tmp_path / "mlflow.db"
    shutil.copy(migrated_store, store)
    uri = f"sqlite:///{store}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def experiment(tracking_uri: str, tmp_path: Path) -> str:
    """The pipeline's default experiment, created with its artifacts under tmp_path."""
    return mlflow.MlflowClient().create_experiment(
        "fraud-detection", artifact_location=(tmp_path / "artifacts").as_uri()
    )


@pytest.fixture(autouse=True)
def no_leaked_runs() -> Iterator[None]:
    yield
    leaked = mlflow.active_run()
    if leaked is not None:
        mlflow.end_run()
        pytest.fail(f"test left run {leaked.info.run_id} active")


@pytest.fixture(scope="session")
def small_transactions() -> pd.DataFrame:
    """The raw simulated table of SMALL_DATA (read-only: copy before changing it)."""
    return simulate_transactions(SMALL_DATA.simulator())


@pytest.fixture
def small_split() -> SplitConfig:
    return SplitConfig()


def tiny_simulation(seed: int = 0, n_days: int = 20) -> pd.DataFrame:
    return simulate_transactions(
        SimulatorConfig(n_customers=100, n_terminals=200, n_days=n_days, seed=seed)
    )


def latest_run(step: str, experiment_name: str = "fraud-detection"):
    """The most recently started run of a pipeline step."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`fraud.step` = '{step}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0]


def train_small(**model_changes) -> str:
    """Run the train step on SMALL_DATA with FAST_MODEL (+ changes); return its run id."""
    from dataclasses import replace

    from fraud_detection.config import TrainConfig
    from fraud_detection.training import train

    train(TrainConfig(data=SMALL_DATA, model=replace(FAST_MODEL, **model_changes)))
    return latest_run("train").info.run_id


def evaluate_and_register(
    train_run_id: str, gate: GateConfig = LENIENT_GATE, **register_options
) -> tuple[str, str]:
    """Evaluate a train run and register the result; return (evaluate, register) run ids."""
    from fraud_detection.config import EvaluateConfig, RegisterConfig
    from fraud_detection.evaluation import evaluate
    from fraud_detection.registry import register

    evaluate(EvaluateConfig(run_id=train_run_id, gate=gate))
    evaluate_run_id = latest_run("evaluate").info.run_id
    register(RegisterConfig(run_id=evaluate_run_id, **register_options))
    return evaluate_run_id, latest_run("register").info.run_id


# --- a registry with two model versions, for the serving tests --------------------------------

MODEL_NAME = "fraud-detector"
# A second, different model (fewer rounds, XGBoost only): its scores differ from version 1's, so
# a test can tell which version answered.
SECOND_MODEL_CHANGES = {"model_kinds": "xgboost", "n_estimators": 15, "max_depth": 3}


@dataclass(frozen=True)
class TwoVersionStore:
    """A tracking store where version 1 is @champion and version 2 is @challenger."""

    database: Path  # the SQLite file to copy; artifacts stay where they are (read only)


@pytest.fixture(scope="session")
def two_version_store(
    tmp_path_factory: pytest.TempPathFactory, migrated_store: Path
) -> TwoVersionStore:
    """Train, evaluate and register two models once per session (about 10 s)."""
    root = tmp_path_factory.mktemp("two-versions")
    database = root / "mlflow.db"
    shutil.copy(migrated_store, database)
    uri = f"sqlite:///{database}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
            patch.delenv(name, raising=False)
        mlflow.set_tracking_uri(uri)
        try:
            client = mlflow.MlflowClient()
            client.create_experiment(
                "fraud-detection", artifact_location=(root / "artifacts").as_uri()
            )
            for changes in ({}, SECOND_MODEL_CHANGES):
                evaluate_and_register(train_small(**changes))
            client.set_registered_model_alias(MODEL_NAME, "champion", "1")
            client.set_registered_model_alias(MODEL_NAME, "challenger", "2")
        finally:
            mlflow.set_tracking_uri(None)
    return TwoVersionStore(database)


@pytest.fixture
def registry(two_version_store: TwoVersionStore, tracking_uri: str, tmp_path: Path) -> str:
    """This test's own copy of the two-version registry (aliases can be moved freely)."""
    shutil.copy(two_version_store.database, tmp_path / "mlflow.db")
    return tracking_uri
