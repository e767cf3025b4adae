"""Evaluate's measurements on Spark (``spark.evaluation``) against the pandas engine's
(``modelling.evaluation``), on the very same rows: one model, one champion that cannot score."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark", reason='the Spark engine needs PySpark: pip install -e ".[spark]"')

from fraud_detection.config import ModelConfig, TrainConfig
from fraud_detection.contract import CHAMPION_COMPARISON_TAG
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.engine import PandasEngine, TestData
from fraud_detection.modelling.estimators import CandidateSpec, Scorer, fit_candidate
from fraud_detection.modelling.evaluation import ChampionVersion, ModelUnderTest
from fraud_detection.monitoring.drift import bin_shares, population_stability_index
from fraud_detection.monitoring.reference import score_reference
from fraud_detection.spark.engine import SparkEngine
from fraud_detection.spark.evaluation import PLOTS_NOTE
from fraud_detection.spark.evaluation import score_reference as spark_score_reference
from fraud_detection.spark.profile import QUANTILE_ACCURACY
from fraud_detection.steps.evaluate import check_gate
from fraud_detection.steps.train import _log_model
from tests.support.pipeline import LENIENT_GATE, MODEL_NAME, SMALL_DATA
from tests.support.quantiles import within_rank_error
from tests.support.small_model import THRESHOLD, SmallModel, small_model

pytestmark = pytest.mark.minutes  # scheduled first (tests/conftest.py)

COLUMNS = SMALL_DATA.columns


@pytest.fixture(scope="module")
def model() -> SmallModel:
    return small_model()


def _log_on_fewer_features(model: SmallModel, count: int) -> str:
    """A model of the first ``count`` features (fitted on the validation rows: any model does);
    its model id."""
    features = tuple(model.features[:count])
    fitted = fit_candidate(
        CandidateSpec("xgboost"),
        ModelConfig(grid="none", n_estimators=10, n_jobs=1),
        features,
        model.validation,
        COLUMNS.label_column,
    )
    scorer = Scorer.from_fitted(fitted, features)
    with mlflow.start_run():
        example = PandasEngine().example(model.validation, features)
        return _log_model(scorer, THRESHOLD, example, TrainConfig(data=SMALL_DATA)).model_id


def test_both_engines_measure_the_same_rows_alike_and_refuse_the_same_champion(
    spark, experiment, model
):
    # The champion needs features the candidate does not have: no comparison on either engine.
    version = mlflow.register_model(model.log(), MODEL_NAME)
    champion = ChampionVersion(MODEL_NAME, str(version.version), version.model_id)
    candidate = ModelUnderTest.load(_log_on_fewer_features(model, 6))
    wanted = [
        *model.features,
        COLUMNS.label_column,
        COLUMNS.amount_column,
        DAY_COLUMN,
        COLUMNS.customer_column,
    ]
    rows = model.test[list(dict.fromkeys(wanted))]
    frames = {"pandas": rows, "spark": spark.createDataFrame(rows)}
    measured, tags = {}, {}
    for engine in (PandasEngine(), SparkEngine(spark)):
        with mlflow.start_run() as run:
            test = TestData("small data", "", None, frames[engine.name])
            measured[engine.name] = engine.evaluate_window(test, SMALL_DATA, candidate, champion)
        tags[engine.name] = mlflow.get_run(run.info.run_id).data.tags

    expected, actual = measured["pandas"], measured["spark"]
    assert sorted(actual.candidate.metrics) == sorted(expected.candidate.metrics)
    for name, value in expected.candidate.metrics.items():
        # The same rows and scores: only the order of float sums differs.
        assert actual.candidate.metrics[name] == pytest.approx(value, rel=1e-12), name
    for engine, result in measured.items():
        assert result.champion.scored is None and result.champion_metrics == {}, engine
        assert tags[engine][CHAMPION_COMPARISON_TAG].startswith("unavailable: "), engine
        gate = check_gate(result.candidate, {}, LENIENT_GATE, result.champion)
        assert not {c.name: c.passed for c in gate}["beats_champion"], engine
    assert "no column(s) " + model.features[6] in actual.champion.problem
    assert list(actual.figures) == [
        "test_feature_importance.png",
        "test_mean_abs_contribution.png",
    ]
    # The reason codes' global view: the pandas engine's numbers, summed in another order.
    assert len(actual.contributions) == len(expected.contributions) == 6
    assert dict(actual.contributions) == pytest.approx(dict(expected.contributions), rel=1e-9)
    assert actual.plots_note == PLOTS_NOTE and expected.plots_note == ""
    # The monitor's score reference: the same rows and alerts; the bins from Spark's quantile
    # sketch (tests/spark/test_profile.py checks its edges; here, as many, and near).
    reference, expected_reference = actual.score_reference, expected.score_reference
    assert reference.rows == expected_reference.rows == len(rows)
    assert reference.alert_rate == expected_reference.alert_rate  # this weak model: none
    assert reference.threshold == expected_reference.threshold == THRESHOLD
    assert len(reference.score.edges) == len(expected_reference.score.edges)
    psi = population_stability_index(expected_reference.score.shares, reference.score.shares)
    assert psi < 0.01


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.5])
def test_the_score_reference_from_aggregates_equals_the_pandas_engines(spark, threshold):
    """Scores with ties, a mass at one value and a tail: Spark's rows and alert rate are those
    ``monitoring.reference.score_reference`` takes from the values themselves, its edges keep
    the quantile sketch's promise and its shares are exact counts at those edges."""
    generator = np.random.default_rng(3)
    scores = np.r_[np.full(2_000, 0.001), generator.beta(0.4, 6.0, 3_000), np.full(50, 0.5)]
    frame = spark.createDataFrame(pd.DataFrame({"score": scores}))
    reference = spark_score_reference(frame, "score", threshold)
    expected = score_reference(scores, threshold)
    assert reference.rows == expected.rows == scores.size
    assert reference.alert_rate == expected.alert_rate == np.mean(scores >= threshold)
    # Edges within the sketch's promise; the rows per bin counted exactly at Spark's own edges.
    ordered, edges = np.sort(scores), reference.score.edges
    assert len(edges) == len(expected.score.edges)
    assert all(within_rank_error(edge, ordered, 1 / QUANTILE_ACCURACY) for edge in edges)
    assert reference.score.shares == pytest.approx(bin_shares(scores, edges), abs=1e-12)
