"""Batch scoring on Spark: a Parquet dataset in, the same rows with the model's outputs out.

The Spark twin of ``serving.batch`` (``serve.py batch --engine spark``). The model URI is
resolved once (an alias to its version, as the pandas scorer does) and that version scores
every row, through ``mlflow.pyfunc.spark_udf`` (``spark.scoring``). The output is a Parquet
directory holding the input's columns, then ``fraud_probability`` and ``is_fraud`` and, with
``--reasons k``, the reason-code columns (each ``predicted_<name>`` when the input already has
a column of that name): the columns and scores of the pandas scorer, written by the
executors, nothing collected to the driver.

A dataset that holds the model's feature columns is scored as it is. Raw transactions need
the features computed first: that is the ``raw_features`` hook (``RawFeatures``), which
takes the raw rows and returns them with the feature columns added, computed as training
computed them (``model.config`` has the recipe: ``delay_days``, ``feature_windows``). By
default it is ``spark_features``: the Spark features over the whole input, as the pandas
scorer computes them over its whole file (the history a row's windows reach is in the input).

Spark writes the directory with its own commit protocol: the files appear when every task
has finished. An existing output is replaced (as the pandas scorer replaces its file). The
rows are spread over part files in no promised order: match them by an id column.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf
from pyspark.sql.types import BooleanType, NumericType

from fraud_detection.config import (
    PARQUET_SUFFIXES,
    BatchConfig,
    TransactionColumns,
)
from fraud_detection.errors import DataError
from fraud_detection.modelling.pyfunc import (
    DECISION_COLUMN,
    PROBABILITY_COLUMN,
    feature_recipe,
    reason_column_names,
)
from fraud_detection.serving.batch import check_reasons, output_column
from fraud_detection.serving.follower import ModelFollower, ServedModel
from fraud_detection.spark.features import add_features
from fraud_detection.spark.scoring import score_frame
from fraud_detection.spark.session import spark_session

logger = logging.getLogger(__name__)

# Raw transactions -> the same rows with the model's feature columns added. Its arguments:
# the raw rows as read, the table's column names, the model's model_config (its feature
# recipe). Default: ``spark_features``.
RawFeatures = Callable[[DataFrame, TransactionColumns, Mapping[str, Any]], DataFrame]
_OUTPUTS = (PROBABILITY_COLUMN, DECISION_COLUMN)


@dataclass(frozen=True)
class SparkBatchReport:
    """What a Spark batch run did."""

    model: ServedModel
    model_uri: str  # as asked for (an alias, say); ``model.uri`` is the version that scored
    output: str
    rows: int
    alerts: int
    seconds: float

    def summary(self) -> str:
        version = f" (version {self.model.version})" if self.model.version else ""
        rate = self.rows / self.seconds if self.seconds > 0 else 0
        return (
            f"scored {self.rows} transactions with {self.model_uri}{version} on Spark: "
            f"{self.alerts} alerts -> {self.output}\n"
            f"{rate:,.0f} rows/s ({self.seconds:.1f} s)"
        )


def spark_features(
    frame: DataFrame, columns: TransactionColumns, settings: Mapping[str, Any]
) -> DataFrame:
    """``frame`` with the model's engineered features, by the recipe in its ``settings``."""
    delay, windows = feature_recipe(settings)
    return add_features(frame, columns, delay_days=delay, windows=windows)


def score_batch(
    config: BatchConfig,
    spark: SparkSession | None = None,
    raw_features: RawFeatures | None = spark_features,
) -> str:
    """Score ``config.input`` with ``config.model_uri`` into ``config.output`` on Spark
    (``spark``, or the session ``spark.session`` configures); return the report."""
    if not config.output.lower().endswith(PARQUET_SUFFIXES):
        raise DataError(f"--output {config.output}: the Spark engine writes Parquet (.parquet)")
    if spark is None:
        spark = spark_session()
    follower = ModelFollower(config.model_uri, poll_seconds=0)
    model = follower.load()
    try:
        check_reasons(model, config.reasons)
        report = score_parquet(
            spark, model, config.input, config.output, config.columns, raw_features, config.reasons
        )
    finally:
        follower.close()
    return replace(report, model_uri=config.model_uri).summary()


