"""Reason codes compared as the service's NumPy TreeSHAP allows: within its tolerance."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from fraud_detection.modelling.pyfunc import (
    REASON_BIAS_COLUMN,
    reason_contribution_column,
    reason_feature_column,
)
from fraud_detection.serving.fast_contributions import tolerance, verified_contributions
from fraud_detection.serving.fast_path import verified_walk


def contributions_tolerance(model_uri: str) -> float:
    """The tolerance within which ``serve.py api`` answers an XGBoost model's contributions
    (``fast_contributions.tolerance``), for the model at ``model_uri`` (or a local folder)."""
    scorer = mlflow.pyfunc.load_model(model_uri).unwrap_python_model().scorer
    booster, n_features = scorer.estimator, len(scorer.features)
    # The service takes this path only when its tree walk is verified too (follower._fast_paths).
    walk = verified_walk(booster, n_features)
    assert walk is not None, "the service would not use its NumPy paths on this model"
    contributions = verified_contributions(booster, walk, n_features)
    assert contributions is not None, "the service would not use NumPy TreeSHAP on this model"
    return tolerance(contributions)


def assert_reasons_agree(served: pd.DataFrame, expected: pd.DataFrame, k: int, atol: float):
    """Same columns; every other column equal; each reason's contribution and the bias within
    ``atol``; each reason's feature the same, unless its contribution ties within ``atol``
    with the other answer's at that rank (then the order of the two may differ)."""
    assert list(served.columns) == list(expected.columns)
    reason_columns = {REASON_BIAS_COLUMN}
    for rank in range(1, k + 1):
        feature, contribution = reason_feature_column(rank), reason_contribution_column(rank)
        reason_columns |= {feature, contribution}
        ours, theirs = served[contribution].to_numpy(), expected[contribution].to_numpy()
        same = served[feature].to_numpy() == expected[feature].to_numpy()
        np.testing.assert_allclose(ours[same], theirs[same], rtol=0, atol=atol)
        np.testing.assert_allclose(np.abs(ours), np.abs(theirs), rtol=0, atol=2 * atol)
    np.testing.assert_allclose(
        served[REASON_BIAS_COLUMN], expected[REASON_BIAS_COLUMN], rtol=0, atol=atol
    )
    others = [name for name in served.columns if name not in reason_columns]
    pd.testing.assert_frame_equal(served[others], expected[others], check_exact=False, rtol=1e-6)
