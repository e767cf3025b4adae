"""Scoring on Spark, with a logged model or with a model not logged yet.

``score_frame`` scores with a logged model, through MLflow's ``spark_udf`` over the feature
columns: the UDF runs the very pyfunc model the pandas engine and serving load
(``modelling.pyfunc``), in the executors' Python (``env_manager="local"``: the session makes
executors run the driver's interpreter, so the model's packages are there; a virtualenv or uv
environment would need pyenv or uv on every executor). The features are cast to double, the
type of the model's signature, so the model sees exactly the values the pandas engine passes.

``score_with_scorer`` scores with a model that is not logged yet (a candidate of the sweep,
the winner whose threshold is being tuned): the ``Scorer`` travels to the executors with the
task, and runs the pandas engine's own code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import mlflow.pyfunc
import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as sf

from fraud_detection.errors import DataError
from fraud_detection.modelling.estimators import Scorer
from fraud_detection.modelling.pyfunc import (
    DECISION_COLUMN,
    PROBABILITY_COLUMN,
    REASONS_PARAM,
    reason_column_names,
    reason_feature_column,
)

# The model's output (``pyfunc.model_signature``) as a Spark struct.
RESULT_TYPE = f"{PROBABILITY_COLUMN} double, {DECISION_COLUMN} long"
_RESULT = "__model_output__"


def result_type(reasons: int = 0) -> str:
    """The model's output struct with ``reasons`` reason codes (``RESULT_TYPE`` for 0)."""
    features = {reason_feature_column(rank) for rank in range(1, reasons + 1)}
    added = [
        f"{name} {'string' if name in features else 'double'}"
        for name in reason_column_names(reasons)
    ]
    return ", ".join([RESULT_TYPE, *added])


def model_udf(spark: SparkSession, model_uri: str, reasons: int = 0) -> Callable[[Column], Column]:
    """The model at ``model_uri`` as a Spark UDF of one struct of feature columns (the struct
    of ``feature_struct``), returning the struct ``result_type(reasons)``: the pyfunc called
    with ``params={"reasons": reasons}`` (``spark_udf`` passes params to every batch)."""
    params = {REASONS_PARAM: reasons} if reasons else None
    return mlflow.pyfunc.spark_udf(
        spark, model_uri, result_type=result_type(reasons), env_manager="local", params=params
    )


def feature_struct(frame: DataFrame, features: Sequence[str]) -> Column:
    """The model's input: the feature columns, as doubles, in a struct named as the signature."""
    missing = [name for name in features if name not in frame.columns]
    if missing:
        raise DataError(f"the rows to score have no column(s) {', '.join(missing)}")
    return sf.struct(*(sf.col(name).cast("double").alias(name) for name in features))


def score_frame(
    frame: DataFrame,
    model_uri: str,
    features: Sequence[str],
    probability_column: str = PROBABILITY_COLUMN,
    decision_column: str = DECISION_COLUMN,
    reasons: int = 0,
    reason_columns: Mapping[str, str] | None = None,
) -> DataFrame:
    """``frame`` with the model's fraud probability and decision added as two columns.

    Lazy, like any Spark transformation: the model runs when the result is computed, once
    per computation. Persist the result (or write it) before reading it more than once.

    Args:
        frame: Rows holding (at least) the feature columns.
        model_uri: Any MLflow model URI of a model logged by the train step.
        features: The model's feature columns (its ``model_config["features"]``).
        probability_column: Name of the probability column to add.
        decision_column: Name of the 0/1 decision column to add.
        reasons: Reason codes per row, added after the decision.
        reason_columns: Where each reason output (``pyfunc.reason_column_names``) goes;
            default: its own name.
    """
    renamed = reason_columns or {}
    predict = model_udf(frame.sparkSession, model_uri, reasons)
    scored = frame.withColumn(_RESULT, predict(feature_struct(frame, features)))
    return scored.withColumns(
        {
            probability_column: scored[_RESULT][PROBABILITY_COLUMN],
            decision_column: scored[_RESULT][DECISION_COLUMN],
            **{
                renamed.get(name, name): scored[_RESULT][name]
                for name in reason_column_names(reasons)
            },
        }
    ).drop(_RESULT)


def score_with_scorer(frame: DataFrame, scorer: Scorer, column: str) -> DataFrame:
    """``frame`` with ``scorer``'s fraud probabilities in ``column`` (those of
    ``Scorer.predict_proba`` on the same rows, bit for bit)."""

    @sf.pandas_udf("double")
    def probabilities(features: pd.DataFrame) -> pd.Series:
        return pd.Series(scorer.predict_proba_values(features.to_numpy(np.float64)))

    return frame.withColumn(column, probabilities(feature_struct(frame, scorer.features)))
