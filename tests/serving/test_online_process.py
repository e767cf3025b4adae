"""`serve.py api` as a process: two workers share a real Redis, warm-started from a history file,
and a replayed half day over HTTP matches the batch features and scores."""

from __future__ import annotations

import http.client
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from fraud_detection.online.features import OnlineRecipe
from fraud_detection.serving.follower import ModelFollower
from tests.support import PROJECT_DIR
from tests.support.online import (
    COLUMNS,
    Replay,
    assert_matches_batch,
    replay_through,
    served_version,
)
from tests.support.pipeline import MODEL_NAME, TwoVersionStore
from tests.support.processes import background_process, free_port, http_ok

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def follower(two_version_store: TwoVersionStore) -> Iterator[ModelFollower]:
    with served_version(two_version_store, 1) as follower:
        yield follower


def test_two_worker_processes_on_redis_match_the_batch_path(
    two_version_store, follower, small_transactions, redis_url, tmp_path
):
    table = small_transactions.sort_values(
        [COLUMNS.timestamp_column, COLUMNS.id_column]
    ).reset_index(drop=True)
    cutoff = table[COLUMNS.timestamp_column].min().normalize() + pd.Timedelta(days=50)
    recipe = OnlineRecipe.of_model(follower.current.config)
    replay = Replay(table, cutoff, cutoff + pd.Timedelta(hours=12), recipe)
    history = replay.write_history(tmp_path / "history.parquet")
    database = tmp_path / "mlflow.db"
    shutil.copy(two_version_store.database, database)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{database}"
    port = free_port()
    command = [
        sys.executable,
        str(PROJECT_DIR / "serve.py"),
        "api",
        "--model-uri",
        f"models:/{MODEL_NAME}/1",
        "--workers",
        "2",
        "--state-url",
        redis_url,
        "--history",
        str(history),
        "--port",
        str(port),
    ]
    with background_process(command, tmp_path / "server.log", env=env, cwd=tmp_path) as server:
        server.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ping"), 120, "serve.py api")
        # Two keep-alive connections, taking turns: each is served by whichever worker
        # accepted it, and both workers must answer as one.
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in "ab"]
        answers = replay_through(replay.requests(), lambda i, r: _post(connections[i % 2], r))
        for connection in connections:
            connection.close()
    assert_matches_batch(answers, replay, follower.current.predict)
    log = Path(server.log_path).read_text()
    assert "transactions of" in log and "loaded" in log


def _post(connection: http.client.HTTPConnection, request) -> tuple[int, bytes]:
    connection.request(
        "POST", request.path, body=request.body, headers={"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    return response.status, response.read()
