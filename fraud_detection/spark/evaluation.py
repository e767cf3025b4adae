"""The evaluate step's measurements on Spark: the test window scored and measured where it lives.

The candidate (``models:/<model_id>``) and the current champion (``models:/<name>/<version>``)
score the same rows through ``spark_udf`` (``scoring.score_frame``); the scored columns are
persisted once, every metric is an aggregate of them (``metrics``), and only those aggregates
reach the driver. The metrics carry the names the pandas engine's ``mlflow.models.evaluate``
logs (``test_*``, ``champion_test_*``): the fraud metrics, and the classifier metrics at the
model's decision from one aggregate of the confusion counts. They are logged with
``mlflow.log_metrics(..., model_id=...)``, linked to each model as on the pandas engine.

The candidate's score reference for the monitor (``monitoring.reference``: score bins and alert
rate on the whole test window, known-compromised cards included) is one more scoring of the
window and the aggregates the Spark profile's scores take (``spark.profile.score_distribution``):
Spark's quantile sketch for the bin edges, then the rows per bin.

Plots: the feature importance (it needs no rows) and the mean absolute contribution of each
feature (the reason codes' global view: one more column of the persisted table, averaged in
the same aggregate pass). The curves (ROC, precision-recall, calibration, savings against the
threshold) and the confusion matrix are drawn on the pandas engine only; the model card says so.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import EvaluationResult
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as sf

from fraud_detection.config import DataConfig
from fraud_detection.contract import CHAMPION_PREFIX, TEST_PREFIX
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.errors import DataError
from fraud_detection.modelling.estimators import ExplanationError, Scorer
from fraud_detection.modelling.evaluation import (
    MEAN_CONTRIBUTION_PLOT,
    ChampionVersion,
    ModelUnderTest,
    Scored,
    WindowEvaluation,
    feature_importance_plot,
    score_champion,
)
from fraud_detection.modelling.metrics import CARD_PRECISION_K
from fraud_detection.monitoring.reference import ScoreReference
from fraud_detection.reporting import plots
from fraud_detection.spark.metrics import (
    card_precision_at_k,
    ranking_metrics,
)
from fraud_detection.spark.profile import score_distribution
from fraud_detection.spark.scoring import feature_struct, score_frame

# Each model's outputs, as columns of the scored test rows (named apart from the user's).
CANDIDATE = Scored("__candidate_fraud_probability__", "__candidate_decision__")
CHAMPION = Scored("__champion_fraud_probability__", "__champion_decision__")
PLOTS_NOTE = (
    "engine=spark draws the feature importance and the mean absolute contributions only: the "
    "ROC, precision-recall, calibration and savings curves and the confusion matrix are drawn "
    "by the pandas engine's evaluate"
)
# Each test row's absolute contributions (an array in feature order), in the persisted table.
_CONTRIBUTIONS = "__candidate_abs_contributions__"


@dataclass(frozen=True)
class _Columns:
    """The columns of the test rows that the metrics read."""

    label: str
    amount: str
    review_cost: float
    day: str | None  # None (with card): no card precision
    card: str | None


def evaluate_on_spark(
    rows: DataFrame,
    data_config: DataConfig,
    candidate: ModelUnderTest,
    champion_version: ChampionVersion | None,
) -> WindowEvaluation:
    """The candidate and the champion scored on ``rows`` by Spark, measured and logged."""
    columns = _columns(rows, data_config, float(candidate.settings["review_cost"]))
    frames = [score_frame(rows, candidate.uri, candidate.features, *_names(CANDIDATE))]
    champion = None
    if champion_version is not None:
        champion = score_champion(
            champion_version, _champion_scorer(frames, champion_version, candidate.features)
        )
    measured = [CANDIDATE] + ([CHAMPION] if champion and champion.scored else [])
    kept = [columns.label, columns.amount, columns.day, columns.card]
    kept += [name for scored in measured for name in _names(scored)]
    scorer = candidate.model.unwrap_python_model().scorer
    explained = _abs_contributions(frames[-1], scorer)
    table = frames[-1].select(*dict.fromkeys(c for c in kept if c is not None), *explained)
    table = table.persist(StorageLevel.MEMORY_AND_DISK)  # each model's UDF runs once
    try:
        metrics = {TEST_PREFIX + k: v for k, v in model_metrics(table, columns, CANDIDATE).items()}
        champion_metrics = model_metrics(table, columns, CHAMPION) if len(measured) > 1 else {}
        means = mean_contributions(table, scorer.features) if explained else pd.Series(dtype=float)
    finally:
        table.unpersist()
    mlflow.log_metrics(metrics, model_id=candidate.model_id)
    if champion_metrics:
        mlflow.log_metrics(
            {CHAMPION_PREFIX + k: v for k, v in champion_metrics.items()},
            model_id=champion.model_id,
        )
    drawn = dict([feature_importance_plot(candidate)])
    drawn[MEAN_CONTRIBUTION_PLOT] = plots.mean_contribution_figure(means)
    figures = {f"{name}.png": plots.png_bytes(figure) for name, figure in drawn.items()}
    _log_files(figures)  # each figure rendered once, for the run and the model card
    return WindowEvaluation(
        EvaluationResult(metrics=metrics, artifacts={}),
        champion_metrics,
        champion,
        figures=figures,
        plots_note=PLOTS_NOTE,
        contributions=[(str(name), float(value)) for name, value in means[::-1].items()],
    )


def _log_files(files: dict[str, bytes]) -> None:
    """Log each of ``files`` (name: content) at the root of the active run's artifacts."""
    with tempfile.TemporaryDirectory(prefix="fraud-plots-") as directory:
        for name, content in files.items():
            (Path(directory) / name).write_bytes(content)
        mlflow.log_artifacts(directory)


