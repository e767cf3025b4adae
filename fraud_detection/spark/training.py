"""XGBoost trained on Spark, handed back as the pandas engine's ``FittedCandidate``.

``xgboost.spark.SparkXGBClassifier`` fits one booster over the executors; the result is the
same object ``modelling.estimators.fit_candidate`` returns (an ``XGBClassifier`` holding the
booster, the hyperparameters, the rounds kept and the per-round curves), so the threshold,
``Scorer.from_fitted``, the pyfunc model, the registry and serving apply unchanged. The
hyperparameters are those of the pandas engine's candidate (``estimators.build_estimator``).

Each choice below answers a failure measured on this machine (DESIGN.md, "Scaling out"):

- The features go in as one vector column (``VectorAssembler``): a list of feature columns
  with a validation indicator raises ``KeyError: 'values'`` when a partition holds no
  validation (or no training) rows, depending on the partitioning.
- The rows are always repartitioned, round robin, over the workers, so that every worker holds
  both training and validation rows however the two frames were partitioned.
- ``num_workers`` is at most the task slots: training is one barrier stage, and asking for
  more workers than slots waits for slots that never come. It is also at most one per
  ``MIN_ROWS_PER_WORKER`` rows of the smaller window: a worker left without validation (or
  training) rows fails the fit with XGBoost's "Inconsistent `max_bin`" (xgboost 3.2 builds
  the empty worker's matrix with its default 256 bins).
- The booster is cut to ``best_iteration + 1`` rounds: Spark's ``transform`` stops at the best
  iteration, but ``get_booster()`` keeps every tree, and the two disagreed by up to 0.41 in
  probability here. The cut booster carries the feature names, so its file says what it reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace

import pandas as pd
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf
from xgboost import XGBClassifier
from xgboost.spark import SparkXGBClassifier, SparkXGBClassifierModel

from fraud_detection.config import ModelConfig
from fraud_detection.errors import DataError, PipelineError
from fraud_detection.modelling.estimators import (
    CandidateSpec,
    FittedCandidate,
    build_estimator,
    estimator_params,
)

logger = logging.getLogger(__name__)

# Columns this module adds to the rows it trains on (named apart from any user column).
FEATURES_VECTOR = "__features__"
VALIDATION_INDICATOR = "__is_validation__"
# The XGBClassifier settings SparkXGBClassifier sets itself (threads: spark.task.cpus) or
# refuses (the objective follows from the labels).
_SET_BY_SPARK = ("n_jobs", "nthread", "objective")
# Rows of each window per XGBoost worker, at least: spread round robin, every worker then
# holds rows of both windows.
MIN_ROWS_PER_WORKER = 100
# How long to wait for a cluster's first executor before giving up.
EXECUTOR_WAIT_SECONDS = 120.0


def fit_spark_candidate(
    spec: CandidateSpec,
    config: ModelConfig,
    features: Sequence[str],
    training: DataFrame,
    label: str,
    validation: DataFrame | None = None,
    rounds: int | None = None,
    num_workers: int | None = None,
) -> FittedCandidate:
    """Fit ``spec`` on Spark rows; with ``validation``, stop early on it and record curves.

    The arguments mean what they mean for ``estimators.fit_candidate``.

    Args:
        spec: The candidate (XGBoost only: the Spark engine trains no other kind).
        config: Shared hyperparameters.
        features: Feature columns, in model order.
        training: Rows to fit on (at least the feature and label columns).
        label: Label column (0/1).
        validation: Rows to watch, and stop early on, while boosting.
        rounds: Boosting rounds to use instead of ``config.n_estimators`` (a refit).
        num_workers: XGBoost workers (Spark tasks); default and at most: the task slots.
    """
    twin = pandas_twin(spec, config, training, label, rounds, early_stopping=validation is not None)
    model = fit_spark_xgboost(twin, features, training, label, validation, num_workers)
    stopped = validation is not None and config.early_stopping_rounds > 0
    return fitted_candidate(spec, twin, model, features, early_stopped=stopped)


def pandas_twin(
    spec: CandidateSpec,
    config: ModelConfig,
    training: DataFrame,
    label: str,
    rounds: int | None = None,
    early_stopping: bool = False,
) -> XGBClassifier:
    """The unfitted ``XGBClassifier`` the pandas engine would build for ``spec`` on these rows.

    Its settings are what Spark trains with and what the fitted candidate records. The labels
    are read only for the "balanced" class weight (``scale_pos_weight=0``), counted by Spark.
    """
    if spec.kind != "xgboost":
        raise PipelineError(
            f"the Spark engine trains XGBoost candidates only, not {spec.kind!r}; "
            "set model_kinds=xgboost"
        )
    overrides = dict(spec.overrides)
    if rounds is not None:
        overrides["n_estimators"] = rounds
    if not config.scale_pos_weight:
        _require_columns(training, [label])
        row = training.agg(sf.count("*").alias("rows"), sf.sum(label).alias("positives")).first()
        positives = int(row["positives"] or 0)
        config = replace(config, scale_pos_weight=(row["rows"] - positives) / max(positives, 1))
    return build_estimator(
        "xgboost", config, pd.Series(dtype="int64"), overrides, early_stopping=early_stopping
    )


def fit_spark_xgboost(
    twin: XGBClassifier,
    features: Sequence[str],
    training: DataFrame,
    label: str,
    validation: DataFrame | None = None,
    num_workers: int | None = None,
) -> SparkXGBClassifierModel:
    """Train ``twin``'s settings with ``SparkXGBClassifier``; return the Spark model.

    Its ``transform`` reads the ``FEATURES_VECTOR`` column: pass rows through
    ``assemble_features`` first.
    """
    for frame in (training, validation):
        if frame is not None:
            _require_columns(frame, [*features, label])
    rows = _training_rows(training, validation, features, label)
    slots = task_slots(training.sparkSession)
    workers = min(num_workers or slots, slots, _workers_the_rows_fill(rows))
    estimator = SparkXGBClassifier(
        features_col=FEATURES_VECTOR,
        label_col=label,
        validation_indicator_col=VALIDATION_INDICATOR if validation is not None else None,
        num_workers=workers,
        force_repartition=True,
        verbose=False,
        **spark_xgboost_params(twin),
    )
    logger.info("Fitting XGBoost on Spark with %d workers (%d task slots)", workers, slots)
    return estimator.fit(rows)


def fitted_candidate(
    spec: CandidateSpec,
    twin: XGBClassifier,
    model: SparkXGBClassifierModel,
    features: Sequence[str],
    early_stopped: bool,
) -> FittedCandidate:
    """The pandas engine's ``FittedCandidate`` for a Spark model: its booster cut to the rounds
    early stopping kept, with feature names, in a copy of ``twin`` (same settings)."""
    booster = model.get_booster()
    kept = booster.best_iteration + 1 if early_stopped else booster.num_boosted_rounds()
    cut = booster[:kept]
    cut.feature_names = list(features)
    classifier = type(twin)(**twin.get_params())
    classifier.load_model(bytearray(cut.save_raw("ubj")))
    params = estimator_params(spec.kind, twin)  # loading a booster adds its learned base_score
    params["num_workers"] = model.getOrDefault("num_workers")
    summary = model.training_summary
    curves = {
        f"{window}_{metric}": [float(value) for value in values]
        for window, history in (
            ("train", summary.train_objective_history),
            ("validation", summary.validation_objective_history),
        )
        for metric, values in history.items()
    }
    return FittedCandidate(spec, classifier, params, kept, curves)


def spark_xgboost_params(twin: XGBClassifier) -> dict:
    """``SparkXGBClassifier`` keyword arguments carrying ``twin``'s settings."""
    params = {
        key: value
        for key, value in twin.get_xgb_params().items()
        if value is not None and key not in _SET_BY_SPARK
    }
    params["n_estimators"] = twin.n_estimators
    if twin.early_stopping_rounds:
        params["early_stopping_rounds"] = twin.early_stopping_rounds
    return params


