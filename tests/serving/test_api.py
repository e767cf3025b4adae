"""The scoring service in-process: the ASGI app called directly, the alias follower, the CLI.

The app is called through the ASGI interface itself (no HTTP client library is installed); the
real server process, `mlflow models serve` side by side and the alias moved under load are in
test_server_process.py (slow).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fraud_detection.cli import (
    EXIT_BAD_PARAMETERS,
    EXIT_FAILED,
    main_with_commands,
)
from fraud_detection.data.features import (
    FEATURE_COLUMNS,
    add_features,
)
from fraud_detection.errors import LineageError
from fraud_detection.modelling.pyfunc import (
    DECISION_COLUMN,
    PROBABILITY_COLUMN,
)
from fraud_detection.serving.api import create_app
from fraud_detection.serving.follower import (
    ModelFollower,
    _pyfunc_predict,
    registry_target,
)
from serve import COMMANDS
from tests.support.asgi import call
from tests.support.pipeline import MODEL_NAME, TwoVersionStore, tiny_simulation

CHAMPION = f"models:/{MODEL_NAME}@champion"
JSON_HEADERS = [("content-type", "application/json")]


@pytest.fixture(scope="module")
def feature_rows() -> pd.DataFrame:
    return add_features(tiny_simulation(seed=3, n_days=35))[list(FEATURE_COLUMNS)].tail(50)


@pytest.fixture(scope="module")
def loaded(two_version_store: TwoVersionStore) -> Iterator[ModelFollower]:
    """@champion (version 1) loaded once for the module's read-only tests."""
    uri = f"sqlite:///{two_version_store.database}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        follower = ModelFollower(CHAMPION, poll_seconds=0)
        follower.load()
        mlflow.set_tracking_uri(None)
    yield follower
    follower.close()


def _split(rows: pd.DataFrame) -> bytes:
    return json.dumps({"dataframe_split": rows.to_dict(orient="split")}).encode()


def _predictions(content: bytes) -> pd.DataFrame:
    return pd.DataFrame(json.loads(content)["predictions"])


def test_answers_as_the_registered_model_does(loaded, feature_rows):
    app = create_app(loaded, max_body_bytes=1 << 20)
    status, headers, content = call(app, "POST", "/invocations", _split(feature_rows), JSON_HEADERS)
    assert status == 200
    assert headers["x-model-version"] == "1"
    assert headers["content-type"] == "application/json"
    served = _predictions(content)
    expected = mlflow.pyfunc.load_model(loaded.current.directory).predict(feature_rows)
    assert list(served.columns) == [PROBABILITY_COLUMN, DECISION_COLUMN]
    # Version 1 is the logistic-regression baseline: BLAS may round a row-major matrix (parsed
    # from JSON) differently from a DataFrame's column-major one, in the last bits.
    np.testing.assert_allclose(
        served[PROBABILITY_COLUMN], expected[PROBABILITY_COLUMN], rtol=1e-6, atol=1e-9
    )
    np.testing.assert_array_equal(served[DECISION_COLUMN], expected[DECISION_COLUMN])


def test_the_generic_pyfunc_path_agrees_with_the_fast_path(loaded, feature_rows):
    model = mlflow.pyfunc.load_model(loaded.current.directory)
    generic = _pyfunc_predict(model, loaded.current.schema)(feature_rows.to_numpy(np.float64))
    fast = loaded.current.predict(feature_rows.to_numpy(np.float64))
    np.testing.assert_allclose(generic[PROBABILITY_COLUMN], fast[PROBABILITY_COLUMN], rtol=1e-6)
    np.testing.assert_array_equal(generic[DECISION_COLUMN], fast[DECISION_COLUMN])


def test_the_pyfunc_refuses_missing_values_with_the_column_and_row(loaded, feature_rows):
    # What `mlflow models serve` and batch callers of the pyfunc meet (a 400 there, as
    # MlflowException INVALID_PARAMETER_VALUE); XGBoost alone would score a NaN silently.
    model = mlflow.pyfunc.load_model(loaded.current.directory)
    rows = feature_rows.head(3).copy()
    rows.iloc[2, rows.columns.get_loc("TX_AMOUNT")] = np.nan
    with pytest.raises(MlflowException, match="column TX_AMOUNT: row 2 is missing") as caught:
        model.predict(rows)
    assert caught.value.get_http_status_code() == 400
    rows.iloc[2, rows.columns.get_loc("TX_AMOUNT")] = np.inf
    with pytest.raises(MlflowException, match="or infinite"):
        model.predict(rows)


