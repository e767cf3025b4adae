"""XGBoost trained on Spark hands the train step what the pandas engine hands it."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark", reason='the Spark engine needs PySpark: pip install -e ".[spark]"')

from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf
from xgboost import XGBClassifier
from xgboost.spark import SparkXGBClassifierModel

from fraud_detection.config import DataConfig, ModelConfig, SplitConfig, TrainConfig
from fraud_detection.data.windows import Windows, prepare_data, training_windows
from fraud_detection.engine import PandasEngine
from fraud_detection.errors import DataError, PipelineError
from fraud_detection.modelling.estimators import (
    CandidateSpec,
    FittedCandidate,
    Scorer,
    build_estimator,
    estimator_params,
    feature_importance,
    fit_candidate,
)
from fraud_detection.modelling.metrics import fraud_metrics
from fraud_detection.modelling.pyfunc import (
    DECISION_COLUMN,
    PROBABILITY_COLUMN,
    model_signature,
)
from fraud_detection.modelling.threshold import tune_threshold
from fraud_detection.spark import metrics
from fraud_detection.spark.training import (
    assemble_features,
    fit_spark_candidate,
    fit_spark_xgboost,
    fitted_candidate,
    pandas_twin,
)
from fraud_detection.steps.train import _log_model

# Ninety days: the validation window's features have their full 30-day history.
DATA = DataConfig(n_customers=500, n_terminals=1_000, n_days=90, seed=1)
LABEL = DATA.columns.label_column
SPEC = CandidateSpec("xgboost", (("max_depth", 3), ("learning_rate", 0.3)))
# A case built for early stopping: a high learning rate on a week of data overfits within a
# few dozen rounds, far below n_estimators.
STOPPING = ModelConfig(grid="none", n_estimators=300, early_stopping_rounds=10, n_jobs=1)
ASKED_WORKERS = 8  # more than local[2] has task slots: training must use 2, not hang


@dataclass(frozen=True)
class SparkFit:
    windows: Windows
    features: tuple[str, ...]
    validation_rows: DataFrame
    model: SparkXGBClassifierModel
    candidate: FittedCandidate


@pytest.fixture(scope="module")
def windows() -> tuple[Windows, tuple[str, ...]]:
    prepared = prepare_data(DATA, SplitConfig())
    return training_windows(prepared, DATA), prepared.features


def spark_rows(spark: SparkSession, frame: pd.DataFrame, features) -> DataFrame:
    """The feature and label columns of a pandas window, with the row's position."""
    return spark.createDataFrame(frame[[*features, LABEL]].assign(row=np.arange(len(frame))))


@pytest.fixture(scope="module")
def spark_fit(spark, windows) -> SparkFit:
    """One Spark fit for the module (the slow part): validation-training rows, stopping early
    on the validation rows, as the train step's sweep does."""
    frames, features = windows
    training = spark_rows(spark, frames.validation_train, features)
    validation = spark_rows(spark, frames.validation, features)
    twin = pandas_twin(SPEC, STOPPING, training, LABEL, early_stopping=True)
    model = fit_spark_xgboost(twin, features, training, LABEL, validation, ASKED_WORKERS)
    candidate = fitted_candidate(SPEC, twin, model, features, early_stopped=True)
    return SparkFit(frames, features, validation, model, candidate)


def test_the_candidate_is_the_pandas_engines_kind_with_its_hyperparameters(spark_fit):
    candidate = spark_fit.candidate

    assert isinstance(candidate, FittedCandidate)
    assert isinstance(candidate.estimator, XGBClassifier)
    pandas_estimator = build_estimator(
        "xgboost", STOPPING, spark_fit.windows.validation_train[LABEL], dict(SPEC.overrides), True
    )
    expected = estimator_params("xgboost", pandas_estimator)
    assert candidate.params.pop("num_workers") == 2  # the task slots of local[2], not 8
    assert candidate.params == expected


def test_early_stopping_watches_validation_and_the_booster_keeps_the_best_rounds(spark_fit):
    candidate = spark_fit.candidate
    validation_loss = candidate.curves["validation_logloss"]

    assert candidate.best_rounds < STOPPING.n_estimators
    assert candidate.best_rounds == int(np.argmin(validation_loss)) + 1
    assert len(validation_loss) == candidate.best_rounds + STOPPING.early_stopping_rounds
    assert len(candidate.curves["train_logloss"]) == len(validation_loss)
    booster = candidate.estimator.get_booster()
    assert booster.num_boosted_rounds() == candidate.best_rounds
    assert booster.feature_names == list(spark_fit.features)