def _abs_contributions(frame: DataFrame, scorer: Scorer) -> list[Column]:
    """The column of each row's absolute contributions to ``scorer``'s margin (the pandas
    engine's ``Scorer.contributions_values``, run in the executors); none for a model kind
    without contributions."""
    try:
        scorer.contributions_values(np.zeros((1, len(scorer.features))))
    except ExplanationError:
        return []

    @sf.pandas_udf("array<double>")
    def contributions(features: pd.DataFrame) -> pd.Series:
        values, _ = scorer.contributions_values(features.to_numpy(np.float64))
        return pd.Series(list(np.abs(values)))

    return [contributions(feature_struct(frame, scorer.features)).alias(_CONTRIBUTIONS)]


def mean_contributions(table: DataFrame, features: Sequence[str]) -> pd.Series:
    """Each feature's mean absolute contribution over ``table`` (one aggregate row), ascending
    as ``modelling.evaluation.mean_contributions``."""
    column = sf.col(_CONTRIBUTIONS)
    row = table.agg(*(sf.avg(column[index]) for index in range(len(features)))).first()
    return pd.Series([float(value or 0.0) for value in row], index=list(features)).sort_values()


def window_score_reference(rows: DataFrame, candidate: ModelUnderTest) -> ScoreReference:
    """The candidate's score reference on ``rows``, scored once by ``spark_udf``."""
    scored = score_frame(rows, candidate.uri, candidate.features, *_names(CANDIDATE))
    threshold = float(candidate.settings["threshold"])
    return score_reference(scored, CANDIDATE.probabilities, threshold)


def score_reference(table: DataFrame, score: str, threshold: float) -> ScoreReference:
    """The pandas engine's ``monitoring.reference.score_reference`` of the ``score`` column,
    from aggregates (``spark.profile.score_distribution``, which bins the profile's scores
    too). Nothing but the counts reaches the driver."""
    bins, alert_rate, rows = score_distribution(table, score, threshold)
    return ScoreReference(score=bins, alert_rate=alert_rate, threshold=float(threshold), rows=rows)


def _names(scored: Scored) -> tuple[str, str]:
    return scored.probabilities, scored.decisions


def _columns(rows: DataFrame, data_config: DataConfig, review_cost: float) -> _Columns:
    names = data_config.columns
    has_cards = names.customer_column in rows.columns and DAY_COLUMN in rows.columns
    return _Columns(
        names.label_column,
        names.amount_column,
        review_cost,
        DAY_COLUMN if has_cards else None,
        names.customer_column if has_cards else None,
    )


def _champion_scorer(
    frames: list[DataFrame], champion: ChampionVersion, features: list[str]
) -> Callable[[mlflow.pyfunc.PyFuncModel, list[str]], Scored]:
    """Adds the champion's scores to the last of ``frames`` (from the candidate's feature
    columns, as on the pandas engine: a feature the candidate lacks cannot be scored)."""

    def score(model: mlflow.pyfunc.PyFuncModel, wanted: list[str]) -> Scored:
        missing = [name for name in wanted if name not in features]
        if missing:
            raise DataError(f"the rows to score have no column(s) {', '.join(missing)}")
        frames.append(score_frame(frames[-1], champion.uri, wanted, *_names(CHAMPION)))
        return CHAMPION

    return score


def model_metrics(frame: DataFrame, columns: _Columns, scored: Scored) -> dict[str, float]:
    """One model's test metrics on ``frame``, named as the pandas engine logs them."""
    label, score = columns.label, scored.probabilities
    sums, recall = ranking_metrics(frame, label, score, 0.01)
    metrics = {
        "roc_auc": sums.roc_auc,
        "average_precision": sums.average_precision,
        "recall_at_1pct_fpr": recall,
    }
    if columns.day is not None and columns.card is not None:
        metrics[f"card_precision_at_{CARD_PRECISION_K}"] = card_precision_at_k(
            frame, columns.day, columns.card, label, score
        )
    return metrics | decision_metrics(frame, columns, scored.decisions)


def decision_metrics(frame: DataFrame, columns: _Columns, decision: str) -> dict[str, float]:
    """The classifier metrics at the model's decision (those ``mlflow.models.evaluate`` logs
    for a binary classifier, scikit-learn's values: 0 where a ratio has nothing to divide) and
    the savings, from one aggregate of the confusion counts."""
    fraud, alert = sf.col(columns.label) == 1, sf.col(decision) == 1
    row = frame.agg(
        sf.count_if(fraud & alert).alias("tp"),
        sf.count_if(~fraud & alert).alias("fp"),
        sf.count_if(fraud & ~alert).alias("fn"),
        sf.count_if(~fraud & ~alert).alias("tn"),
        sf.sum(sf.when(fraud & alert, sf.col(columns.amount).cast("double"))).alias("caught"),
    ).first()
    tp, fp, fn, tn = (int(row[name]) for name in ("tp", "fp", "fn", "tn"))
    rows = tp + fp + fn + tn
    return {
        "true_negatives": float(tn),
        "false_positives": float(fp),
        "false_negatives": float(fn),
        "true_positives": float(tp),
        "example_count": float(rows),
        "accuracy_score": (tp + tn) / rows,
        "recall_score": _ratio(tp, tp + fn),
        "precision_score": _ratio(tp, tp + fp),
        "f1_score": _ratio(2 * tp, 2 * tp + fp + fn),
        "savings_at_threshold": float(row["caught"] or 0.0) - columns.review_cost * (tp + fp),
    }


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0
