"""Registry webhooks: the tracking server tells the scoring service at once that an alias moved.

MLflow (3.3+) posts ``model_version_alias.created`` when ``set_registered_model_alias`` points
an alias at a version (promotion, approval, rollback) and ``model_version_alias.deleted`` when
one is removed. Each delivery is signed the Standard Webhooks way: the headers carry a delivery
id, a Unix timestamp and ``v1,<base64 HMAC-SHA256>`` of ``"<delivery id>.<timestamp>.<body>"``
under the webhook's secret (``mlflow/webhooks/delivery.py``).

``RegistryWebhooks.receive`` (``POST /webhooks/registry``) checks, in this order, before reading
the body as anything but bytes: the three headers are there, the timestamp is within
``MAX_AGE_SECONDS`` of this clock (a captured delivery cannot be replayed later), and the
signature matches (compared in constant time). Anything else is 401 and changes nothing. A
signed event for the model and alias this service follows wakes the follower (``check_now``),
which asks the registry where the alias points and loads that version in its own thread: the
payload's version is never trusted, so even a replayed or reordered delivery can only cause one
more registry lookup. Other events, models or aliases get 200 and are ignored.

The secret comes from the environment (``FRAUD_DETECTION_WEBHOOK_SECRET``), never from a flag,
so that it does not show in ``ps``. With ``--workers N`` a delivery reaches one worker, which
tells the others through ``WorkerWakeUps`` (a counter and a condition shared by the worker
processes). Polling stays the fallback: a lost delivery, or a tracking server that cannot reach
the service, is caught up at the next poll.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import multiprocessing.context
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.webhooks.constants import (
    WEBHOOK_DELIVERY_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_SIGNATURE_VERSION,
    WEBHOOK_TIMESTAMP_HEADER,
)
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from fraud_detection.config import WebhookConfig
from fraud_detection.errors import PipelineError
from fraud_detection.serving.follower import ModelFollower

logger = logging.getLogger(__name__)

WEBHOOK_SECRET_VARIABLE = "FRAUD_DETECTION_WEBHOOK_SECRET"
WEBHOOK_PATH = "/webhooks/registry"
ALIAS_ENTITY = "model_version_alias"
ALIAS_EVENTS = (f"{ALIAS_ENTITY}.created", f"{ALIAS_ENTITY}.deleted")
# How far a delivery's timestamp may be from this clock: the tolerance of the Standard Webhooks
# reference libraries. MLflow's retries (1, 2, 4 s apart) resend the same timestamp well within.
MAX_AGE_SECONDS = 300
# An alias event is about 200 bytes; anything far larger is not one.
MAX_BODY_BYTES = 64 * 1024
_JSON = "application/json"


class WebhookError(PipelineError):
    """Registering the registry webhook failed (no secret, or the registry refused it)."""


class DeliveryError(Exception):
    """A delivery that is answered with ``status`` and nothing else happens."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def response(self) -> Response:
        body = {"error_code": self.code, "message": str(self)}
        return Response(json.dumps(body).encode(), status_code=self.status, media_type=_JSON)


