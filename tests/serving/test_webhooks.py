"""Registry webhooks in-process: deliveries signed by MLflow's own signing function, sent to the
real app around a follower of a real SQLite registry; `serve.py webhook` against that registry.

The real `mlflow server` delivering to `serve.py api` as a process is
tests/integration/test_webhook_delivery.py (slow).
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid

import pytest
from mlflow.tracking import MlflowClient
from mlflow.webhooks.delivery import _generate_hmac_signature
from starlette.datastructures import Headers

from fraud_detection.cli import EXIT_FAILED, main_with_commands
from fraud_detection.serving.api import create_app
from fraud_detection.serving.follower import ModelFollower
from fraud_detection.serving.webhooks import (
    MAX_AGE_SECONDS,
    WEBHOOK_PATH,
    WEBHOOK_SECRET_VARIABLE,
    DeliveryError,
    WorkerWakeUps,
    sign,
    verify_delivery,
)
from serve import COMMANDS
from tests.support.asgi import call
from tests.support.pipeline import MODEL_NAME

CHAMPION = f"models:/{MODEL_NAME}@champion"
SECRET = "test-webhook-secret"


def delivery(
    entity: str = "model_version_alias",
    action: str = "created",
    data: dict | None = None,
    *,
    secret: str = SECRET,
    age: float = 0.0,
) -> tuple[bytes, list[tuple[str, str]]]:
    """A delivery as MLflow 3.17 sends it: its body and headers (signed with MLflow's code)."""
    data = {"name": MODEL_NAME, "alias": "champion", "version": "2"} if data is None else data
    payload = json.dumps(
        {"entity": entity, "action": action, "timestamp": "2026-11-27T00:00:00Z", "data": data}
    )
    delivery_id, timestamp = str(uuid.uuid4()), str(int(time.time() - age))
    headers = [
        ("content-type", "application/json"),
        ("x-mlflow-delivery-id", delivery_id),
        ("x-mlflow-timestamp", timestamp),
        ("x-mlflow-signature", _generate_hmac_signature(secret, delivery_id, timestamp, payload)),
    ]
    return payload.encode(), headers


def post(app, body: bytes, headers: list[tuple[str, str]]) -> tuple[int, dict]:
    status, _, content = call(app, "POST", WEBHOOK_PATH, body, headers)
    return status, json.loads(content)


def test_the_signature_is_mlflows():
    body = b'{"entity": "model_version_alias", "data": {"name": "caf\xc3\xa9"}}'
    assert sign(SECRET, "id-1", "1700000000", body) == _generate_hmac_signature(
        SECRET, "id-1", "1700000000", body.decode()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x-mlflow-signature": None}, "needs the X-MLflow-Signature"),
        ({"x-mlflow-timestamp": None}, "needs the X-MLflow-Signature"),
        ({"x-mlflow-signature": "v1,AAAA"}, "signature does not match"),
        ({"x-mlflow-timestamp": -MAX_AGE_SECONDS - 5}, "within 300 s"),  # seconds from now
        ({"x-mlflow-timestamp": MAX_AGE_SECONDS + 5}, "within 300 s"),
        ({"x-mlflow-timestamp": "soon"}, "within 300 s"),
        ({"x-mlflow-delivery-id": "another-id"}, "signature does not match"),
    ],
)
def test_deliveries_that_are_not_mlflows_are_refused(change, message):
    body, header_list = delivery()
    if isinstance(shift := change.get("x-mlflow-timestamp"), int):
        change = {"x-mlflow-timestamp": str(int(time.time()) + shift)}
    headers = {**dict(header_list), **change}
    headers = Headers({name: value for name, value in headers.items() if value is not None})
    with pytest.raises(DeliveryError, match=message) as refused:
        verify_delivery(SECRET, headers, body, time.time(), MAX_AGE_SECONDS)
    assert refused.value.status == 401


def test_a_rotated_secret_is_accepted_beside_the_old_one():
    body, header_list = delivery()
    headers = Headers(dict(header_list)).mutablecopy()
    old = sign("old-secret", headers["x-mlflow-delivery-id"], headers["x-mlflow-timestamp"], body)
    headers["x-mlflow-signature"] = f"{old} {headers['x-mlflow-signature']}"
    verify_delivery(SECRET, headers, body, time.time(), MAX_AGE_SECONDS)
    with pytest.raises(DeliveryError, match="does not match"):
        verify_delivery(SECRET, headers, body + b" ", time.time(), MAX_AGE_SECONDS)


@pytest.fixture
def following(registry):
    """@champion (version 1) loaded, its thread woken only by webhooks (no timed poll)."""
    follower = ModelFollower(CHAMPION, poll_seconds=0, wake_on_demand=True)
    follower.load()
    follower.start()
    yield follower
    follower.close()


