"""The raw-transaction routes of the app: answers, refusals (4xx naming the field, nothing
echoed, nothing recorded), feedback, metrics, and what cannot be served."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pandas as pd
import pytest

from fraud_detection.cli import EXIT_BAD_PARAMETERS, main_with_commands
from fraud_detection.config import ApiConfig
from fraud_detection.data.features import FEATURE_COLUMNS
from fraud_detection.errors import DataError
from fraud_detection.online.errors import NotServableError
from fraud_detection.online.features import OnlineRecipe
from fraud_detection.online.service import history_rows, open_online_service
from fraud_detection.serving.api import create_app
from fraud_detection.serving.follower import ModelFollower
from serve import COMMANDS
from tests.support.online import COLUMNS, call, served_version
from tests.support.pipeline import TwoVersionStore

SECRET_CARD = "card-4111-1111"


def body(*transactions: dict, **extra) -> bytes:
    return json.dumps({"transactions": list(transactions), **extra}).encode()


def transaction(id_=1, when="2018-05-03 14:02:11", card=SECRET_CARD, terminal=7, amount=57.16):
    return {
        COLUMNS.id_column: id_,
        COLUMNS.timestamp_column: when,
        COLUMNS.customer_column: card,
        COLUMNS.terminal_column: terminal,
        COLUMNS.amount_column: amount,
    }


@pytest.fixture(scope="module")
def follower(two_version_store: TwoVersionStore) -> Iterator[ModelFollower]:
    with served_version(two_version_store, 1) as follower:
        yield follower


@pytest.fixture
def app(follower):
    return create_app(follower, 1 << 20, online=open_online_service(ApiConfig(), follower.current))


def post(app, path: str, content: bytes) -> tuple[int, dict]:
    status, answer = call(app, "POST", path, content)
    return status, json.loads(answer)


def test_a_raw_transaction_is_scored_with_its_features(app, follower):
    status, answer = post(app, "/transactions", body(transaction(), features=True))
    assert status == 200
    (row,) = answer["predictions"]
    assert row["id"] == 1 and row["model_version"] == "1" and row["duplicate"] is False
    assert 0 <= row["fraud_probability"] <= 1 and row["is_fraud"] in (0, 1)
    assert list(row["features"]) == list(follower.current.config["features"])
    assert row["features"]["TX_DURING_WEEKEND"] == 0  # a Thursday
    # Many at once; the retry of id 1 is answered as before, not counted again.
    status, answer = post(
        app, "/transactions", body(transaction(), transaction(2, "2018-05-03 15:00:00"))
    )
    first, second = answer["predictions"]
    assert first["duplicate"] and first["fraud_probability"] == row["fraud_probability"]
    assert not second["duplicate"]
    metrics = call(app, "GET", "/metrics")[1].decode()
    assert 'fraud_online_transactions_total{outcome="scored"} 2' in metrics
    assert 'fraud_online_transactions_total{outcome="duplicate"} 1' in metrics


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b"[]", "the body must be a JSON object"),
        (json.dumps({"transactions": []}).encode(), "transactions: must be a non-empty list"),
        (body(transaction(amount="12")), "transactions[0].TX_AMOUNT: must be a finite number"),
        (body(transaction(when="yesterday")), "transactions[0].TX_DATETIME: must be a date"),
        (
            body(transaction(when="2018-05-03T14:02:11+02:00")),
            "transactions[0].TX_DATETIME: give the time without a UTC offset",
        ),
        (body(transaction(card=None)), "transactions[0].CUSTOMER_ID: must be an integer"),
        (body(transaction(id_=True)), "transactions[0].TRANSACTION_ID: must be an integer"),
        (
            body(transaction(), transaction(3), transaction(1, "2018-05-04")),
            "transactions[2].TRANSACTION_ID: the same id as transactions[0]",
        ),
        (body(transaction(), features="yes"), "features: must be true or false"),
        (body(transaction(), params=[3]), "params: must be an object"),
        (body(transaction(), params={"reasons": -1}), "parameter reasons"),
        (body(transaction(), params={"reasons": 99}), "parameter reasons"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_records_nothing(app, payload, message):
    # The first transaction is valid: a refused request must not record even that one.
    status, answer = post(app, "/transactions", payload)
    assert status == 400
    # The code /invocations gives for the same params, MLflow's; BAD_REQUEST for the rest.
    code = "INVALID_PARAMETER_VALUE" if message == "parameter reasons" else "BAD_REQUEST"
    assert answer == {"error_code": code, "message": answer["message"]}
    assert message in answer["message"]
    assert SECRET_CARD not in answer["message"] and "yesterday" not in answer["message"]
    status, answer = post(app, "/transactions", body(transaction(), features=True))
    assert not answer["predictions"][0]["duplicate"]
    assert answer["predictions"][0]["features"]["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1


def test_out_of_order_and_unknown_feedback_are_refused(app):
    assert post(app, "/transactions", body(transaction(5, "2018-05-03 14:00:00")))[0] == 200
    status, answer = post(app, "/transactions", body(transaction(6, "2018-05-03 13:00:00")))
    assert status == 409 and answer["error_code"] == "CONFLICT"
    assert (
        "transactions[0]: earlier than the latest transaction recorded for its card"
        in (answer["message"])
    )
    feedback = {
        "labels": [{"TRANSACTION_ID": 5, "TX_FRAUD": 1}, {"TRANSACTION_ID": 6, "TX_FRAUD": 1}]
    }
    status, answer = post(app, "/feedback", json.dumps(feedback).encode())
    assert status == 404 and "labels[1]: no such transaction" in answer["message"]
    status, answer = post(app, "/feedback", b'{"labels": [{"TRANSACTION_ID": 5, "TX_FRAUD": 2}]}')
    assert status == 400 and "labels[0].TX_FRAUD: must be 0 or 1" in answer["message"]
    status, answer = post(app, "/feedback", b'{"labels": [{"TRANSACTION_ID": 5, "TX_FRAUD": 1}]}')
    assert (status, answer) == (200, {"recorded": 1})
    metrics = call(app, "GET", "/metrics")[1].decode()
    assert 'fraud_online_feedback_total{outcome="recorded"} 1' in metrics
    assert 'fraud_online_feedback_total{outcome="refused"} 2' in metrics
    assert 'fraud_online_transactions_total{outcome="refused"} 1' in metrics


def test_reason_codes_of_a_raw_transaction_are_those_of_its_feature_row(app):
    status, answer = post(
        app, "/transactions", body(transaction(), features=True, params={"reasons": 3})
    )
    assert status == 200
    (row,) = answer["predictions"]
    features = row.pop("features")
    # The same features sent to /invocations get the same answer, reason codes included.
    request = {"dataframe_records": [features], "params": {"reasons": 3}}
    status, scored = call(app, "POST", "/invocations", json.dumps(request).encode())
    assert status == 200
    (expected,) = json.loads(scored)["predictions"]
    assert {key: row[key] for key in expected} == expected
    assert [row[f"reason_{i}_feature"] for i in (1, 2, 3)] == [
        expected[f"reason_{i}_feature"] for i in (1, 2, 3)
    ]
    status, answer = post(app, "/transactions", body(transaction(2), params={"reasons": 0}))
    assert status == 200 and "reason_1_feature" not in answer["predictions"][0]


def test_models_without_engineered_features_cannot_score_raw_transactions():
    with pytest.raises(NotServableError, match="passthrough features, which cannot be computed"):
        OnlineRecipe.of_model({"engineered_features": False, "features": ["V1", "Amount"]}, "4")


def test_a_feature_the_online_state_does_not_compute_is_refused_by_name():
    # A fork that adds a batch feature (data/features.py) but not its online twin.
    features = [*FEATURE_COLUMNS, "CUSTOMER_ID_NB_COUNTRIES_7DAY_WINDOW"]
    with pytest.raises(NotServableError, match="first CUSTOMER_ID_NB_COUNTRIES_7DAY_WINDOW"):
        OnlineRecipe.of_model({"engineered_features": True, "features": features}, "5")
    assert OnlineRecipe.of_model({"engineered_features": True}).features == FEATURE_COLUMNS


def test_several_workers_without_a_shared_state_refuse_raw_transactions(follower):
    online = open_online_service(ApiConfig(workers=2), follower.current)
    app = create_app(follower, 1 << 20, online=online)
    status, answer = post(app, "/transactions", body(transaction()))
    assert status == 409 and "--state-url when --workers is above 1" in answer["message"]


def test_a_history_without_ids_is_one_clear_line(tmp_path, small_transactions, follower):
    path = tmp_path / "history.csv"
    small_transactions.head(50).drop(columns=[COLUMNS.id_column]).to_csv(path, index=False)
    recipe = OnlineRecipe.of_model(follower.current.config)
    with pytest.raises(DataError, match="missing column TRANSACTION_ID"):
        history_rows(str(path), COLUMNS, recipe)
    with pytest.raises(DataError, match="no such file"):
        history_rows(str(tmp_path / "none.csv"), COLUMNS, recipe)


def test_a_history_keeps_the_last_window_span_plus_the_delay(
    tmp_path, small_transactions, follower
):
    path = tmp_path / "history.csv"
    small_transactions.to_csv(path, index=False)
    recipe = OnlineRecipe.of_model(follower.current.config)
    rows = history_rows(str(path), COLUMNS, recipe)
    times = pd.to_datetime(small_transactions[COLUMNS.timestamp_column])
    reach = times.max() - pd.Timedelta(seconds=recipe.terminal_lookback)
    assert len(rows) == int((times > reach).sum())
    assert [r.transaction.seconds for r in rows] == sorted(r.transaction.seconds for r in rows)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--state-url", "http://127.0.0.1:6379"], "--state-url must start with redis://"),
        (["--history", "h.csv", "--workers", "2"], "--history with --workers above 1 needs"),
    ],
)
def test_bad_online_parameters_are_refused(flags, message, caplog):
    assert main_with_commands(COMMANDS, ["api", *flags], "serve") == EXIT_BAD_PARAMETERS
    assert message in caplog.text