def test_bad_requests_get_a_clear_4xx_and_serving_goes_on(loaded, feature_rows):
    app = create_app(loaded, max_body_bytes=4096)
    records = feature_rows.head(2).to_dict(orient="records")
    records[1]["TX_AMOUNT"] = "card 4111-1111-1111-1111"
    bad = json.dumps({"dataframe_records": records}).encode()
    status, _, content = call(app, "POST", "/invocations", bad, JSON_HEADERS)
    assert status == 400
    error = json.loads(content)
    assert error == {
        "error_code": "BAD_REQUEST",
        "message": "column TX_AMOUNT: row 1 is a string that is not a number",
    }
    status, _, content = call(app, "POST", "/invocations", _split(feature_rows), JSON_HEADERS)
    assert status == 413
    assert json.loads(content)["message"] == "the request body is larger than 4096 bytes"
    status, _, _ = call(app, "POST", "/invocations", b"a,b\n1,2\n", [("content-type", "text/xml")])
    assert status == 415
    assert call(app, "GET", "/invocations")[0] == 405
    assert call(app, "GET", "/nowhere")[0] == 404
    # Still serving, with the same answers.
    good = _split(feature_rows.head(3))
    status, _, content = call(app, "POST", "/invocations", good, JSON_HEADERS)
    assert status == 200
    assert len(_predictions(content)) == 3


def test_extra_columns_are_scored_without_them_and_named(loaded, feature_rows, caplog):
    app = create_app(loaded, max_body_bytes=1 << 20)
    sent = feature_rows.head(3).assign(customer_note="vip", **{"bad name: 4111": 1})
    status, headers, content = call(app, "POST", "/invocations", _split(sent), JSON_HEADERS)
    assert status == 200
    # Plain names are repeated, anything else only counted.
    assert headers["x-ignored-columns"] == "customer_note, 1 other(s)"
    assert "Requests send columns the model ignores: customer_note, 1 other(s)" in caplog.text
    expected = call(app, "POST", "/invocations", _split(feature_rows.head(3)), JSON_HEADERS)
    assert content == expected[2]  # the same scores as without the extra columns
    assert "x-ignored-columns" not in expected[1]
    metrics = call(app, "GET", "/metrics")[2].decode()
    assert "fraud_serving_extra_column_requests_total 1" in metrics


def test_extra_columns_can_be_refused(loaded, feature_rows):
    app = create_app(loaded, max_body_bytes=1 << 20, extra_columns="reject")
    sent = feature_rows.head(3).assign(customer_note="vip")
    status, _, content = call(app, "POST", "/invocations", _split(sent), JSON_HEADERS)
    assert status == 400
    assert json.loads(content)["message"] == (
        "the model does not take column(s) customer_note; send only its "
        f"{len(FEATURE_COLUMNS)} signature columns"
    )
    status, _, _ = call(app, "POST", "/invocations", _split(feature_rows.head(3)), JSON_HEADERS)
    assert status == 200


def test_csv_requests(loaded, feature_rows):
    app = create_app(loaded, max_body_bytes=1 << 20)
    body = feature_rows.to_csv(index=False).encode()
    status, _, content = call(app, "POST", "/invocations", body, [("content-type", "text/csv")])
    assert status == 200
    assert len(_predictions(content)) == len(feature_rows)