def test_refused_and_ignored_deliveries_swap_nothing(following):
    app = create_app(following, max_body_bytes=1 << 20, webhook_secret=SECRET)
    # The alias has moved: any check of the registry would now swap to version 2.
    MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", "2")
    tampered_body, tampered_headers = delivery()
    cases = [
        (delivery()[0], [("content-type", "application/json")], 401),  # no signature
        (*delivery(secret="not-the-secret"), 401),
        (*delivery(age=MAX_AGE_SECONDS + 60), 401),  # a replay of an old delivery
        (tampered_body.replace(b'"2"', b'"1"'), tampered_headers, 401),
        (*delivery(entity="registered_model", action="created", data={"name": MODEL_NAME}), 200),
        (*delivery(data={"name": "another-model", "alias": "champion", "version": "1"}), 200),
        (*delivery(data={"name": MODEL_NAME, "alias": "challenger", "version": "2"}), 200),
    ]
    for body, headers, expected in cases:
        status, answer = post(app, body, headers)
        assert status == expected, answer
        if status == 200:
            assert answer["status"] == "ignored"
        else:
            assert answer["error_code"] == "UNAUTHENTICATED"
    status, answer = post(app, b"{not json", delivery()[1])
    assert status == 401  # not the body that was signed: refused before it is parsed
    oversized = delivery(data={"name": "x" * 70_000, "alias": "champion", "version": "2"})
    assert post(app, *oversized)[0] == 413
    time.sleep(0.5)  # time for a (wrongly) woken thread to check
    assert following.checks == 0
    assert following.current.version == "1"


def test_a_signed_alias_event_swaps_at_once(following):
    app = create_app(following, max_body_bytes=1 << 20, webhook_secret=SECRET)
    MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", "2")
    status, answer = post(app, *delivery())
    assert (status, answer) == (202, {"status": "checking", "model_uri": CHAMPION})
    _wait_for(lambda: following.current.version == "2")
    assert following.swaps == 1
    assert json.loads(call(app, "GET", "/version")[2])["version"] == "2"


def test_the_worker_that_hears_a_delivery_wakes_the_others(following):
    # Two workers of one service, as threads of this process around the same shared
    # primitives the supervisor hands its worker processes (the slow test runs two processes).
    wake_ups = WorkerWakeUps(multiprocessing.get_context("spawn"))
    other = ModelFollower(CHAMPION, poll_seconds=0, wake_on_demand=True)
    other.load()
    other.start()
    stop = threading.Event()
    relays = [wake_ups.relay(follower, stop) for follower in (following, other)]
    try:
        app = create_app(following, 1 << 20, webhook_secret=SECRET, wake_workers=wake_ups.announce)
        MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", "2")
        assert post(app, *delivery())[0] == 202
        _wait_for(lambda: other.current.version == following.current.version == "2")
        assert other.checks == 1  # woken once, by the relay
    finally:
        stop.set()
        for relay in relays:
            relay.join(timeout=5)
        other.close()
    assert not any(relay.is_alive() for relay in relays)


def test_a_deleted_alias_keeps_the_version_in_memory(following):
    app = create_app(following, max_body_bytes=1 << 20, webhook_secret=SECRET)
    MlflowClient().delete_registered_model_alias(MODEL_NAME, "champion")
    data = {"name": MODEL_NAME, "alias": "champion"}
    assert post(app, *delivery(action="deleted", data=data))[0] == 202
    _wait_for(lambda: following.failed_polls == 1)
    assert following.current.version == "1"


def test_without_a_secret_the_route_is_off(following):
    app = create_app(following, max_body_bytes=1 << 20)
    status, answer = post(app, *delivery())
    assert status == 404
    assert WEBHOOK_SECRET_VARIABLE in answer["message"]
    assert following.checks == 0


def test_serve_webhook_registers_once_and_updates(registry, monkeypatch, caplog):
    # The store checks the URL where the webhook is created: loopback needs both settings.
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
    monkeypatch.delenv(WEBHOOK_SECRET_VARIABLE, raising=False)
    url = "http://127.0.0.1:9/webhooks/registry"  # the discard port: nothing answers
    assert _serve("webhook", "--url", url) == EXIT_FAILED
    assert f"set {WEBHOOK_SECRET_VARIABLE}" in caplog.text

    monkeypatch.setenv(WEBHOOK_SECRET_VARIABLE, SECRET)
    assert _serve("webhook", "--url", url) == 0
    assert _serve("webhook", "--url", url.replace(":9/", ":10/")) == 0
    webhooks = list(MlflowClient().list_webhooks())
    assert len(webhooks) == 1
    assert webhooks[0].url == url.replace(":9/", ":10/")
    assert {str(event) for event in webhooks[0].events} == {
        "model_version_alias.created",
        "model_version_alias.deleted",
    }
    assert webhooks[0].secret == SECRET
    assert "deliveries come only from an `mlflow server`" in caplog.text  # a warning, not fatal


def _serve(*argv: str) -> int:
    return main_with_commands(COMMANDS, list(argv), description="serve")


def _wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
