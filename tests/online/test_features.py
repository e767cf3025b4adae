"""The online arithmetic against ``add_features`` on windows of hours and a delay of hours, fed
transaction by transaction from an empty state (no model, no service: the state and the
features alone), in memory and in Redis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraud_detection.config import FeatureWindows
from fraud_detection.data.features import add_features, feature_columns
from fraud_detection.online.features import OnlineRecipe, transaction_features
from fraud_detection.online.requests import Label, RawTransaction
from fraud_detection.online.state import MemoryState
from tests.support.online import COLUMNS
from tests.support.pipeline import tiny_simulation

WINDOWS = FeatureWindows.parse("1h,6h,24h")
DELAY_SECONDS = 2 * 3600


@pytest.fixture
def hourly_recipe() -> OnlineRecipe:
    return OnlineRecipe(WINDOWS, DELAY_SECONDS, feature_columns(WINDOWS))


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_hour_windows_fed_one_by_one_equal_the_batch_features(backend, hourly_recipe, request):
    if backend == "memory":
        state = MemoryState(hourly_recipe)
    else:
        from fraud_detection.online.redis_state import RedisState

        state = RedisState(request.getfixturevalue("redis_url"), hourly_recipe)
    table = tiny_simulation(seed=2, n_days=3)
    table = table.sort_values([COLUMNS.timestamp_column, COLUMNS.id_column]).reset_index(drop=True)
    table.loc[::7, COLUMNS.label_column] = 1  # three days of 100 cards hold few frauds: add some
    seconds = pd.DatetimeIndex(table[COLUMNS.timestamp_column]).as_unit("s").asi8
    frauds = table.index[table[COLUMNS.label_column] == 1]
    # Each fraud label arrives as it matures: before the transactions of that instant.
    events = sorted(
        [(seconds[i] + DELAY_SECONDS, 0, i) for i in frauds]
        + [(seconds[i], 1, i) for i in range(len(table))]
    )
    online = np.empty((len(table), len(hourly_recipe.features)))
    for _, kind, i in events:
        row = table.iloc[i]
        if kind == 0:
            state.feedback([Label(int(row[COLUMNS.id_column]), 1)])
            continue
        transaction = RawTransaction(
            int(row[COLUMNS.id_column]),
            int(seconds[i]),
            str(row[COLUMNS.customer_column]),
            str(row[COLUMNS.terminal_column]),
            float(row[COLUMNS.amount_column]),
        )
        (observation,) = state.record([transaction])
        features = transaction_features(
            transaction, observation.card, observation.terminal, hourly_recipe
        )
        online[i] = [features[name] for name in hourly_recipe.features]
    state.close()
    batch = add_features(
        table, COLUMNS, delay_days=pd.Timedelta(seconds=DELAY_SECONDS), windows=WINDOWS
    )[list(hourly_recipe.features)].to_numpy(np.float64)
    assert len(table) > 300 and len(frauds) > 0
    np.testing.assert_allclose(online, batch, rtol=1e-9, atol=1e-12)
    risk = list(hourly_recipe.features).index("TERMINAL_ID_RISK_1DAY_WINDOW")
    assert online[:, risk].max() > 0  # the fed-back labels counted somewhere
