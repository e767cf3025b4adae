"""The fraud metrics of ``modelling.metrics``, computed by Spark without collecting the rows.

Each function gives the number its pandas twin gives on the same rows (float rounding aside),
ties in score included; only small aggregates reach the driver: one row per bucket of scores,
per day, or per metric.

- ROC AUC and average precision come from one table of distinct scores with, for each, the
  frauds and rows scored at least as high (``from_the_top``). Spark's own
  ``BinaryClassificationEvaluator`` would do for ROC AUC only with ``numBins=0`` (by default it
  bins the scores into 1,000 and the result moves), and its ``areaUnderPR`` interpolates
  between points where scikit-learn's average precision sums steps.
- The recall at a false-positive rate reads the same table, at the points scikit-learn's
  ``roc_curve`` keeps (its corners), as the pandas function does.
- Card precision@k keeps the book's rule that a card caught on one day is left out of the
  later ones. At most k cards are caught a day, so the i-th day's k * (i + 1) best cards are
  enough: one job returns them, one row per day, and the driver walks the days in order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.ml.feature import Bucketizer
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as sf

from fraud_detection.errors import DataError
from fraud_detection.modelling.metrics import CARD_PRECISION_K

# Columns of the distinct-score table (named apart from the user's).
POSITIVES, ROWS = "__positives__", "__rows__"
POSITIVES_ABOVE, ROWS_ABOVE = "__positives_above__", "__rows_above__"
_BUCKET = "__score_bucket__"
_RANK = "__card_rank__"
# Relative error of the quantiles that cut the scores into ranges (they only balance work).
_QUANTILE_ERROR = 0.01


@dataclass(frozen=True)
class RankingSums:
    """What ROC AUC and average precision are made of, summed over the rows by Spark."""

    positives: int
    negatives: int
    # sum over distinct scores s of negatives(s) * (2 * positives above s + positives(s))
    concordant_twice: int
    # sum over distinct scores s of positives(s) * precision at threshold s
    precision_sum: float

    @property
    def roc_auc(self) -> float:
        """Area under the ROC curve (ties count one half, as scikit-learn's trapezoids)."""
        return self.concordant_twice / (2 * self.positives * self.negatives)

    @property
    def average_precision(self) -> float:
        """scikit-learn's ``average_precision_score``: precision summed at each recall step."""
        return self.precision_sum / self.positives


def ranking_sums(frame: DataFrame, label: str, score: str) -> RankingSums:
    """Sum what ROC AUC and average precision need over ``frame`` (two classes required)."""
    with _ranked_scores(frame, label, score) as ranked:
        return _sums(ranked, score)[0]


def ranking_metrics(
    frame: DataFrame, label: str, score: str, rate: float = 0.01
) -> tuple[RankingSums, float]:
    """``ranking_sums`` and ``recall_at_false_positive_rate`` at ``rate`` together, from one
    table of distinct scores ranked once (each apart would build its own)."""
    with _ranked_scores(frame, label, score) as ranked:
        sums, highest = _sums(ranked, score)
        return sums, _recall_within(ranked, score, rate, sums, highest)


@contextmanager
def _ranked_scores(frame: DataFrame, label: str, score: str) -> Iterator[DataFrame]:
    """``frame``'s distinct scores with their counts and what lies above each
    (``from_the_top``), persisted while the caller reads it."""
    counts = frame.groupBy(sf.col(score).cast("double").alias(score)).agg(
        sf.sum(sf.col(label).cast("long")).alias(POSITIVES), sf.count("*").alias(ROWS)
    )
    counts = counts.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        ranked = from_the_top(counts, score).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            yield ranked
        finally:
            ranked.unpersist()
    finally:
        counts.unpersist()


def _sums(ranked: DataFrame, score: str) -> tuple[RankingSums, float]:
    """The ranking sums of ``ranked`` and its highest score, from one aggregate."""
    negatives = sf.col(ROWS) - sf.col(POSITIVES)
    precision = (sf.col(POSITIVES_ABOVE) + sf.col(POSITIVES)) / (sf.col(ROWS_ABOVE) + sf.col(ROWS))
    row = ranked.agg(
        sf.sum(POSITIVES).alias("positives"),
        sf.sum(negatives).alias("negatives"),
        sf.sum(negatives * (2 * sf.col(POSITIVES_ABOVE) + sf.col(POSITIVES))).alias("twice"),
        sf.sum(sf.col(POSITIVES) * precision).alias("precision_sum"),
        sf.max(score).alias("highest"),
    ).first()
    positives, negatives_total = int(row["positives"] or 0), int(row["negatives"] or 0)
    if positives == 0 or negatives_total == 0:
        raise DataError(
            "ROC AUC, average precision and the recall at a false-positive rate need both "
            f"classes; the rows hold {positives} fraud(s) and {negatives_total} genuine "
            "transaction(s)"
        )
    sums = RankingSums(positives, negatives_total, int(row["twice"]), float(row["precision_sum"]))
    return sums, row["highest"]


def roc_auc(frame: DataFrame, label: str, score: str) -> float:
    """``sklearn.metrics.roc_auc_score`` of ``frame[score]`` against ``frame[label]``."""
    return ranking_sums(frame, label, score).roc_auc


def average_precision(frame: DataFrame, label: str, score: str) -> float:
    """``sklearn.metrics.average_precision_score`` of ``frame[score]`` against ``frame[label]``."""
    return ranking_sums(frame, label, score).average_precision


def from_the_top(counts: DataFrame, score: str) -> DataFrame:
    """``counts`` (one row per distinct score, with its ``POSITIVES`` and ``ROWS``) with the
    positives and rows scored strictly higher than each score (``POSITIVES_ABOVE``,
    ``ROWS_ABOVE``).

    A running sum over one global order would put every score in one task. Instead the scores
    are cut into ranges at approximate quantiles (the cut only balances the work: any cut
    gives the same sums); each range's totals go to the driver, which adds up what lies above
    each range; the running sums are then taken within each range, in parallel. There are as
    many ranges as shuffle partitions.
    """
    spark = counts.sparkSession
    ranges = int(spark.conf.get("spark.sql.shuffle.partitions"))
    quantiles = [i / ranges for i in range(1, ranges)]
    cuts = (
        sorted(set(counts.approxQuantile(score, quantiles, _QUANTILE_ERROR))) if quantiles else []
    )
    if cuts:
        splits = [-math.inf, *cuts, math.inf]
        bucketed = Bucketizer(splits=splits, inputCol=score, outputCol=_BUCKET).transform(counts)
    else:  # one range (one shuffle partition, or no rows)
        bucketed = counts.withColumn(_BUCKET, sf.lit(0.0))
    totals = sorted(
        bucketed.groupBy(_BUCKET).agg(sf.sum(POSITIVES), sf.sum(ROWS)).collect(), reverse=True
    )
    offsets, positives_above, rows_above = [], 0, 0
    for bucket, positives, rows in totals:  # from the highest range down
        offsets.append((float(bucket), positives_above, rows_above))
        positives_above, rows_above = positives_above + positives, rows_above + rows
    offsets_frame = spark.createDataFrame(
        offsets, f"{_BUCKET} double, offset_positives long, offset_rows long"
    )
    higher = (
        Window.partitionBy(_BUCKET)
        .orderBy(sf.col(score).desc())
        .rowsBetween(Window.unboundedPreceding, -1)
    )
    return bucketed.join(sf.broadcast(offsets_frame), _BUCKET).select(
        *counts.columns,
        (sf.col("offset_positives") + sf.coalesce(sf.sum(POSITIVES).over(higher), sf.lit(0))).alias(
            POSITIVES_ABOVE
        ),
        (sf.col("offset_rows") + sf.coalesce(sf.sum(ROWS).over(higher), sf.lit(0))).alias(
            ROWS_ABOVE
        ),
    )


def recall_at_false_positive_rate(
    frame: DataFrame, label: str, score: str, rate: float = 0.01
) -> float:
    """``modelling.metrics.recall_at_false_positive_rate``: the highest true-positive rate of
    scikit-learn's ``roc_curve`` among its points whose false-positive rate is at most ``rate``.

    ``roc_curve`` keeps only the corners of the curve: a point is dropped when the distinct
    score below it has the same frauds and genuine rows as its own (the three points are on
    one line). The last point within ``rate`` may be such a point; the answer is then the
    point where its run of equal steps starts.
    """
    return ranking_metrics(frame, label, score, rate)[1]


def _recall_within(
    ranked: DataFrame, score: str, rate: float, sums: RankingSums, highest: float
) -> float:
    negatives = sf.col(ROWS) - sf.col(POSITIVES)
    ranked = ranked.select(
        score,
        negatives.alias("step_negatives"),
        sf.col(POSITIVES).alias("step_positives"),
        (sf.col(ROWS_ABOVE) - sf.col(POSITIVES_ABOVE) + negatives).alias("negatives_through"),
        (sf.col(POSITIVES_ABOVE) + sf.col(POSITIVES)).alias("positives_through"),
    )
    within = ranked.filter(sf.col("negatives_through") / sf.lit(sums.negatives) <= rate)
    last = within.agg(sf.min_by(sf.struct(*ranked.columns), score)).first()[0]
    if last is None:
        return 0.0  # only the curve's origin is within the rate
    step = sf.struct("step_negatives", "step_positives")
    below = ranked.filter(sf.col(score) < last[score]).agg(sf.max_by(step, score)).first()[0]
    same = below is not None and tuple(below) == (last["step_negatives"], last["step_positives"])
    positives = last["positives_through"]
    if same and last[score] != highest:  # dropped: go up to where its run of steps starts
        other = ~((sf.col("step_negatives") == below[0]) & (sf.col("step_positives") == below[1]))
        higher = ranked.filter((sf.col(score) > last[score]) & other)
        start = higher.agg(sf.min_by("positives_through", score)).first()[0]
        top = ranked.filter(sf.col(score) == highest).first()["positives_through"]
        positives = start if start is not None else top
    return positives / sums.positives


def card_precision_at_k(
    frame: DataFrame,
    day: str,
    card: str,
    label: str,
    score: str,
    k: int = CARD_PRECISION_K,
) -> float:
    """``modelling.metrics.card_precision_at_k`` of the rows of ``frame``.

    Each day, a card's score is its highest and it is compromised if any of its transactions
    is fraud; the day's precision is (compromised cards among its top ``k``) / ``k``, even when
    it has fewer than ``k`` cards; cards caught on a day are left out of later days; ties in
    score go to the lower card id. The mean over the days that have transactions.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    per_card_day = frame.groupBy(day, card).agg(
        sf.max(sf.col(score).cast("double")).alias(score), sf.max(sf.col(label)).alias(label)
    )
    days = sorted(row[0] for row in per_card_day.select(day).distinct().collect())
    if not days:
        return float("nan")
    # At most k cards are caught per day, so before the i-th day (from 0) at most k * i cards
    # are left out: its k * (i + 1) best cards hold its k best cards not yet caught. One job
    # brings each day's best, as one row per day, and the days are walked on the driver.
    order = Window.partitionBy(day).orderBy(sf.col(score).desc(), sf.col(card).asc())
    position = sf.array_position(sf.array(*(sf.lit(value) for value in days)), sf.col(day))
    best = (
        per_card_day.withColumn(_RANK, sf.row_number().over(order))
        .filter(sf.col(_RANK) <= position * k)
        .groupBy(day)
        .agg(sf.sort_array(sf.collect_list(sf.struct(_RANK, card, sf.col(label) == 1))))
        .collect()
    )
    ranked_by_day = {value: [(c, fraud) for _, c, fraud in cards] for value, cards in best}
    caught: set = set()
    precisions = []
    for value in days:
        top = [(c, fraud) for c, fraud in ranked_by_day[value] if c not in caught][:k]
        caught_today = {c for c, fraud in top if fraud}
        precisions.append(len(caught_today) / k)
        caught |= caught_today
    return sum(precisions) / len(precisions)


def savings(frame: DataFrame, label: str, decision: str, amount: str, review_cost: float) -> float:
    """``modelling.metrics.savings``: fraud amounts caught minus ``review_cost`` per alert."""
    caught = sf.when((sf.col(label) == 1) & (sf.col(decision) == 1), sf.col(amount).cast("double"))
    row = frame.agg(
        sf.coalesce(sf.sum(caught), sf.lit(0.0)).alias("caught"),
        sf.coalesce(sf.sum(sf.col(decision).cast("long")), sf.lit(0)).alias("alerts"),
    ).first()
    return float(row["caught"] - review_cost * row["alerts"])


def fraud_metrics(
    frame: DataFrame,
    label: str,
    score: str,
    day: str | None = None,
    card: str | None = None,
) -> dict[str, float]:
    """``modelling.metrics.fraud_metrics`` on Spark: ROC AUC, average precision and (when
    cards and days are given) card precision@100, under the same names.

    ``frame`` is read more than once: the columns needed are persisted first, so a scoring
    UDF upstream runs once.
    """
    columns = [name for name in (label, score, day, card) if name is not None]
    rows = frame.select(*columns).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        sums = ranking_sums(rows, label, score)
        metrics = {"roc_auc": sums.roc_auc, "average_precision": sums.average_precision}
        if day is not None and card is not None:
            metrics[f"card_precision_at_{CARD_PRECISION_K}"] = card_precision_at_k(
                rows, day, card, label, score
            )
    finally:
        rows.unpersist()
    return metrics
