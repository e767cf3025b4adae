import numpy as np
import pytest

from fraud_detection.config import (
    MODEL_KINDS,
    ModelConfig,
)
from fraud_detection.data.features import (
    FEATURE_COLUMNS,
    add_features,
)
from fraud_detection.modelling.estimators import (
    CandidateSpec,
    Scorer,
    build_estimator,
    estimator_params,
    feature_importance,
    fit_candidate,
)
from tests.support.pipeline import tiny_simulation

CONFIG = ModelConfig(n_estimators=20, n_jobs=1)


@pytest.fixture(scope="module")
def featurised():
    return add_features(tiny_simulation(seed=4, n_days=40))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_kind_fits_scores_and_reloads_identically(kind, featurised, tmp_path):
    scorer = Scorer.from_fitted(
        fit_candidate(CandidateSpec(kind), CONFIG, FEATURE_COLUMNS, featurised, "TX_FRAUD"),
        FEATURE_COLUMNS,
    )
    probabilities = scorer.predict_proba(featurised)
    assert probabilities.shape == (len(featurised),)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    # A fitted model separates the simulated frauds far better than chance on its own data.
    assert probabilities[featurised["TX_FRAUD"] == 1].mean() > 5 * probabilities.mean()

    reloaded = Scorer.load(scorer.save(tmp_path), kind, FEATURE_COLUMNS)
    np.testing.assert_allclose(reloaded.predict_proba(featurised), probabilities, rtol=1e-6)
    importance = feature_importance(scorer)  # the model card's plot
    assert sorted(importance.index) == sorted(FEATURE_COLUMNS)
    assert (importance >= 0).all() and importance.sum() > 0


def test_xgboost_takes_its_settings_from_the_config(featurised):
    config = ModelConfig(n_estimators=7, max_depth=2, learning_rate=0.2, max_bin=64)
    params = build_estimator("xgboost", config, featurised["TX_FRAUD"]).get_params()
    assert {key: params[key] for key in ("n_estimators", "max_depth", "learning_rate")} == {
        "n_estimators": 7,
        "max_depth": 2,
        "learning_rate": 0.2,
    }
    assert params["max_bin"] == 64
    assert params["tree_method"] == "hist"


def test_random_forest_uses_the_books_baseline_settings(featurised):
    estimator = build_estimator("random_forest", ModelConfig(max_depth=3), featurised["TX_FRAUD"])
    params = estimator_params("random_forest", estimator)
    # The book's chapter 3.4: 100 unpruned trees, whatever the XGBoost depth says.
    assert params["n_estimators"] == 100
    assert "max_depth" not in params  # None: grown until pure
    assert params["random_state"] == 0


def test_recorded_params_of_a_pipeline_are_its_steps_settings(featurised):
    estimator = build_estimator("logistic_regression", CONFIG, featurised["TX_FRAUD"])
    params = estimator_params("logistic_regression", estimator)
    assert params["logisticregression__C"] == 1.0
    assert all("__" in key for key in params)


def test_unknown_kind_is_refused(featurised):
    with pytest.raises(ValueError, match="unknown model kind 'svm'"):
        build_estimator("svm", CONFIG, featurised["TX_FRAUD"])
