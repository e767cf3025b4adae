"""The decision threshold tuned on Spark: ``modelling.threshold.tune_threshold`` on scored rows.

The same choice as the pandas engine's on the same scores: the candidate thresholds are the
400 quantiles of the validation scores, computed as NumPy's ``quantile`` computes them (its
"linear" method, step by step), and the threshold is the first candidate that saves the most
(an alert when score >= threshold, as scikit-learn's ``TunedThresholdClassifierCV`` decides).
The pandas engine's XGBoost scores are float32, and NumPy then interpolates in float32 where
this module works in float64: a candidate can differ in its last bits, which changes the rows
it alerts only if a score lies between the two roundings.

Nothing is collected but small aggregates: the scores at the ranks the quantiles need (two
per quantile at most) and one total per candidate threshold.
"""

from __future__ import annotations

import math

import numpy as np
from pyspark import StorageLevel
from pyspark.ml.feature import Bucketizer
from pyspark.sql import DataFrame
from pyspark.sql import functions as sf

from fraud_detection.errors import DataError
from fraud_detection.modelling.threshold import N_CANDIDATE_THRESHOLDS, ThresholdChoice
from fraud_detection.spark.metrics import POSITIVES, ROWS, ROWS_ABOVE, from_the_top

_CAUGHT = "__caught_amount__"
_BUCKET = "__bucket__"


def tune_threshold(
    scored: DataFrame, label: str, score: str, amount: str, review_cost: float
) -> ThresholdChoice:
    """Best threshold for the scores ``scored[score]`` of validation rows.

    Args:
        scored: Validation rows with their label, amount and fraud probability.
        label: Label column (0/1).
        score: Fraud probability column.
        amount: Transaction amount column (what a caught fraud saves).
        review_cost: Cost of one alert.
    """
    counts = scored.groupBy(sf.col(score).cast("double").alias(score)).agg(
        sf.sum(sf.col(label).cast("long")).alias(POSITIVES),
        sf.count("*").alias(ROWS),
        sf.sum(sf.when(sf.col(label) == 1, sf.col(amount).cast("double"))).alias(_CAUGHT),
    )
    counts = counts.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        rows = int(counts.agg(sf.sum(ROWS)).first()[0] or 0)
        if rows == 0:
            raise DataError("no validation rows to tune the decision threshold on")
        candidates = candidate_thresholds(counts, score, rows)
        savings = savings_at(counts, score, candidates, review_cost)
    finally:
        counts.unpersist()
    best = int(np.argmax(savings))
    return ThresholdChoice(float(candidates[best]), float(savings[best]), candidates, savings)


def candidate_thresholds(counts: DataFrame, score: str, rows: int) -> np.ndarray:
    """``np.unique(np.quantile(scores, np.linspace(0, 1, N_CANDIDATE_THRESHOLDS)))`` of the
    ``rows`` scores that ``counts`` counts (one row per distinct score, with its ``ROWS``).

    NumPy's "linear" quantile, step by step: the virtual index (n - 1) * q, the order
    statistics below and above it, and its interpolation between them.
    """
    quantiles = np.linspace(0, 1, N_CANDIDATE_THRESHOLDS)
    virtual = (rows - 1) * quantiles
    below = np.floor(virtual)
    above = below + 1
    last = virtual >= rows - 1
    below[last] = above[last] = rows - 1
    ranks = np.unique(np.concatenate([below, above])).astype(np.int64)
    found = order_statistics(counts, score, ranks, rows)
    values = dict(zip(ranks.tolist(), found, strict=True))
    lower = np.array([values[int(rank)] for rank in below])
    upper = np.array([values[int(rank)] for rank in above])
    return np.unique(_lerp(lower, upper, virtual - below))


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """NumPy's interpolation for quantiles (``numpy.lib._function_base_impl._lerp``): from the
    nearer end, so that the result stays within [a, b]."""
    difference = b - a
    return np.where(t >= 0.5, b - difference * (1 - t), a + difference * t)


def order_statistics(counts: DataFrame, score: str, ranks: np.ndarray, rows: int) -> np.ndarray:
    """The scores at ascending ``ranks`` (0: the lowest) among the ``rows`` that ``counts``
    counts.

    Each distinct score covers the ranks [first, first + rows); the wanted ranks cut the
    firsts into ranges, and per range only its lowest and highest first (with their scores)
    reach the driver. The score at rank r is the one with the highest first <= r.
    """
    first = sf.lit(rows) - sf.col(ROWS_ABOVE) - sf.col(ROWS)
    firsts = from_the_top(counts, score).select(score, first.cast("double").alias("first"))
    splits = [-math.inf, *ranks.astype(float).tolist(), math.inf]
    ranges = Bucketizer(splits=splits, inputCol="first", outputCol=_BUCKET).transform(firsts)
    ends = ranges.groupBy(_BUCKET).agg(
        sf.min("first").alias("low"),
        sf.min_by(score, "first").alias("low_score"),
        sf.max_by(score, "first").alias("high_score"),
    )
    by_range = {int(row[_BUCKET]): row for row in ends.collect()}
    found, highest_below = [], None
    for index, rank in enumerate(ranks.tolist()):
        # Range index + 1 holds the firsts in [rank, next rank); those below are behind.
        previous = by_range.get(index)
        if previous is not None:
            highest_below = previous["high_score"]
        current = by_range.get(index + 1)
        starts_here = current is not None and int(current["low"]) == rank
        found.append(current["low_score"] if starts_here else highest_below)
    return np.array(found, dtype=np.float64)


def savings_at(
    counts: DataFrame, score: str, thresholds: np.ndarray, review_cost: float
) -> np.ndarray:
    """``modelling.metrics.savings`` at each of the increasing ``thresholds`` (an alert when
    score >= threshold), from one total per threshold."""
    splits = [-math.inf, *thresholds.tolist(), math.inf]
    ranges = Bucketizer(splits=splits, inputCol=score, outputCol=_BUCKET).transform(counts)
    totals = ranges.groupBy(_BUCKET).agg(
        sf.coalesce(sf.sum(_CAUGHT), sf.lit(0.0)).alias("caught"), sf.sum(ROWS).alias("alerts")
    )
    caught = np.zeros(len(thresholds) + 1)
    alerts = np.zeros(len(thresholds) + 1, dtype=np.int64)
    for row in totals.collect():
        caught[int(row[_BUCKET])], alerts[int(row[_BUCKET])] = row["caught"], row["alerts"]
    # Range j + 1 holds the scores in [threshold j, threshold j + 1): alerted from threshold j
    # down. Sums from the top.
    caught_from, alerts_from = np.cumsum(caught[::-1])[::-1], np.cumsum(alerts[::-1])[::-1]
    return caught_from[1:] - review_cost * alerts_from[1:]
