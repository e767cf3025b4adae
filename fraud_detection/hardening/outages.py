"""Which part of the tracking stack failed, and riding out an outage of the stores behind it.

Guards against two failures seen on the production stack of ``deploy/`` (PostgreSQL and S3
behind ``mlflow server``):

- **The wrong diagnosis.** MLflow's client retries a 5xx answer like a refused connection and
  then raises "Max retries exceeded ... too many 500 error responses", without the answer's
  body. A database or an artifact store down behind a server that answers every request was
  reported as "the tracking server did not answer", and a missing artifact as missing lineage.
  ``diagnose`` tells apart the server itself, its database and its artifact store: after a
  5xx it asks the server two cheap questions, one answered from the database only and one
  from the artifact store only (when the failed request was an artifact one), and reads which
  one fails.
- **A store restart ends the step.** MLflow's retry budget is one number for every failure:
  the template keeps it at about 30 s so that a dead server fails a step quickly, which also
  ended a sweep whose database was down for 90 s. ``call_with_store_retry`` repeats a call
  that failed because a store is down, for ``FRAUD_DETECTION_STORE_RETRY_SECONDS`` (default
  180 s) from the first failure; a dead server is not retried beyond MLflow's own budget.

A fork may leave this module alone. Without it, store outages read as a dead server and a
database restart longer than 30 s fails the train step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import mlflow

logger = logging.getLogger(__name__)

T = TypeVar("T")

SERVER = "server"  # the server itself: no answer
SERVER_ERROR = "server error"  # the server answered 5xx, yet both stores answer it now
DATABASE = "database"
ARTIFACT_STORE = "artifact store"

STORE_RETRY_VARIABLE = "FRAUD_DETECTION_STORE_RETRY_SECONDS"
DEFAULT_STORE_RETRY_SECONDS = 180.0
# Between two attempts of a call whose store is down (each attempt already includes MLflow's
# own retries, about 30 s).
_PAUSE_SECONDS = 2.0
_PROBE_TIMEOUT_SECONDS = 5

_API_REQUEST = re.compile(r"API request to (?:endpoint )?(?P<url>\S+?)[.,]? failed")
_TOO_MANY = re.compile(r"too many (?P<status>5\d\d) error responses")
_HTTP_5XX = re.compile(r"\b(?P<status>5\d\d) Server Error\b|error code (?P<code>5\d\d)\b")
_UNREACHABLE = (
    "Connection refused",
    "Failed to establish a new connection",
    "NewConnectionError",
    "ConnectTimeout",
    "Read timed out",
    "timed out",
    "RemoteDisconnected",
    "Connection aborted",
    "Name or service not known",
    "nodename nor servname",
)
_ARTIFACT_PATH = "/mlflow-artifacts/"
# Probes: one request answered from the database alone, one from the artifact store alone.
_DATABASE_PROBE = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
_ARTIFACT_PROBE = "/api/2.0/mlflow-artifacts/artifacts?path="


@dataclass(frozen=True)
class Outage:
    """What failed (one of the parts above), on which request, and how it showed."""

    part: str
    request: str
    symptom: str

    def describe(self, tracking_uri: str | None = None) -> str:
        """One line: what failed, which request, what to do."""
        uri = tracking_uri or mlflow.get_tracking_uri()
        where = f" ({self.symptom} on {self.request})" if self.request else f" ({self.symptom})"
        if self.part == SERVER:
            return (
                f"the tracking server {uri} did not answer{where}; start it or check "
                "MLFLOW_TRACKING_URI"
            )
        if self.part == SERVER_ERROR:
            return (
                f"the tracking server {uri} failed to answer{where} although its database "
                "answers; see the server's log"
            )
        if self.part == DATABASE:
            return (
                f"the database behind the tracking server {uri} is unavailable{where}; the "
                "server answers but cannot read or write runs: check its backend store "
                "(PostgreSQL) and the server's log"
            )
        return (
            f"the artifact store of the tracking server {uri} is unavailable{where}; runs and "
            "models can be read but their files cannot: check the artifact store (S3) and the "
            "server's log"
        )


def diagnose(error: BaseException) -> Outage | None:
    """The outage ``error`` reveals, or None when it is not one (a bug, bad input, a 404).

    Reads the chain of causes: connection failures and timeouts mean the server (or, from
    boto3 in direct artifact mode, the artifact store) cannot be reached; a 5xx answer means a
    store behind a live server, found out with ``_probe``.
    """
    chain = _chain(error)
    text = " | ".join(str(item) for item in chain)
    boto = next((item for item in chain if type(item).__module__.startswith("botocore")), None)
    if boto is not None and _boto_outage(boto):
        return Outage(ARTIFACT_STORE, _s3_request(text), _first_line(boto))
    match = _API_REQUEST.search(text)
    url = match["url"] if match else ""
    request = _request_path(url)
    status = _TOO_MANY.search(text) or _HTTP_5XX.search(text)
    if status is not None:
        code = status.group("status") or status.group("code")
        return _probe(url, request, f"HTTP {code}")
    if any(marker in text for marker in _UNREACHABLE) and (url or _is_http_error(chain)):
        return Outage(SERVER, request, _connection_symptom(text))
    return None


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _is_http_error(chain: list[BaseException]) -> bool:
    import requests

    return any(
        isinstance(item, requests.exceptions.ConnectionError | requests.exceptions.Timeout)
        for item in chain
    )


def _boto_outage(error: BaseException) -> bool:
    name = type(error).__name__
    if name in (
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionError",
    ):
        return True
    response = getattr(error, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status >= 500


def _s3_request(text: str) -> str:
    match = re.search(r'endpoint URL: "(?P<url>[^"]+)"', text)
    return _request_path(match["url"]) if match else "S3"


def _request_path(url: str) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    return parts.path or url


def _connection_symptom(text: str) -> str:
    for marker, symptom in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("ConnectTimeout", "timed out"),
        ("Name or service not known", "unknown host"),
        ("RemoteDisconnected", "connection closed without an answer"),
        ("Connection aborted", "connection closed without an answer"),
    ):
        if marker in text:
            return symptom
    return "no answer"


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def _probe(url: str, request: str, symptom: str) -> Outage:
    """Which store failed behind a server that answered ``symptom`` (a 5xx) to ``url``.

    The database probe looks up the Default experiment (the database only; behind basic auth
    every request reads the user from the database too); the artifact probe lists the root of
    the proxied artifact store (the artifact store only). No retries, a short timeout: a probe
    that gets no answer means the server itself is gone by now. Measured on the production
    stack (PostgreSQL stopped: 503 with the driver's error; S3 cut: 500 on artifact requests).
    """
    base = _server_base(url)
    if base is None:
        return Outage(DATABASE, request, symptom)
    database = _probe_status(base, _DATABASE_PROBE)
    if database is None:
        return Outage(SERVER, request, f"{symptom}, then no answer")
    if database[0] >= 500:
        return Outage(DATABASE, request, _with_cause(symptom, database[1]))
    artifacts = _probe_status(base, _ARTIFACT_PROBE)
    if _ARTIFACT_PATH in url or (artifacts is not None and _artifact_store_failed(*artifacts)):
        return Outage(ARTIFACT_STORE, request, symptom)
    # Both stores answer: a store that is back already, or a failure of the server's own.
    # Either way the request may be repeated.
    return Outage(SERVER_ERROR, request, symptom)


def _artifact_store_failed(status: int, body: str) -> bool:
    # A server started with --no-serve-artifacts refuses the probe itself: not an outage.
    return status >= 500 and "serve-artifacts" not in body


def _with_cause(symptom: str, body: str) -> str:
    """``HTTP 503: (psycopg.OperationalError) connection failed...``: the message's first line."""
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        message = ""
    first = message.strip().splitlines()[0][:160] if message.strip() else ""
    return f"{symptom}: {first}" if first else symptom


def artifact_store_outage(artifact_uri: str) -> Outage | None:
    """The outage behind a failed download, if listing ``artifact_uri`` fails too.

    MLflow reports a download its artifact store could not serve as "Failed to download
    artifacts from path ..., please ensure that the path is correct" (RESOURCE_DOES_NOT_EXIST,
    no cause attached), exactly as it reports a missing file. Before a step blames lineage for
    a missing artifact it lists the folder: a listing that fails is the store's fault.
    """
    import mlflow.artifacts

    from fraud_detection.errors import is_absent

    try:
        mlflow.artifacts.list_artifacts(artifact_uri=artifact_uri)
    except Exception as error:  # noqa: BLE001 - any failure to list is the finding
        if is_absent(error):
            return None  # the run or model itself is missing: not an outage
        return diagnose(error) or Outage(
            ARTIFACT_STORE, artifact_uri, f"listing failed: {_first_line(error)}"
        )
    return None


def _server_base(url: str) -> str | None:
    if url:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https"):
            return f"{parts.scheme}://{parts.netloc}"
    uri = mlflow.get_tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def _probe_status(base: str, endpoint: str) -> tuple[int, str] | None:
    """(HTTP status, body) of one GET with the client's credentials; None if nothing answered.

    Asked twice: after a 500 on an artifact request the server drops the kept-alive
    connection, and the first probe on it fails although the server is there.
    """
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    for _ in range(2):
        try:
            response = http_request(
                get_default_host_creds(base),
                endpoint,
                "GET",
                max_retries=0,
                backoff_factor=0,
                timeout=_PROBE_TIMEOUT_SECONDS,
                raise_on_status=False,
            )
        except Exception:  # noqa: BLE001 - no answer is the finding
            continue
        return response.status_code, response.text[:2000]
    return None


# --- riding out a store outage ------------------------------------------------------------------


def store_retry_seconds() -> float:
    """The store retry budget: ``FRAUD_DETECTION_STORE_RETRY_SECONDS`` (default 180)."""
    raw = os.environ.get(STORE_RETRY_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_STORE_RETRY_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        from fraud_detection.config import ConfigError

        raise ConfigError(f"{STORE_RETRY_VARIABLE} must be a number of seconds >= 0, got {raw!r}")
    return seconds


def call_with_store_retry(call: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``call(*args, **kwargs)``, repeated while a store behind the server is down.

    Only database and artifact-store outages (and 5xx answers of a server whose stores answer)
    are retried, for ``store_retry_seconds()`` from the first failure; anything else (a dead
    server, bad input, a bug) is raised at once. The call must be safe to repeat: MLflow's own
    retries already repeat its requests.

    Raises:
        OutageError: the store was still down when the budget ran out.
    """
    return retry_while_stores_down(lambda: call(*args, **kwargs))


def retry_while_stores_down(call: Callable[[], T], abandon: threading.Event | None = None) -> T:
    """``call_with_store_retry`` for a call without arguments; ``abandon`` set stops the
    waiting (the caller has failed for another reason and is shutting down)."""
    from fraud_detection.errors import OutageError

    first_failure: float | None = None
    budget = store_retry_seconds()
    while True:
        try:
            result = call()
        except Exception as error:
            outage = diagnose(error)
            if outage is None or outage.part == SERVER:
                raise
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
                logger.warning(
                    "%s; retrying for up to %.0f s (%s)",
                    outage.describe(),
                    budget,
                    STORE_RETRY_VARIABLE,
                )
            waited = now - first_failure
            if waited >= budget or (abandon is not None and abandon.is_set()):
                raise OutageError(
                    outage, f"{outage.describe()}; still unavailable after {waited:.0f} s"
                ) from error
            pause = min(_PAUSE_SECONDS, budget - waited)
            if abandon is not None:
                abandon.wait(pause)
            else:
                time.sleep(pause)
            continue
        if first_failure is not None:
            logger.info(
                "The tracking server's stores answer again after %.0f s",
                time.monotonic() - first_failure,
            )
        return result


@contextlib.contextmanager
def quick_requests() -> Iterator[None]:
    """MLflow's HTTP requests in this block: no retry, a 5 s timeout (read on every request).

    For the last words of a step that already knows the server is unwell: one attempt to end
    its run instead of another whole retry budget. The variables are process-wide, so only a
    step's failure path (when its other threads are stopped) uses it.
    """
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    saved = {name: os.environ.get(name) for name in quick}
    os.environ.update(quick)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