def webhook_secret_from_environment() -> str | None:
    """The shared secret of registry webhooks, or None when they are off."""
    return os.environ.get(WEBHOOK_SECRET_VARIABLE) or None


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for ``body`` (``v1,<base64>``)."""
    signed = b".".join((delivery_id.encode(), timestamp.encode(), body))
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{WEBHOOK_SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify_delivery(
    secret: str, headers: Mapping[str, str], body: bytes, now: float, max_age: float
) -> None:
    """Check a delivery's headers and ``body``; ``DeliveryError`` (401) if not MLflow's.

    ``headers`` must be case-insensitive (Starlette's are). The signature header may hold several
    space-separated signatures (Standard Webhooks, for a secret being rotated): one must match.
    """
    delivery_id = headers.get(WEBHOOK_DELIVERY_ID_HEADER)
    timestamp = headers.get(WEBHOOK_TIMESTAMP_HEADER)
    signatures = headers.get(WEBHOOK_SIGNATURE_HEADER)
    if not delivery_id or not timestamp or not signatures:
        raise DeliveryError(
            401,
            "UNAUTHENTICATED",
            f"a registry webhook needs the {WEBHOOK_SIGNATURE_HEADER}, "
            f"{WEBHOOK_TIMESTAMP_HEADER} and {WEBHOOK_DELIVERY_ID_HEADER} headers",
        )
    if not timestamp.isdigit() or abs(now - int(timestamp)) > max_age:
        raise DeliveryError(
            401,
            "UNAUTHENTICATED",
            f"the {WEBHOOK_TIMESTAMP_HEADER} header is not a time within {max_age:.0f} s of "
            "this server's clock",
        )
    expected = sign(secret, delivery_id, timestamp, body)
    # compare_digest: the time taken does not tell how much of a forged signature was right.
    if not any(hmac.compare_digest(expected, given) for given in signatures.split()):
        raise DeliveryError(401, "UNAUTHENTICATED", "the webhook signature does not match")


@dataclass(frozen=True)
class AliasEvent:
    """What a signed delivery says happened: ``event`` (``entity.action``) to ``name@alias``."""

    event: str
    name: str | None
    alias: str | None


def parse_event(body: bytes) -> AliasEvent:
    """The event of a verified delivery body; ``DeliveryError`` (400) if not MLflow's JSON."""
    try:
        payload = json.loads(body)
        data = payload.get("data") or {}
        event = f"{payload['entity']}.{payload['action']}"
        return AliasEvent(event, data.get("name"), data.get("alias"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DeliveryError(
            400, "BAD_REQUEST", "the webhook body is not an MLflow webhook payload"
        ) from None


class WorkerWakeUps:
    """Tells every worker process of one service that its alias moved.

    A delivery reaches the one worker the kernel gave the connection to; without this the
    others would serve the old version until their own next poll. Made by the supervisor before
    it spawns the workers (the shared counter and condition travel with the spawn); each worker
    runs ``relay`` (a thread blocked on the condition) and the one that hears a delivery calls
    ``announce``. Costs nothing between deliveries.
    """

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        self._condition = context.Condition()
        self._announced = context.Value("Q", 0, lock=False)  # guarded by the condition

    def announce(self) -> None:
        """Wake every worker's follower (this one's too); returns at once."""
        with self._condition:
            self._announced.value += 1
            self._condition.notify_all()

    def relay(self, follower: ModelFollower, stop: threading.Event) -> threading.Thread:
        """Start a thread that calls ``follower.check_now()`` at each announcement until
        ``stop`` is set (checked every second)."""
        with self._condition:
            seen = self._announced.value
        thread = threading.Thread(
            target=self._relay, args=(follower, stop, seen), name="webhook-relay", daemon=True
        )
        thread.start()
        return thread

    def _relay(self, follower: ModelFollower, stop: threading.Event, seen: int) -> None:
        while not stop.is_set():
            with self._condition:
                self._condition.wait_for(lambda s=seen: self._announced.value != s, timeout=1.0)
                announced = self._announced.value
            if announced != seen:
                seen = announced
                follower.check_now()


class RegistryWebhooks:
    """The webhook route of one worker: verifies deliveries and wakes its ``follower``.

    Args:
        follower: The worker's model follower; its thread does the lookup and the load.
        secret: The webhook's shared secret; None answers 404 (webhooks off).
        wake_workers: ``WorkerWakeUps.announce`` of a service with several workers (None: one).
        max_age: ``MAX_AGE_SECONDS``; ``clock``: Unix time (both replaceable in tests).
    """

    def __init__(
        self,
        follower: ModelFollower,
        secret: str | None,
        wake_workers: Callable[[], None] | None = None,
        max_age: float = MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.follower = follower
        self.secret = secret
        self.wake_workers = wake_workers
        self.max_age = max_age
        self.clock = clock
        self.checks_requested = 0

    async def receive(self, request: Request) -> Response:
        try:
            event = await self._verified_event(request)
        except DeliveryError as refused:
            if refused.status == 401:
                logger.warning("Refused a registry webhook: %s", refused)
            return refused.response()
        except ClientDisconnect:
            return Response(status_code=499)  # left before sending its body: nobody to answer
        ignored = self._ignored(event)
        if ignored:
            return _answer(200, {"status": "ignored", "reason": ignored})
        self.checks_requested += 1
        self.follower.check_now()
        if self.wake_workers is not None:
            self.wake_workers()
        logger.info(
            "Registry webhook: %s %s@%s, checking now", event.event, event.name, event.alias
        )
        return _answer(202, {"status": "checking", "model_uri": self.follower.model_uri})

    async def _verified_event(self, request: Request) -> AliasEvent:
        if self.secret is None:
            raise DeliveryError(
                404,
                "NOT_FOUND",
                f"registry webhooks are off: start the service with {WEBHOOK_SECRET_VARIABLE} set",
            )
        body = await _read_body(request)
        verify_delivery(self.secret, request.headers, body, self.clock(), self.max_age)
        return parse_event(body)

    def _ignored(self, event: AliasEvent) -> str | None:
        """Why this service does nothing on ``event``, or None when it must check the alias."""
        target = self.follower.target
        if event.event not in ALIAS_EVENTS:
            return f"event {event.event} does not move an alias"
        if target is None or target.alias is None:
            return f"this service serves {self.follower.model_uri}, which follows no alias"
        if (event.name, event.alias) != (target.name, target.alias):
            return f"this service follows {target.name}@{target.alias}"
        return None


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise DeliveryError(
            413, "REQUEST_TOO_LARGE", f"a webhook body is at most {MAX_BODY_BYTES} bytes"
        )
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise DeliveryError(
                413, "REQUEST_TOO_LARGE", f"a webhook body is at most {MAX_BODY_BYTES} bytes"
            )
    return body


def _answer(status: int, content: dict[str, str]) -> Response:
    return Response(json.dumps(content).encode(), status_code=status, media_type=_JSON)


# --- registering the webhook on the tracking server -------------------------------------------


def register_webhook(config: WebhookConfig) -> str:
    """Create (or update, by name) the registry webhook that calls ``config.url``.

    The secret is ``FRAUD_DETECTION_WEBHOOK_SECRET``, the same variable the service reads. Then
    MLflow sends a test delivery (an example payload for another model): a running service
    answers 200 when the secrets agree, 401 when they do not; the result is logged, not fatal,
    since the service may not be running yet.
    """
    secret = webhook_secret_from_environment()
    if secret is None:
        raise WebhookError(
            f"set {WEBHOOK_SECRET_VARIABLE} to the secret the scoring service is started with"
        )
    client = MlflowClient()
    try:
        existing = next((w for w in _all_webhooks(client) if w.name == config.name), None)
        if existing is None:
            webhook = client.create_webhook(
                config.name, config.url, list(ALIAS_EVENTS), description=_DESCRIPTION, secret=secret
            )
        else:
            webhook = client.update_webhook(
                existing.webhook_id,
                url=config.url,
                events=list(ALIAS_EVENTS),
                secret=secret,
                status="ACTIVE",
            )
    except MlflowException as error:
        raise WebhookError(f"cannot register webhook {config.name!r}: {error}") from error
    action = "created" if existing is None else "updated"
    tested = _test(client, webhook.webhook_id)
    return f"{action} webhook {config.name!r} ({webhook.webhook_id}) -> {config.url}; {tested}"


_DESCRIPTION = "serve.py api follows its registry alias at once (fraud_detection.serving.webhooks)"


def _all_webhooks(client: MlflowClient) -> list:
    webhooks, token = [], None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        webhooks.extend(page)
        token = page.token
        if not token:
            return webhooks


def _test(client: MlflowClient, webhook_id: str) -> str:
    try:
        result = client.test_webhook(webhook_id, event=ALIAS_EVENTS[0])
    except NotImplementedError:
        # A database URI, not a server: the webhook is stored, but only a tracking server's
        # REST handlers deliver (and test) webhooks.
        logger.warning(
            "Registered in the store directly: deliveries come only from an `mlflow server` "
            "on this store; aliases moved without one reach the service by polling"
        )
        return "no test delivery (not a tracking server)"
    if result.success:
        return f"test delivery answered {result.response_status}"
    detail = result.error_message or f"answered {result.response_status}"
    logger.warning("The test delivery failed (is the service running?): %s", detail)
    return f"test delivery failed: {detail}"
