"""engine=spark through the steps: train, evaluate and register in-process on a local session,
to a @champion that the pandas pyfunc scores, and the monitor watches, as any other model."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

pytest.importorskip("pyspark", reason='the Spark engine needs PySpark: pip install -e ".[spark]"')

from fraud_detection.config import (
    CHAMPION_ALIAS,
    ENGINES,
    BatchConfig,
    ConfigError,
    DataConfig,
    EvaluateConfig,
    GateConfig,
    ModelConfig,
    MonitorConfig,
    RegisterConfig,
    SplitConfig,
    TrainConfig,
)
from fraud_detection.contract import (
    CHAMPION_COMPARISON_TAG,
    CHAMPION_PREFIX,
    MODEL_CARD_MARKDOWN,
    MODEL_ID_TAG,
    MONITOR_SCORE_REFERENCE_TAG,
    REFERENCE_PROFILE_FILE,
    TEST_PREFIX,
    Step,
    read_score_reference,
)
from fraud_detection.data.simulator import simulate_transactions
from fraud_detection.engine import PandasEngine
from fraud_detection.errors import LineageError
from fraud_detection.modelling.estimators import CandidateSpec
from fraud_detection.modelling.evaluation import ModelUnderTest
from fraud_detection.modelling.pyfunc import DECISION_COLUMN, PROBABILITY_COLUMN
from fraud_detection.monitoring.drift import population_stability_index
from fraud_detection.serving.batch import score_batch
from fraud_detection.spark.engine import SparkEngine
from fraud_detection.steps.evaluate import evaluate
from fraud_detection.steps.monitor import monitor
from fraud_detection.steps.register import register
from fraud_detection.steps.train import train
from tests.support.pipeline import MODEL_NAME, latest_run, tiny_simulation
from tests.support.small_model import SmallModel, small_model

pytestmark = pytest.mark.minutes  # scheduled first (tests/conftest.py)

# Tiny on purpose (the machine is shared): 30 days of 150 cards, short windows (seed 4: frauds
# in every window, 4 of them in the test window). Any model is promoted: the round trip is
# tested, not the model's quality.
DATA = DataConfig(n_customers=150, n_terminals=300, n_days=30, seed=4, feature_windows="1d,3d")
SPLIT = SplitConfig(train_days="5", delay_days="2", test_days="4")
ANY_MODEL = GateConfig(min_roc_auc=0.0, min_average_precision=0.0)
ID = DATA.columns.id_column
NO_ALARM = {
    "psi_threshold": 1e9,
    "score_psi_threshold": 1e9,
    "alert_rate_ratio": math.inf,
    "min_ap_ratio": 0.0,
}
MODEL = ModelConfig(
    model_kinds="xgboost,logistic_regression",
    grid="none",
    n_estimators=30,
    early_stopping_rounds=10,
    n_jobs=1,
)


@pytest.fixture(scope="module")
def model() -> SmallModel:
    return small_model()


@contextlib.contextmanager
def driver_rows() -> Iterator[list[int]]:
    """The rows each ``collect`` of a Spark DataFrame brings to the driver while in the block
    (``first``, ``take`` and ``head`` go through it); every other way of moving rows to the
    driver (``toPandas``, Arrow, iterators) fails the test."""
    from pyspark.sql.classic.dataframe import DataFrame

    collected: list[int] = []
    original = DataFrame.collect

    def collect(self):
        rows = original(self)
        collected.append(len(rows))
        return rows

    def refuse(self, *args, **kwargs):
        raise AssertionError("rows collected to the driver")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DataFrame, "collect", collect)
        for name in ("toPandas", "toArrow", "toLocalIterator", "_collect_as_arrow", "tail"):
            patch.setattr(DataFrame, name, refuse)
        yield collected


def test_spark_train_evaluate_register_reaches_a_champion_the_pandas_pyfunc_scores(
    spark, experiment, caplog, tmp_path
):
    with caplog.at_level(logging.WARNING, logger="fraud_detection.spark.engine"):
        train(TrainConfig(data=DATA, split=SPLIT, model=MODEL, engine="spark"))
    skipped = [r.getMessage() for r in caplog.records if "skipping model kinds" in r.getMessage()]
    assert skipped == [
        "engine=spark: skipping model kinds without a Spark implementation: logistic_regression"
    ]
    train_run = latest_run(Step.TRAIN)
    assert train_run.data.params["engine"] == "spark"
    assert train_run.data.params["best_candidate"] == "xgboost"
    assert 0.0 < train_run.data.metrics["validation_average_precision"] <= 1.0

    with driver_rows() as collected:
        evaluate(EvaluateConfig(run_id=train_run.info.run_id, gate=ANY_MODEL, engine="spark"))
    evaluate_run = latest_run(Step.EVALUATE)
    metrics = evaluate_run.data.metrics
    # Nothing but aggregates reached the driver: at most one row per shuffle partition or day.
    assert collected and max(collected) <= 4 < metrics["test_example_count"] / 100
    _assert_same_metrics_as_the_pandas_engine(evaluate_run)
    model_metrics = MlflowClient().get_logged_model(evaluate_run.data.tags[MODEL_ID_TAG]).metrics
    assert "test_roc_auc" in {metric.key for metric in model_metrics}
    card = mlflow.artifacts.load_text(f"runs:/{evaluate_run.info.run_id}/{MODEL_CARD_MARKDOWN}")
    assert "draws the feature importance and the mean absolute contributions only" in card
    assert "test_feature_importance.png" in card and "test_mean_abs_contribution.png" in card
    register(RegisterConfig(run_id=evaluate_run.info.run_id))

    # Evaluated again, the model meets itself as @champion: scored on Spark, the same figures.
    evaluate(EvaluateConfig(run_id=train_run.info.run_id, gate=ANY_MODEL, engine="spark"))
    again = latest_run(Step.EVALUATE).data
    assert again.tags[CHAMPION_COMPARISON_TAG] == "scored"
    test_metrics = _named(again.metrics, TEST_PREFIX)
    champion_metrics = _named(again.metrics, CHAMPION_PREFIX)
    assert champion_metrics == pytest.approx(test_metrics, rel=1e-12)
    assert len(test_metrics) == 14

    champion = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}")
    settings = champion.model_config
    # It carries the monitor's reference profile, built by Spark (tests/spark/test_profile.py).
    profile = json.loads(
        mlflow.artifacts.load_text(
            f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}/artifacts/{REFERENCE_PROFILE_FILE}"
        )
    )
    assert list(profile["features"]) == list(settings["features"])
    assert profile["threshold"] == settings["threshold"]
    assert profile["training_rows"] == train_run.data.metrics["training_rows"]
    rows = PandasEngine().test_window(DATA, SPLIT).rows
    output = champion.predict(rows[list(settings["features"])])
    probabilities = output[PROBABILITY_COLUMN].to_numpy()
    assert len(output) == len(rows)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    expected = (probabilities >= settings["threshold"]).astype(np.int64)
    np.testing.assert_array_equal(output[DECISION_COLUMN].to_numpy(), expected)

    _assert_monitored_as_any_model(tmp_path, evaluate_run)


def _assert_monitored_as_any_model(tmp_path: Path, evaluate_run: Run) -> None:
    """``monitor`` watches the Spark-trained champion as any other model: four weeks after its
    test window, scored by ``serve.py batch``'s code, each compared with the profile and the
    score reference Spark computed. (Quiet weeks on this tiny world are too noisy to promise no
    alarm; that the Spark profile and reference equal the pandas engine's, whose quiet weeks
    do not alarm, is tests/spark/test_profile.py and _assert_same_metrics_as_the_pandas_engine.)"""
    champion_uri = f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}"
    world = simulate_transactions(replace(DATA, n_days=DATA.n_days + 28).simulator())
    # From five days before the data's end: the history the features need (3d window, 2d delay).
    later = world[world[DATA.columns.timestamp_column] >= pd.Timestamp("2018-04-26")]
    source, scored = tmp_path / "later.csv", tmp_path / "scored.csv"
    later.to_csv(source, index=False)
    score_batch(BatchConfig(model_uri=champion_uri, input=str(source), output=str(scored)))

    # Thresholds wide open: the tiny model alerts on no row in some weeks (ratio 0).
    monitor(MonitorConfig(scored=str(scored), model_uri=champion_uri, **NO_ALARM))

    parent = latest_run(Step.MONITOR)
    assert parent.info.status == "FINISHED"
    assert evaluate_run.info.run_id in parent.data.tags[MONITOR_SCORE_REFERENCE_TAG]
    history = MlflowClient().get_metric_history(parent.info.run_id, "score_psi")
    assert len(history) == 4  # four weekly windows, each compared with the profile
    assert all(np.isfinite(point.value) for point in history)


def _named(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}


def _assert_same_metrics_as_the_pandas_engine(evaluate_run: Run) -> None:
    """The pandas engine's evaluation (``mlflow.models.evaluate``) of the same model on its own
    test window logs the same metric names, and values equal within float rounding (relative
    1e-9: the engines' features agree to that, and sums of amounts differ in order only); the
    monitor's score reference (the whole test window) is the same too."""
    engine = PandasEngine()
    with mlflow.start_run(run_name="pandas engine, same model"):
        measured = engine.evaluate_window(
            engine.test_window(DATA, SPLIT),
            DATA,
            ModelUnderTest.load(evaluate_run.data.tags[MODEL_ID_TAG]),
            None,
        )
    expected, spark_metrics = measured.candidate.metrics, evaluate_run.data.metrics
    assert sorted(spark_metrics) == sorted(expected)
    for name, value in expected.items():
        assert spark_metrics[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    reference = read_score_reference(evaluate_run.info.run_id)
    pandas_reference = measured.score_reference
    assert reference.rows == pandas_reference.rows > spark_metrics["test_example_count"]
    assert reference.alert_rate == pandas_reference.alert_rate
    # Bins from Spark's quantile sketch (its promise: tests/spark/test_profile.py).
    assert len(reference.score.edges) == len(pandas_reference.score.edges)
    shares = (pandas_reference.score.shares, reference.score.shares)
    assert population_stability_index(*shares) < 0.01


def test_spark_engine_refuses_a_sweep_with_no_xgboost(spark):
    with pytest.raises(ConfigError, match=r"engine=spark trains xgboost only.*random_forest"):
        SparkEngine(spark).candidate_specs([CandidateSpec("random_forest")])


def test_a_run_trained_on_pandas_is_not_evaluated_on_spark(spark, experiment):
    train(TrainConfig(data=DATA, split=SPLIT, model=MODEL))
    run_id = latest_run(Step.TRAIN).info.run_id
    with pytest.raises(LineageError, match="ran with engine=pandas: evaluate it with engine"):
        evaluate(EvaluateConfig(run_id=run_id, engine="spark"))
    assert PandasEngine().name == latest_run(Step.TRAIN).data.params["engine"]


def test_serve_batch_with_engine_spark_computes_features_and_scores_as_pandas(
    spark, model, tmp_path
):
    uri = model.log()
    source = tmp_path / "raw.parquet"
    raw = tiny_simulation(seed=8, n_days=40).drop(columns="TX_FRAUD_SCENARIO")
    raw.to_parquet(source, index=False)
    outputs = {engine: tmp_path / f"{engine}.parquet" for engine in ENGINES}

    for engine, output in outputs.items():
        score_batch(
            BatchConfig(model_uri=uri, input=str(source), output=str(output), engine=engine)
        )

    expected, actual = (pd.read_parquet(outputs[engine]) for engine in ENGINES)
    assert outputs["spark"].is_dir()  # written by the executors
    assert list(actual.columns) == list(expected.columns)
    actual = actual.set_index(ID).loc[expected[ID]].reset_index()
    np.testing.assert_allclose(
        actual[PROBABILITY_COLUMN], expected[PROBABILITY_COLUMN], rtol=1e-5, atol=1e-9
    )
    assert actual[DECISION_COLUMN].sum() == expected[DECISION_COLUMN].sum()