def score_parquet(
    spark: SparkSession,
    model: ServedModel,
    source: str,
    output: str,
    columns: TransactionColumns | None = None,
    raw_features: RawFeatures | None = None,
    reasons: int = 0,
) -> SparkBatchReport:
    """Score the Parquet dataset ``source`` with ``model``; write a Parquet directory ``output``.

    Args:
        spark: The session to run on.
        model: The loaded model (``serving.follower``); its version scores every row.
        source: Parquet file or directory (path or URI Spark reads).
        output: Parquet directory to write (replaced if it exists).
        columns: Column names of raw transactions (for ``raw_features``).
        raw_features: Computes the features of raw transactions (see the module docstring).
        reasons: Reason codes per row (checked by ``serving.batch.check_reasons``).
    """
    started = time.perf_counter()
    frame = _read(spark, source)
    if frame.isEmpty():
        raise DataError(f"{source}: no rows")
    features = list(model.config.get("features", model.schema.names))
    if set(features) <= set(frame.columns):
        featured = frame
        _check_features(frame, features, source)
    else:
        featured = _raw_with_features(
            frame, features, model, source, columns or TransactionColumns(), raw_features
        )
    outputs = [*_OUTPUTS, *reason_column_names(reasons)]
    names = {name: output_column(name, pd.Index(frame.columns)) for name in outputs}
    scored = score_frame(
        featured,
        model.uri,
        features,
        names[PROBABILITY_COLUMN],
        names[DECISION_COLUMN],
        reasons,
        reason_columns=names,
    )
    scored.select(*frame.columns, *names.values()).write.mode("overwrite").parquet(output)
    rows, alerts = _count_written(spark, output, names[DECISION_COLUMN])
    seconds = time.perf_counter() - started
    logger.info("Scored %d rows on Spark in %.1f s: %d alerts", rows, seconds, alerts)
    return SparkBatchReport(model, model.uri, output, rows, alerts, seconds)


def _read(spark: SparkSession, source: str) -> DataFrame:
    try:
        return spark.read.parquet(source)
    except AnalysisException as error:
        if error.getCondition() == "PATH_NOT_FOUND":
            raise DataError(f"{source}: no such file or directory") from error
        raise


def _raw_with_features(
    frame: DataFrame,
    features: Sequence[str],
    model: ServedModel,
    source: str,
    columns: TransactionColumns,
    raw_features: RawFeatures | None,
) -> DataFrame:
    """Raw transactions with the model's features, computed by ``raw_features``."""
    missing = [name for name in features if name not in frame.columns]
    problem = f"{source}: missing feature column(s) {', '.join(missing)}"
    if not model.config.get("engineered_features", True):
        raise DataError(problem)
    if raw_features is None:
        raise DataError(
            f"{problem}; the Spark engine does not compute features from raw transactions "
            "yet: score them with the pandas engine"
        )
    return raw_features(frame, columns, model.config)


def _check_features(frame: DataFrame, features: Sequence[str], source: str) -> None:
    """The feature columns of a dataset that holds them: numeric, nothing missing, as the
    pandas scorer checks them (one aggregate row: the missing values of each column)."""
    for name in features:
        kind = frame.schema[name].dataType
        if not isinstance(kind, NumericType | BooleanType):
            raise DataError(f"{source}: column {name} must be numeric, found {kind.simpleString()}")
    absent = {
        name: sf.count(sf.when(sf.isnull(name) | sf.isnan(sf.col(name).cast("double")), 1))
        for name in features
    }
    missing = frame.agg(*(count.alias(name) for name, count in absent.items())).first()
    for name in features:
        if missing[name]:
            raise DataError(f"{source}: column {name} has {missing[name]} missing value(s)")


def _count_written(spark: SparkSession, output: str, decision: str) -> tuple[int, int]:
    """Rows and alerts of the written output (read back: one aggregate row)."""
    row = spark.read.parquet(output).agg(sf.count("*"), sf.sum(decision)).first()
    return int(row[0]), int(row[1] or 0)