def assemble_features(frame: DataFrame, features: Sequence[str]) -> DataFrame:
    """``frame`` with the features as one vector column (``FEATURES_VECTOR``), in model order.

    Missing values stay missing (NaN), as XGBoost reads them in the pandas engine.
    """
    assembler = VectorAssembler(
        inputCols=list(features), outputCol=FEATURES_VECTOR, handleInvalid="keep"
    )
    return assembler.transform(frame)


def task_slots(spark: SparkSession, wait_seconds: float = EXECUTOR_WAIT_SECONDS) -> int:
    """How many Spark tasks can run at once (what ``num_workers`` must not exceed).

    On a cluster the executors register after the session starts: wait for the first one.
    (PySpark has no public call for this; it is the JVM call XGBoost itself makes.)
    """
    context = spark.sparkContext._jsc.sc()
    profile = context.resourceProfileManager().resourceProfileFromId(0)
    deadline = time.monotonic() + wait_seconds
    while (slots := int(context.maxNumConcurrentTasks(profile))) < 1:
        if time.monotonic() > deadline:
            raise PipelineError(
                f"no Spark executor registered with {spark.sparkContext.master} within "
                f"{wait_seconds:.0f} s: check that the cluster is up and has free cores"
            )
        time.sleep(1)
    return slots


def _training_rows(
    training: DataFrame, validation: DataFrame | None, features: Sequence[str], label: str
) -> DataFrame:
    """The rows XGBoost reads: features as a vector, label, and which window a row is from."""
    columns = [*features, label]
    rows = training.select(*columns).withColumn(VALIDATION_INDICATOR, sf.lit(False))
    if validation is not None:
        rows = rows.unionByName(
            validation.select(*columns).withColumn(VALIDATION_INDICATOR, sf.lit(True))
        )
    return assemble_features(rows, features).select(FEATURES_VECTOR, label, VALIDATION_INDICATOR)


def _workers_the_rows_fill(rows: DataFrame) -> int:
    """How many workers get ``MIN_ROWS_PER_WORKER`` rows of each window (at least one)."""
    sizes = [row["count"] for row in rows.groupBy(VALIDATION_INDICATOR).count().collect()]
    return max(1, min(sizes, default=0) // MIN_ROWS_PER_WORKER)


def _require_columns(frame: DataFrame, needed: Sequence[str]) -> None:
    missing = [name for name in needed if name not in frame.columns]
    if missing:
        raise DataError(f"the Spark rows to train on have no column(s) {', '.join(missing)}")