def test_health_version_and_metrics(loaded, feature_rows):
    app = create_app(loaded, max_body_bytes=1 << 20)
    assert call(app, "GET", "/ping")[0] == 200
    assert call(app, "GET", "/health")[0] == 200
    status, _, content = call(app, "GET", "/version")
    version = json.loads(content)
    assert status == 200
    assert version["name"] == MODEL_NAME
    assert version["alias"] == "champion"
    assert version["version"] == "1"
    assert version["run_id"] == loaded.current.run_id
    assert 0 < version["threshold"] < 1

    for body in (_split(feature_rows), _split(feature_rows.head(1)), b"{"):
        call(app, "POST", "/invocations", body, JSON_HEADERS)
    status, headers, content = call(app, "GET", "/metrics")
    text = content.decode()
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'fraud_serving_requests_total{status="200"} 2' in text
    assert 'fraud_serving_requests_total{status="400"} 1' in text
    assert 'fraud_serving_errors_total{side="client"} 1' in text
    assert "fraud_serving_request_duration_seconds_count 3" in text
    assert 'fraud_serving_request_duration_seconds_bucket{le="+Inf"} 3' in text
    assert f"fraud_serving_rows_total {len(feature_rows) + 1}" in text
    assert f'fraud_serving_model_version{{name="{MODEL_NAME}",version="1"}} 1' in text


def test_the_follower_swaps_on_promotion_and_rollback(registry, feature_rows):
    client = MlflowClient()
    follower = ModelFollower(CHAMPION, poll_seconds=0)
    first = follower.load()
    app = create_app(follower, max_body_bytes=1 << 20)
    before = _predictions(call(app, "POST", "/invocations", _split(feature_rows), JSON_HEADERS)[2])
    assert follower.poll() is False  # nothing moved

    client.set_registered_model_alias(MODEL_NAME, "champion", "2")  # promotion
    assert follower.poll() is True
    status, headers, content = call(app, "POST", "/invocations", _split(feature_rows), JSON_HEADERS)
    assert (status, headers["x-model-version"]) == (200, "2")
    after = _predictions(content)
    assert not np.allclose(after[PROBABILITY_COLUMN], before[PROBABILITY_COLUMN])
    assert json.loads(call(app, "GET", "/version")[2])["version"] == "2"
    assert not Path(first.directory).exists()  # the replaced version's files are gone

    client.set_registered_model_alias(MODEL_NAME, "champion", "1")  # rollback
    assert follower.poll() is True
    status, headers, content = call(app, "POST", "/invocations", _split(feature_rows), JSON_HEADERS)
    assert headers["x-model-version"] == "1"
    pd.testing.assert_frame_equal(_predictions(content), before)
    assert "fraud_serving_model_swaps_total 2" in call(app, "GET", "/metrics")[2].decode()
    follower.close()


def test_the_follower_thread_survives_a_missing_alias(registry):
    client = MlflowClient()
    follower = ModelFollower(CHAMPION, poll_seconds=0.05)
    follower.load()
    follower.start()
    try:
        client.delete_registered_model_alias(MODEL_NAME, "champion")
        _wait_for(lambda: follower.failed_polls > 0)
        assert follower.current.version == "1"  # still serving what it had
        with pytest.raises(LineageError, match=f"cannot resolve {CHAMPION}"):
            follower.poll()
        client.set_registered_model_alias(MODEL_NAME, "champion", "2")
        _wait_for(lambda: follower.current.version == "2")
    finally:
        follower.close()


def _wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_registry_targets():
    assert registry_target("models:/m@champion").alias == "champion"
    assert registry_target("models:/m/12").version == "12"
    assert registry_target("runs:/abc/model") is None
    assert registry_target("models:/m-1a2b3c") is None  # a logged model id: served as it is


def _api(*args: str) -> int:
    return main_with_commands(COMMANDS, ["api", *args], "serve")


def test_an_unknown_model_stops_the_service_before_it_starts(tracking_uri, caplog):
    assert _api("--model-uri", "models:/nope@champion", "--port", "0") == EXIT_FAILED
    assert "cannot resolve models:/nope@champion" in caplog.text


def test_a_busy_port_is_one_clear_line(tracking_uri, caplog):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert _api("--port", str(port)) == EXIT_FAILED
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in caplog.text


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--workers", "0", "--workers must be between 1 and 64"),
        ("--max-body-bytes", "10", "--max-body-bytes must be at least 1024"),
        ("--poll-seconds", "-1", "--poll-seconds must be >= 0"),
        ("--port", "70000", "--port must be between 0 and 65535"),
        ("--extra-columns", "drop", "--extra-columns must be one of warn, reject"),
    ],
)
def test_bad_parameters_are_refused(flag, value, message, caplog):
    assert _api(flag, value) == EXIT_BAD_PARAMETERS
    assert message in caplog.text
