"""Fixtures of the online tests: the served model, and a state of each backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fraud_detection.config import FeatureWindows
from fraud_detection.data.features import feature_columns
from fraud_detection.online.features import OnlineRecipe
from fraud_detection.online.state import MemoryState, OnlineState
from fraud_detection.serving.follower import ModelFollower
from tests.support.online import DAY, served_version
from tests.support.pipeline import TwoVersionStore


@pytest.fixture(scope="module")
def follower(two_version_store: TwoVersionStore) -> Iterator[ModelFollower]:
    """Version 1 of the two-version store, loaded once per module."""
    with served_version(two_version_store, 1) as follower:
        yield follower


@pytest.fixture
def recipe() -> OnlineRecipe:
    """The default windows (1, 7, 30 days) and a 7-day label delay."""
    windows = FeatureWindows.parse("1d,7d,30d")
    return OnlineRecipe(windows, 7 * DAY, feature_columns(windows))


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest, recipe: OnlineRecipe) -> Iterator[OnlineState]:
    """An empty state of each backend (Redis: a real server, this test's own database)."""
    if request.param == "memory":
        yield MemoryState(recipe)
        return
    from fraud_detection.online.redis_state import RedisState

    redis_state = RedisState(request.getfixturevalue("redis_url"), recipe)
    yield redis_state
    redis_state.close()