def test_sparks_transform_agrees_with_the_cut_booster(spark_fit):
    features = spark_fit.features
    transformed = spark_fit.model.transform(assemble_features(spark_fit.validation_rows, features))
    rows = transformed.select("row", vector_to_array("probability")[1].alias("p")).toPandas()
    from_spark = rows.sort_values("row")["p"].to_numpy()

    scorer = Scorer.from_fitted(spark_fit.candidate, features)
    from_booster = scorer.predict_proba(spark_fit.windows.validation)

    np.testing.assert_allclose(from_spark, from_booster, rtol=0, atol=1e-6)
    # Every tree of the Spark model's booster would score otherwise: why it is cut.
    every_tree = spark_fit.model.get_booster().inplace_predict(
        spark_fit.windows.validation[list(features)].to_numpy(np.float32)
    )
    assert np.abs(every_tree - from_booster).max() > 0.01


def test_the_logged_pyfunc_model_predicts_what_the_booster_predicts(spark_fit):
    features, validation = spark_fit.features, spark_fit.windows.validation
    candidate = spark_fit.candidate
    choice = tune_threshold(
        candidate.estimator,
        validation[list(features)].to_numpy(np.float32),
        validation[LABEL].to_numpy(),
        validation[DATA.columns.amount_column].to_numpy(),
        review_cost=10.0,
    )
    scorer = Scorer.from_fitted(candidate, features)
    with mlflow.start_run():
        example = PandasEngine().example(validation, features)
        info = _log_model(scorer, choice.threshold, example, TrainConfig(data=DATA))

    model = mlflow.pyfunc.load_model(info.model_uri)
    predicted = model.predict(validation[list(features)])

    expected = scorer.predict_proba(validation)
    assert np.array_equal(predicted[PROBABILITY_COLUMN].to_numpy(), expected)
    assert np.array_equal(predicted[DECISION_COLUMN].to_numpy(), expected >= choice.threshold)
    assert model.metadata.signature == model_signature(features)
    assert model.model_config["threshold"] == choice.threshold
    assert feature_importance(scorer).max() > 0  # the named booster's gains are found


def test_validation_metrics_are_reasonable_and_those_of_the_pandas_engine(spark_fit):
    features, frames = spark_fit.features, spark_fit.windows
    transformed = spark_fit.model.transform(assemble_features(spark_fit.validation_rows, features))
    scored = transformed.withColumn("score", vector_to_array("probability")[1])

    spark_metrics = metrics.fraud_metrics(scored, LABEL, "score")

    assert spark_metrics["roc_auc"] > 0.8
    pandas_fit = fit_candidate(
        SPEC, STOPPING, features, frames.validation_train, LABEL, validation=frames.validation
    )
    pandas_scores = pandas_fit.predict_proba(frames.validation, features)
    pandas_metrics = fraud_metrics(frames.validation[LABEL], pandas_scores)
    assert spark_metrics["average_precision"] == pytest.approx(
        pandas_metrics["average_precision"], abs=0.01
    )


def test_a_refit_boosts_the_rounds_it_is_given_without_validation(spark, windows):
    frames, features = windows
    training = spark_rows(spark, frames.training, features)

    refit = fit_spark_candidate(SPEC, STOPPING, features, training, LABEL, rounds=7)

    assert refit.best_rounds == 7
    assert refit.estimator.get_booster().num_boosted_rounds() == 7
    assert list(refit.curves) == ["train_logloss"]
    assert len(refit.curves["train_logloss"]) == 7


def test_a_small_validation_window_gets_fewer_workers_not_a_failure(spark, windows):
    """With two workers for one validation row, one worker would have none and XGBoost would
    fail ("Inconsistent max_bin"); under 100 rows per worker, fewer workers train."""
    frames, features = windows
    training = spark_rows(spark, frames.validation_train, features)
    validation = spark_rows(spark, frames.validation.head(1), features)
    config = ModelConfig(grid="none", n_estimators=5, early_stopping_rounds=2, n_jobs=1)

    fitted = fit_spark_candidate(SPEC, config, features, training, LABEL, validation)

    assert fitted.params["num_workers"] == 1
    assert len(fitted.curves["validation_logloss"]) >= fitted.best_rounds


def test_the_balanced_class_weight_is_counted_by_spark(spark, windows):
    frames, features = windows
    training = spark_rows(spark, frames.training, features)
    balanced = ModelConfig(scale_pos_weight=0)

    twin = pandas_twin(SPEC, balanced, training, LABEL)

    expected = build_estimator("xgboost", balanced, frames.training[LABEL])
    assert twin.scale_pos_weight == pytest.approx(expected.scale_pos_weight)
    assert twin.scale_pos_weight > 10


def test_other_kinds_and_missing_columns_are_refused(spark, windows):
    frames, features = windows
    training = spark_rows(spark, frames.training, features)

    baseline = CandidateSpec("logistic_regression")
    with pytest.raises(PipelineError, match="XGBoost candidates only, not 'logistic_regression'"):
        fit_spark_candidate(baseline, STOPPING, features, training, LABEL)
    with pytest.raises(DataError, match=r"no column\(s\) NOT_A_FEATURE"):
        fit_spark_candidate(SPEC, STOPPING, [*features, "NOT_A_FEATURE"], training, LABEL)
    assert training.filter(sf.col(LABEL) == 1).count() > 0  # the rows themselves were fine
