"""Reason codes: each feature's signed contribution to a row's margin, and the top k of them.

Contributions plus bias must equal the model's margin (log-odds) for every row. Both sums are
float32 inside the models (XGBoost adds its trees in float32; the logistic regression fitted on
float32 features keeps float32 coefficients), so they agree within rtol 1e-5 and atol 1e-5
(measured: at most 1.3e-5 on margins up to 12 for 300 trees, 4e-6 for the baseline).
"""

from __future__ import annotations

from collections.abc import Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from fraud_detection.config import ModelConfig
from fraud_detection.data.features import FEATURE_COLUMNS, add_features
from fraud_detection.modelling.estimators import (
    CandidateSpec,
    ExplanationError,
    Scorer,
    fit_candidate,
)
from fraud_detection.modelling.pyfunc import (
    DECISION_COLUMN,
    PROBABILITY_COLUMN,
    REASON_BIAS_COLUMN,
    reason_column_names,
    reason_contribution_column,
    reason_feature_column,
    reasons_columns,
)
from tests.support.pipeline import MODEL_NAME, TwoVersionStore, tiny_simulation

MARGIN_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
KINDS = ("xgboost", "logistic_regression")


@pytest.fixture(scope="module")
def featurised() -> pd.DataFrame:
    return add_features(tiny_simulation(seed=4, n_days=40))


@pytest.fixture(scope="module")
def values(featurised: pd.DataFrame) -> np.ndarray:
    return featurised[list(FEATURE_COLUMNS)].to_numpy(np.float64)


def _scorer(kind: str, featurised: pd.DataFrame) -> Scorer:
    config = ModelConfig(n_estimators=40, n_jobs=1)
    fitted = fit_candidate(CandidateSpec(kind), config, FEATURE_COLUMNS, featurised, "TX_FRAUD")
    return Scorer.from_fitted(fitted, FEATURE_COLUMNS)


@pytest.mark.parametrize("kind", KINDS)
def test_contributions_plus_bias_are_the_margin_of_every_row(kind, featurised, values):
    scorer = _scorer(kind, featurised)
    contributions, bias = scorer.contributions_values(values)
    assert contributions.shape == values.shape and bias.shape == (len(values),)
    margin = scorer.margin_values(values)
    np.testing.assert_allclose(contributions.sum(axis=1) + bias, margin, **MARGIN_TOLERANCE)
    # The margin is the score's own: its logistic is the fraud probability.
    np.testing.assert_allclose(
        1 / (1 + np.exp(-margin)), scorer.predict_proba_values(values), atol=1e-6
    )
    # Features do move scores: not everything sits in the bias.
    assert np.abs(contributions).sum(axis=1).mean() > 0.1


def test_a_forest_has_no_contributions(featurised, values):
    with pytest.raises(ExplanationError, match="random_forest gives no per-feature"):
        _scorer("random_forest", featurised).contributions_values(values[:2])


def test_top_k_orders_by_absolute_contribution_and_keeps_signs():
    contributions = np.array([[0.1, -2.0, 0.5, 0.0], [3.0, 0.2, -0.2, -4.0]])
    columns = reasons_columns(contributions, np.array([-1.0, -2.0]), ["a", "b", "c", "d"], 3)
    assert list(columns) == reason_column_names(3)
    assert list(columns) == [
        "reason_1_feature",
        "reason_1_contribution",
        "reason_2_feature",
        "reason_2_contribution",
        "reason_3_feature",
        "reason_3_contribution",
        "reason_bias",
    ]
    features = [list(columns[reason_feature_column(rank)]) for rank in (1, 2, 3)]
    assert features == [["b", "d"], ["c", "a"], ["a", "b"]]  # ties (0.2, -0.2): feature order
    np.testing.assert_array_equal(columns[reason_contribution_column(1)], [-2.0, -4.0])
    np.testing.assert_array_equal(columns[reason_contribution_column(2)], [0.5, 3.0])
    np.testing.assert_array_equal(columns[reason_contribution_column(3)], [0.1, 0.2])
    np.testing.assert_array_equal(columns[REASON_BIAS_COLUMN], [-1.0, -2.0])
    assert reasons_columns(contributions, np.zeros(2), ["a", "b", "c", "d"], 0) == {}


