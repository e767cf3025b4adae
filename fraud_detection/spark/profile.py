"""The monitor's reference profile built by Spark: ``monitoring.profile.build_profile`` without
collecting the rows.

The same bins as ``monitoring.drift.binned``: per column, the interior quantiles at levels
0.1 ... 0.9 of its finite values, taken at observed values (Spark's ``percentile_approx``
returns values of the column, so an integer feature is still cut between integers), repeats
and an edge at the least value dropped (``drift.distinct_edges``), and the share of all rows
per bin, a missing value counted in the last bin as NumPy sorts NaN last. Per frame, a count,
then two aggregates, each one pass over the rows for every column at once: the quantiles and
least values; then, for each edge, the rows at or above it. The validation rows are scored
once (persisted while read): their score's aggregates, and the alerts at the threshold.

The quantiles are approximate: ``percentile_approx`` keeps a rank error of at most
``1 / QUANTILE_ACCURACY`` of the rows (Spark's default accuracy, 10,000), so an edge stands
where the exact quantile would within that share of the rows. For a continuous feature a bin's
share then moves by at most twice that, 0.0002; a count feature's edge may step to the next
integer within the error and carry that integer's rows to the next bin (1.7% of the rows once
in tests/spark/test_profile.py, PSI against the exact bins still under 0.01). Either way the
counts per bin are exact for the edges taken, and the monitor bins every window on the
profile's own edges, so its PSI means the same on both engines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as sf

from fraud_detection.errors import DataError
from fraud_detection.monitoring.drift import (
    DEFAULT_BINS,
    EDGE_TOLERANCE,
    BinnedDistribution,
    distinct_edges,
    quantile_levels,
)
from fraud_detection.monitoring.profile import ReferenceProfile

QUANTILE_ACCURACY = 10_000
# Rows per task of the two aggregates, at most: see ``binned_columns``.
ROWS_PER_TASK = 1_000_000


def spark_profile(
    training: DataFrame,
    features: Sequence[str],
    scored_validation: DataFrame,
    score: str,
    threshold: float,
    n_bins: int = DEFAULT_BINS,
    accuracy: int = QUANTILE_ACCURACY,
) -> ReferenceProfile:
    """The profile ``build_profile`` makes of ``training`` and the validation scores.

    Args:
        training: The training window's rows (at least the feature columns).
        features: The model's feature columns.
        scored_validation: The validation window's rows with the logged model's fraud
            probability in ``score``; persisted here while it is read (the scores are
            computed once).
        score: The fraud probability column.
        threshold: The model's decision threshold (an alert when score >= threshold).
        n_bins: Bins per distribution at most.
        accuracy: ``percentile_approx``'s accuracy (a rank error of 1 / accuracy).
    """
    feature_bins, training_rows = binned_columns(training, features, n_bins, accuracy)
    score_bins, alert_rate, validation_rows = score_distribution(
        scored_validation, score, threshold, n_bins, accuracy
    )
    return ReferenceProfile(
        features=feature_bins,
        score=score_bins,
        alert_rate=alert_rate,
        threshold=float(threshold),
        training_rows=training_rows,
        validation_rows=validation_rows,
    )


def score_distribution(
    scored: DataFrame,
    score: str,
    threshold: float,
    n_bins: int = DEFAULT_BINS,
    accuracy: int = QUANTILE_ACCURACY,
) -> tuple[BinnedDistribution, float, int]:
    """The bins of the ``score`` column of ``scored``, the share of rows at or above
    ``threshold`` (the alert rate) and the number of rows; the scores are computed once
    (persisted while they are read)."""
    scores = scored.select(sf.col(score).cast("double").alias(score))
    scores = scores.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        bins, rows = binned_columns(scores, [score], n_bins, accuracy)
        alerts = scores.agg(sf.count_if(sf.col(score) >= sf.lit(float(threshold)))).first()[0]
    finally:
        scores.unpersist()
    return bins[score], alerts / rows, rows


def binned_columns(
    frame: DataFrame,
    columns: Sequence[str],
    n_bins: int = DEFAULT_BINS,
    accuracy: int = QUANTILE_ACCURACY,
) -> tuple[dict[str, BinnedDistribution], int]:
    """``drift.binned`` of each of ``columns`` of ``frame``, and the number of rows.

    Raises:
        DataError: ``frame`` has no rows.
    """
    rows = frame.count()
    if rows == 0:
        raise DataError("no rows to build the reference profile from")
    # A time window of a shuffled table keeps the table's partitions (200 by default) with few
    # rows each, and the quantile sketches then cost per partition, not per row: 28,441 rows
    # took 17.5 s in 200 partitions against 2.3 s in 2 (local[2]). Coalescing never adds any.
    frame = frame.coalesce(max(1, math.ceil(rows / ROWS_PER_TASK)))
    levels = [float(level) for level in quantile_levels(n_bins)]
    first = frame.agg(
        *(
            sf.percentile_approx(_finite(name), levels, accuracy).alias(f"q{index}")
            for index, name in enumerate(columns)
        ),
        *(sf.min(_finite(name)).alias(f"m{index}") for index, name in enumerate(columns)),
    ).first()
    edges = {
        name: ()
        if first[f"q{index}"] is None  # no finite value: one bin
        else distinct_edges(first[f"q{index}"], first[f"m{index}"])
        for index, name in enumerate(columns)
    }
    return {
        name: BinnedDistribution.from_counts(edges[name], counts)
        for name, counts in _bin_counts(frame, edges, rows).items()
    }, rows


def _bin_counts(
    frame: DataFrame, edges: dict[str, tuple[float, ...]], rows: int
) -> dict[str, list[int]]:
    """Rows per bin of each column's ``edges``, from one aggregate of the rows at or above
    each edge (a value falls in bin i when exactly i edges are <= it)."""
    at_or_above = [
        sf.count_if(_nudged(name) >= sf.lit(edge)).alias(f"c{index}_{position}")
        for index, (name, cuts) in enumerate(edges.items())
        for position, edge in enumerate(cuts)
    ]
    totals = frame.agg(*at_or_above).first() if at_or_above else None
    counts = {}
    for index, (name, cuts) in enumerate(edges.items()):
        above = [rows, *(int(totals[f"c{index}_{position}"]) for position in range(len(cuts))), 0]
        counts[name] = [above[bin_] - above[bin_ + 1] for bin_ in range(len(cuts) + 1)]
    return counts


def _value(name: str) -> Column:
    """The column as a double, a null as NaN: ``build_profile`` bins the pandas engine's
    values, where a missing value is NaN (Spark orders NaN above every number, as NumPy's
    ``searchsorted`` places it after every edge)."""
    return sf.coalesce(sf.col(name).cast("double"), sf.lit(math.nan))


def _nudged(name: str) -> Column:
    """The value ``drift.bin_shares`` compares with the edges: a finite value moved up by
    ``EDGE_TOLERANCE`` of itself, so that one within that of an edge counts as on it."""
    value = _value(name)
    finite = ~sf.isnan(value) & (sf.abs(value) != sf.lit(math.inf))
    return sf.when(finite, value + sf.lit(EDGE_TOLERANCE) * sf.abs(value)).otherwise(value)


def _finite(name: str) -> Column:
    """The column's finite values (null otherwise), which ``quantile_edges`` keeps."""
    value = _value(name)
    return sf.when(~sf.isnan(value) & (sf.abs(value) != sf.lit(math.inf)), value)
