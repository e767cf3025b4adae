"""Simulated days replayed through the raw-transaction routes match the batch path.

A history file warm-starts the state; the next day arrives as requests in time order, fraud
labels fed back as they mature. Every feature and every score must equal ``add_features`` and
the model over the same table within rtol 1e-9 (sums are taken in another order: the batch path
differences cumulative sums). In memory with one app; in a real Redis with two apps (two
workers) taking turns; and across restarts, from Redis or, when it is empty, from the history.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fraud_detection.config import ApiConfig
from fraud_detection.online.features import OnlineRecipe
from fraud_detection.online.service import open_online_service
from fraud_detection.serving.api import create_app
from fraud_detection.serving.follower import ModelFollower
from tests.support.online import COLUMNS, Replay, assert_matches_batch, call, replay_through


@pytest.fixture(scope="module")
def replay(small_transactions: pd.DataFrame, follower: ModelFollower) -> Replay:
    table = small_transactions.sort_values(
        [COLUMNS.timestamp_column, COLUMNS.id_column]
    ).reset_index(drop=True)
    cutoff = table[COLUMNS.timestamp_column].min().normalize() + pd.Timedelta(days=50)
    recipe = OnlineRecipe.of_model(follower.current.config)
    return Replay(table, cutoff, cutoff + pd.Timedelta(days=1), recipe)


def app_for(follower: ModelFollower, history: Path | None, state_url: str = ""):
    config = ApiConfig(history=str(history or ""), state_url=state_url, workers=1)
    online = open_online_service(config, follower.current)
    return create_app(follower, 1 << 22, online=online), online


def test_a_replayed_day_matches_the_batch_features_and_scores(follower, replay, tmp_path):
    app, _ = app_for(follower, replay.write_history(tmp_path / "history.parquet"))
    answers = replay_through(replay.requests(), lambda _, r: call(app, "POST", r.path, r.body))
    checked = assert_matches_batch(answers, replay, follower.current.predict)
    assert checked > 500
    assert all(a["model_version"] == "1" and not a["duplicate"] for a in answers.values())
    # Labels mattered: some replayed terminal saw a fraud rate fed back during the replay.
    assert any(a["features"]["TERMINAL_ID_RISK_1DAY_WINDOW"] > 0 for a in answers.values())
    _, metrics = call(app, "GET", "/metrics")
    assert f'fraud_online_transactions_total{{outcome="scored"}} {checked}' in metrics.decode()
    assert 'fraud_online_feedback_total{outcome="recorded"}' in metrics.decode()


def test_two_workers_on_one_redis_match_one_worker(follower, replay, redis_url, tmp_path):
    history = replay.write_history(tmp_path / "history.parquet")
    apps = [app_for(follower, history, redis_url) for _ in range(2)]
    answers = replay_through(
        replay.requests(), lambda i, r: call(apps[i % 2][0], "POST", r.path, r.body)
    )
    assert_matches_batch(answers, replay, follower.current.predict)
    for _, online in apps:
        online.close()


def test_after_a_restart_the_state_comes_back_from_redis_or_the_history(
    follower, replay, redis_service, redis_url, tmp_path
):
    whole = Replay(
        replay.table, replay.cutoff, replay.cutoff + pd.Timedelta(hours=12), replay.recipe
    )
    middle = whole.cutoff + pd.Timedelta(hours=6)
    first_half = Replay(whole.table, whole.cutoff, middle, whole.recipe)
    history = whole.write_history(tmp_path / "history.parquet")
    apps = [app_for(follower, history, redis_url) for _ in range(2)]
    answers = replay_through(
        first_half.requests(), lambda i, r: call(apps[i % 2][0], "POST", r.path, r.body), "a"
    )
    for _, online in apps:
        online.close()
    # Restarted on the same Redis: the state is there; the history file is not read (it is gone).
    history.unlink()
    restarted = [app_for(follower, history, redis_url) for _ in range(2)]
    answers |= replay_through(
        whole.requests(middle),
        lambda i, r: call(restarted[i % 2][0], "POST", r.path, r.body),
        "b",
    )
    assert_matches_batch(answers, whole, follower.current.predict)

    # Redis emptied: rebuilt from a history file that reaches the restart.
    redis_service.client(1).flushdb()
    rebuilt, _ = app_for(
        follower, whole.write_history(tmp_path / "to-middle.parquet", middle), redis_url
    )
    second_half = replay_through(
        whole.requests(middle), lambda _, r: call(rebuilt, "POST", r.path, r.body), "c"
    )
    assert second_half and all(not a["duplicate"] for a in second_half.values())
    assert_matches_batch(answers | second_half, whole, follower.current.predict)