@pytest.fixture(scope="module")
def logged(two_version_store: TwoVersionStore) -> Iterator[dict[str, mlflow.pyfunc.PyFuncModel]]:
    """The two registered models of the shared store: v1 logistic regression, v2 XGBoost."""
    uri = f"sqlite:///{two_version_store.database}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            models = {
                version: mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
                for version in ("1", "2")
            }
        finally:
            mlflow.set_tracking_uri(None)
    yield {model.model_config["model_kind"]: model for model in models.values()}


@pytest.mark.parametrize("kind", KINDS)
def test_the_logged_model_answers_reasons_through_predict_params(kind, logged, featurised):
    model = logged[kind]
    rows = featurised[list(FEATURE_COLUMNS)].tail(200)
    plain = model.predict(rows)
    explained = model.predict(rows, params={"reasons": 3})
    assert list(explained.columns) == [PROBABILITY_COLUMN, DECISION_COLUMN, *reason_column_names(3)]
    pd.testing.assert_frame_equal(explained[plain.columns], plain)
    # The reasons are the top 3 of the full decomposition, whose sum is the margin.
    scorer = model.unwrap_python_model().scorer
    contributions, bias = scorer.contributions_values(rows.to_numpy(np.float64))
    margin = np.log(plain[PROBABILITY_COLUMN] / (1 - plain[PROBABILITY_COLUMN]))
    np.testing.assert_allclose(contributions.sum(axis=1) + bias, margin, rtol=1e-4, atol=1e-4)
    top = np.sort(np.abs(contributions), axis=1)[:, ::-1][:, :3]
    shown = np.abs(explained[[reason_contribution_column(i) for i in (1, 2, 3)]].to_numpy())
    np.testing.assert_array_equal(shown, top)
    np.testing.assert_array_equal(explained[REASON_BIAS_COLUMN], bias)
    for rank in (1, 2, 3):
        named = explained[reason_feature_column(rank)].map(list(FEATURE_COLUMNS).index)
        picked = contributions[np.arange(len(rows)), named.to_numpy()]
        np.testing.assert_array_equal(explained[reason_contribution_column(rank)], picked)


def test_zero_reasons_is_todays_answer_exactly(logged, featurised):
    model = logged["xgboost"]
    rows = featurised[list(FEATURE_COLUMNS)].tail(20)
    pd.testing.assert_frame_equal(model.predict(rows, params={"reasons": 0}), model.predict(rows))
    assert list(model.predict(rows).columns) == [PROBABILITY_COLUMN, DECISION_COLUMN]


def test_the_signature_declares_the_parameter(logged):
    (spec,) = logged["xgboost"].metadata.get_params_schema().params
    assert (spec.name, spec.dtype.name, spec.default) == ("reasons", "long", 0)


@pytest.mark.parametrize("bad", [-1, len(FEATURE_COLUMNS) + 1, 2.5, "3", True])
def test_a_bad_number_of_reasons_is_refused_naming_the_parameter(bad, logged, featurised):
    rows = featurised[list(FEATURE_COLUMNS)].tail(2)
    with pytest.raises(MlflowException, match="reasons") as raised:
        logged["xgboost"].predict(rows, params={"reasons": bad})
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_every_feature_may_be_asked_for(logged, featurised):
    rows = featurised[list(FEATURE_COLUMNS)].tail(3)
    explained = logged["logistic_regression"].predict(
        rows, params={"reasons": len(FEATURE_COLUMNS)}
    )
    named = explained[[reason_feature_column(i + 1) for i in range(len(FEATURE_COLUMNS))]]
    assert all(sorted(row) == sorted(FEATURE_COLUMNS) for row in named.to_numpy().tolist())


def test_the_global_view_is_the_mean_absolute_contribution(logged, featurised):
    from fraud_detection.modelling.evaluation import ModelUnderTest, mean_contributions

    rows = featurised[list(FEATURE_COLUMNS)].tail(100)
    for kind, model in logged.items():
        means = mean_contributions(ModelUnderTest("unused", model), rows)
        contributions, _ = model.unwrap_python_model().scorer.contributions_values(
            rows.to_numpy(np.float64)
        )
        expected = pd.Series(np.abs(contributions).mean(axis=0), index=list(FEATURE_COLUMNS))
        pd.testing.assert_series_equal(means, expected.sort_values(), check_names=False)
        assert means.iloc[-1] > 0, kind
