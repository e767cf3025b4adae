"""The threshold tuned on Spark is the pandas engine's choice on the same scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark", reason='the Spark engine needs PySpark: pip install -e ".[spark]"')

from fraud_detection.errors import DataError
from fraud_detection.modelling import threshold as pandas_threshold
from fraud_detection.modelling.metrics import savings_curve
from fraud_detection.modelling.threshold import N_CANDIDATE_THRESHOLDS
from fraud_detection.spark.scoring import score_with_scorer
from fraud_detection.spark.threshold import tune_threshold
from tests.support.pipeline import SMALL_DATA
from tests.support.small_model import small_model

COLUMNS = SMALL_DATA.columns
REVIEW_COST = 10.0


def scored_rows(rows: int, decimals: int, seed: int = 0) -> pd.DataFrame:
    """Labels, amounts and float64 scores rounded to ``decimals`` (fewer: more ties)."""
    rng = np.random.default_rng(seed)
    label = (rng.random(rows) < 0.05).astype(np.int64)
    score = np.clip(rng.beta(1, 8, rows) + 0.4 * label * rng.random(rows), 0, 1)
    amount = np.round(rng.gamma(2, 40, rows), 2)
    return pd.DataFrame({"label": label, "score": np.round(score, decimals), "amount": amount})


@pytest.mark.parametrize(
    ("rows", "decimals"),
    [
        (4_000, 3),  # (n - 1) * q is a whole number for some q: the rank itself is taken
        (2_500, 6),  # few ties
        (1_000, 1),  # eleven distinct scores: most quantiles fall on a tie
    ],
)
def test_the_candidates_and_the_choice_are_numpys_and_scikit_learns(spark, rows, decimals):
    data = scored_rows(rows, decimals)

    choice = tune_threshold(spark.createDataFrame(data), "label", "score", "amount", REVIEW_COST)

    grid = np.linspace(0, 1, N_CANDIDATE_THRESHOLDS)
    expected_thresholds = np.unique(np.quantile(data.score.to_numpy(), grid))
    assert np.array_equal(choice.thresholds, expected_thresholds)  # bit for bit
    expected_savings = savings_curve(
        data.label, data.score, data.amount, REVIEW_COST, expected_thresholds
    )
    np.testing.assert_allclose(choice.savings, expected_savings, rtol=1e-12, atol=1e-9)
    best = int(np.argmax(expected_savings))  # the first of equal best, as scikit-learn's
    assert choice.threshold == expected_thresholds[best]
    assert choice.expected_savings == pytest.approx(expected_savings[best], rel=1e-12)


def test_a_models_threshold_alerts_the_rows_the_pandas_engines_alerts(spark):
    model = small_model()
    validation = model.validation
    expected = pandas_threshold.tune_threshold(
        model.fitted.estimator,
        validation[model.features].to_numpy(np.float32),
        validation[COLUMNS.label_column].to_numpy(),
        validation[COLUMNS.amount_column].to_numpy(),
        REVIEW_COST,
    )
    columns = dict.fromkeys([COLUMNS.label_column, COLUMNS.amount_column, *model.features])
    rows = validation[list(columns)]  # the amount is a feature too
    scored = score_with_scorer(spark.createDataFrame(rows), model.scorer, "score")

    choice = tune_threshold(
        scored, COLUMNS.label_column, "score", COLUMNS.amount_column, REVIEW_COST
    )

    # The pandas engine interpolates its float32 scores in float32: the same candidates, to
    # their last bits, and the same alerts.
    np.testing.assert_allclose(choice.thresholds, expected.thresholds, rtol=1e-6)
    assert choice.threshold == pytest.approx(expected.threshold, rel=1e-6)
    scores = model.scorer.predict_proba(validation)
    assert np.array_equal(scores >= choice.threshold, scores >= expected.threshold)
    assert choice.expected_savings == pytest.approx(expected.expected_savings, rel=1e-9)


def test_no_rows_are_refused(spark):
    empty = spark.createDataFrame(scored_rows(10, 2)).limit(0)

    with pytest.raises(DataError, match="no validation rows"):
        tune_threshold(empty, "label", "score", "amount", REVIEW_COST)
