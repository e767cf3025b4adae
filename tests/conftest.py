"""Fixtures only (helpers live in ``tests/support``).

Every test gets its own SQLite tracking store and artifact folder under tmp_path, copied from a
store migrated once per session (creating one costs about a second): tests never share runs,
models or aliases, and none writes to ``./mlflow.db``. A test that sets up tracking itself (a
server, a launcher's store) opts out with ``@pytest.mark.no_tracking_store``. A test that leaves
a run open fails. The spool of repairs (``hardening.spool``) is private to each test too.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
import pytest

from fraud_detection.config import SplitConfig
from fraud_detection.data.simulator import simulate_transactions
from fraud_detection.hardening.spool import STATE_DIR_VARIABLE
from tests.support import LAUNCHER_VARIABLES
from tests.support.pipeline import (
    EXPERIMENT,
    MODEL_NAME,
    SECOND_MODEL_CHANGES,
    SMALL_DATA,
    TwoVersionStore,
    evaluate_and_register,
    private_store,
    train_small,
)
from tests.support.redis_server import RedisServer, redis_server
from tests.support.spark import local_session, require_spark
from tests.support.spark_cluster import SparkCluster, standalone_cluster

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated SQLite tracking store to copy from."""
    directory = tmp_path_factory.mktemp("template-store")
    path = directory / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def tracking_uri(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    migrated_store: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str | None]:
    """Point MLflow (this process and its children) at a fresh store under tmp_path, and the
    spool of repairs at a folder of the test's own."""
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path / "state"))
    if request.node.get_closest_marker("no_tracking_store"):
        yield None
        return
    store = tmp_path / "mlflow.db"
    shutil.copy(migrated_store, store)
    uri = f"sqlite:///{store}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def experiment(tracking_uri: str, tmp_path: Path) -> str:
    """The pipeline's default experiment, created with its artifacts under tmp_path."""
    return mlflow.MlflowClient().create_experiment(
        EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri()
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


@pytest.fixture(scope="session")
def two_version_store(
    tmp_path_factory: pytest.TempPathFactory, migrated_store: Path
) -> TwoVersionStore:
    """Train, evaluate and register two models once per session (about 10 s)."""
    root = tmp_path_factory.mktemp("two-versions")
    with private_store(root, migrated_store) as database:
        client = mlflow.MlflowClient()
        for changes in ({}, SECOND_MODEL_CHANGES):
            evaluate_and_register(train_small(**changes))
        client.set_registered_model_alias(MODEL_NAME, "champion", "1")
        client.set_registered_model_alias(MODEL_NAME, "challenger", "2")
    return TwoVersionStore(database)


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One local Spark session for the whole run (starting one costs 7-14 s); skipped, or
    failed in CI, without PySpark or Java 17."""
    session = local_session()
    yield session
    session.stop()


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    """A standalone Spark cluster on 127.0.0.1 for the whole run: one master and two one-core
    workers from pyspark's own scripts (starting it costs 20-60 s, each daemon ~240 MB);
    drivers reach it through `SparkCluster.client_environment`. Skipped, or failed in CI,
    without PySpark or Java 17."""
    require_spark()
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster")) as cluster:
        yield cluster


@pytest.fixture
def registry(two_version_store: TwoVersionStore, tracking_uri: str, tmp_path: Path) -> str:
    """This test's own copy of the two-version registry (aliases can be moved freely)."""
    shutil.copy(two_version_store.database, tmp_path / "mlflow.db")
    return tracking_uri


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files marked ``minutes`` first, the rest in their order: pytest-xdist hands out whole
    files in collection order (``--no-loadscope-reorder``), and a file of several minutes that
    started last would keep one worker busy while the others sat idle."""
    items.sort(key=lambda item: item.get_closest_marker("minutes") is None)


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server on 127.0.0.1 for the run; each test takes a database of its own
    (``redis_url``). Skipped, or failed in CI, without redis-server or the redis client."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_service: RedisServer) -> Iterator[str]:
    """An empty Redis database for this test (flushed before and after)."""
    client = redis_service.client(1)
    client.flushdb()
    yield redis_service.url(1)
    client.flushdb()
    client.close()
