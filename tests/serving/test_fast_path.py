"""The NumPy tree walk gives XGBoost's own probabilities, bit for bit, or is not used."""

import numpy as np
import pytest
from xgboost import XGBClassifier, XGBRegressor

from fraud_detection.serving.fast_path import (
    probe_rows,
    verified_walk,
    walk_from_booster,
)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2_000, 6)).astype(np.float32) * [1, 10, 100, 1, 1, 0.01]
    X[rng.random(X.shape) < 0.05] = np.nan  # missing values take the default branch
    y = ((X[:, 0] > 0.3) ^ (np.nan_to_num(X[:, 2]) > 50) | (rng.random(2_000) < 0.05)).astype(int)
    return X.astype(np.float32), y


@pytest.mark.parametrize("params", [{"max_depth": 3}, {"max_depth": 6, "base_score": 0.2}])
def test_the_walk_equals_xgboost_bit_for_bit(data, params):
    X, y = data
    booster = XGBClassifier(n_estimators=40, n_jobs=1, **params).fit(X, y).get_booster()
    walk = verified_walk(booster, X.shape[1])
    assert walk is not None
    rows = np.vstack([X[:300], probe_rows(walk, X.shape[1], seed=1)])
    expected = booster.inplace_predict(rows).astype(np.float64)
    for size in (1, 3, 8):  # the sizes the service sends through the walk
        for start in range(0, len(rows), 97):
            chunk = rows[start : start + size]
            np.testing.assert_array_equal(walk.probabilities(chunk), expected[start : start + size])


def test_other_objectives_and_boosters_are_left_to_xgboost(data):
    X, y = data
    regression = XGBRegressor(n_estimators=5, n_jobs=1).fit(np.nan_to_num(X), y).get_booster()
    assert walk_from_booster(regression) is None
    dart = XGBClassifier(n_estimators=5, booster="dart", n_jobs=1).fit(X, y).get_booster()
    assert walk_from_booster(dart) is None
    multiclass = XGBClassifier(n_estimators=5, n_jobs=1).fit(X, y + (X[:, 1] > 5)).get_booster()
    assert walk_from_booster(multiclass) is None
