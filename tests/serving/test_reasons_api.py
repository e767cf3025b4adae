"""Reason codes through ``serve.py api``: ``"params": {"reasons": k}`` on /invocations answers
what the logged pyfunc answers for ``params={"reasons": k}``, columns and values."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest

from fraud_detection.config import ConfigError, ModelConfig
from fraud_detection.data.features import FEATURE_COLUMNS, add_features
from fraud_detection.modelling.estimators import CandidateSpec, Scorer, fit_candidate
from fraud_detection.modelling.pyfunc import (
    DECISION_COLUMN,
    PROBABILITY_COLUMN,
    FraudDetector,
    reason_column_names,
)
from fraud_detection.serving import fast_contributions
from fraud_detection.serving.api import create_app
from fraud_detection.serving.batch import check_reasons
from fraud_detection.serving.fast_path import SMALL_BATCH_ROWS
from fraud_detection.serving.follower import ModelFollower, ServedModel, requested_reasons
from fraud_detection.serving.protocol import InputColumn, InputSchema, RequestError
from tests.serving.test_api import JSON_HEADERS
from tests.support.asgi import call
from tests.support.pipeline import MODEL_NAME, TwoVersionStore, tiny_simulation
from tests.support.reasons import assert_reasons_agree, contributions_tolerance

FEATURES = len(FEATURE_COLUMNS)


@pytest.fixture(scope="module")
def feature_rows() -> pd.DataFrame:
    return add_features(tiny_simulation(seed=3, n_days=35))[list(FEATURE_COLUMNS)].tail(40)


@pytest.fixture(scope="module")
def followers(two_version_store: TwoVersionStore) -> Iterator[dict[str, ModelFollower]]:
    """Both registered versions loaded as the service loads them, by model kind."""
    uri = f"sqlite:///{two_version_store.database}"
    loaded = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            for version in ("1", "2"):
                follower = ModelFollower(f"models:/{MODEL_NAME}/{version}", poll_seconds=0)
                follower.load()
                loaded.append(follower)
        finally:
            mlflow.set_tracking_uri(None)
    yield {follower.current.config["model_kind"]: follower for follower in loaded}
    for follower in loaded:
        follower.close()


def _request(rows: pd.DataFrame, params: object = None) -> bytes:
    payload: dict = {"dataframe_split": rows.to_dict(orient="split")}
    if params is not None:
        payload["params"] = params
    return json.dumps(payload).encode()


def _invoke(follower: ModelFollower, body: bytes) -> tuple[int, bytes]:
    app = create_app(follower, max_body_bytes=1 << 20)
    status, _, content = call(app, "POST", "/invocations", body, JSON_HEADERS)
    return status, content


@pytest.mark.parametrize("kind", ["xgboost", "logistic_regression"])
# One row: XGBoost's NumPy tree walk and NumPy TreeSHAP (contributions within its tolerance);
# 40 rows: XGBoost itself, the same numbers as the pyfunc.
@pytest.mark.parametrize("rows", [1, 40])
def test_the_service_answers_the_pyfuncs_reasons(kind, rows, followers, feature_rows):
    follower = followers[kind]
    sent = feature_rows.tail(rows)
    status, content = _invoke(follower, _request(sent, {"reasons": 3}))
    assert status == 200
    served = pd.DataFrame(json.loads(content)["predictions"])
    model = mlflow.pyfunc.load_model(follower.current.directory)
    expected = model.predict(sent, params={"reasons": 3})
    assert list(served.columns) == [PROBABILITY_COLUMN, DECISION_COLUMN, *reason_column_names(3)]
    assert list(served.columns) == list(expected.columns)
    if kind == "xgboost" and rows <= SMALL_BATCH_ROWS:
        atol = contributions_tolerance(follower.current.directory)
        assert_reasons_agree(served, expected, 3, atol)
        return
    for name in served.columns:
        if served[name].dtype.kind in "fi":
            # BLAS may round a row-major matrix (parsed from JSON) in the last bits differently.
            np.testing.assert_allclose(served[name], expected[name], rtol=1e-6, atol=1e-9)
        else:
            assert served[name].tolist() == expected[name].tolist()


def test_zero_reasons_answers_the_same_bytes_as_no_params(followers, feature_rows):
    follower = followers["xgboost"]
    plain = _invoke(follower, _request(feature_rows.tail(3)))
    assert _invoke(follower, _request(feature_rows.tail(3), {"reasons": 0})) == plain
    assert plain[0] == 200
    assert list(json.loads(plain[1])["predictions"][0]) == [PROBABILITY_COLUMN, DECISION_COLUMN]


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"reasons": -1}, f"parameter reasons must be an integer from 0 to {FEATURES}"),
        ({"reasons": FEATURES + 1}, f"parameter reasons must be an integer from 0 to {FEATURES}"),
        ({"reasons": 2.5}, "got 2.5"),
        ({"reasons": "3"}, "got '3'"),
        ({"reasons": True}, "got True"),
    ],
)
def test_a_bad_number_of_reasons_is_a_400_naming_the_parameter(
    params, problem, followers, feature_rows
):
    status, content = _invoke(followers["xgboost"], _request(feature_rows.tail(2), params))
    assert status == 400
    error = json.loads(content)
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert problem in error["message"]


def test_params_that_are_not_an_object_are_refused(followers, feature_rows):
    status, content = _invoke(followers["xgboost"], _request(feature_rows.tail(2), [3]))
    assert status == 400
    assert "params must be an object" in json.loads(content)["message"]


def test_a_model_kind_without_contributions_refuses_reasons_clearly(feature_rows, tmp_path):
    # The random-forest baseline, wired as the service wires a FraudDetector (``_fast_paths``).
    featured = add_features(tiny_simulation(seed=4, n_days=30))
    spec, config = CandidateSpec("random_forest"), ModelConfig(n_jobs=1)
    fitted = fit_candidate(spec, config, FEATURE_COLUMNS, featured, "TX_FRAUD")
    detector = FraudDetector()
    detector.scorer, detector.threshold = Scorer.from_fitted(fitted, FEATURE_COLUMNS), 0.5
    schema = InputSchema(tuple(InputColumn(name, "double") for name in FEATURE_COLUMNS))
    model = ServedModel(
        uri="forest",
        name=None,
        version=None,
        run_id=None,
        threshold=0.5,
        schema=schema,
        predict=detector.predict_values,
        config={},
        directory=str(tmp_path),
        explain=detector.explain_values,
    )
    values = feature_rows.tail(2).to_numpy(np.float64)
    assert list(model.answer(values, 0)) == [PROBABILITY_COLUMN, DECISION_COLUMN]
    with pytest.raises(RequestError) as refused:
        model.answer(values, requested_reasons({"reasons": 3}, model))
    assert (refused.value.status, refused.value.code) == (400, "INVALID_PARAMETER_VALUE")
    assert refused.value.message == (
        "parameter reasons: model kind random_forest gives no per-feature contributions"
    )
    with pytest.raises(ConfigError, match="--reasons 3: parameter reasons: model kind random"):
        check_reasons(model, 3)


def test_a_forest_numpy_treeshap_refuses_keeps_xgboosts_contributions(
    two_version_store, feature_rows, monkeypatch, caplog
):
    # A table limit of 0 refuses every forest: the service asks XGBoost, as before NumPy TreeSHAP.
    monkeypatch.setattr(fast_contributions, "TABLE_ENTRIES", 0)
    uri = f"sqlite:///{two_version_store.database}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    follower = ModelFollower(f"models:/{MODEL_NAME}/2", poll_seconds=0)
    try:
        with caplog.at_level(logging.INFO, logger=fast_contributions.__name__):
            follower.load()
        assert follower.current.config["model_kind"] == "xgboost"
        assert "too many: not used" in caplog.text
        sent = feature_rows.tail(1)
        status, content = _invoke(follower, _request(sent, {"reasons": 3}))
        model = mlflow.pyfunc.load_model(follower.current.directory)
    finally:
        follower.close()
        mlflow.set_tracking_uri(None)
    assert status == 200
    served = pd.DataFrame(json.loads(content)["predictions"])
    expected = model.predict(sent, params={"reasons": 3})
    names = reason_column_names(3)  # feature, contribution of each rank, then the bias
    features, numbers = names[0:-1:2], [*names[1:-1:2], names[-1]]
    # XGBoost on both sides: the same float32 numbers (rtol as in the test above).
    np.testing.assert_allclose(served[numbers], expected[numbers], rtol=1e-6, atol=1e-9)
    assert served[features].equals(expected[features])
