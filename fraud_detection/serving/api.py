"""The REST scoring service: MLflow's scoring protocol, the registry alias followed live.

Routes:
    POST /invocations   MLflow's scoring protocol (``protocol.py``): a client written for
                        ``mlflow models serve`` works unchanged; ``"params": {"reasons": k}``
                        adds k reason codes per row (``ServedModel.answer``).
    GET  /ping, /health 200 once a model is loaded (as ``mlflow models serve``).
    GET  /version       the registered model name, the version being served, its run id and
                        decision threshold (JSON).
    GET  /metrics       Prometheus text format: requests by status, latency histogram, errors,
                        rows scored, the version served, alias swaps, raw transactions and
                        feedback by outcome.
    POST /webhooks/registry  MLflow's registry webhooks: a signed alias event for the model
                        followed makes it check the alias at once (``webhooks.py``).
    POST /transactions  raw transactions (id, time, card, terminal, amount) scored with online
                        features (``fraud_detection/online``); POST /feedback: their labels.

Why it is faster than ``mlflow models serve`` on the same model: the request is parsed straight
into a float matrix and checked against the signature here (no DataFrame, no pyfunc schema
enforcement), the model is called through its matrix entry point, and the prediction runs on the
event loop (no hop to a thread pool for sub-millisecond work). Starlette on uvicorn, one process
per worker; each worker loads the model and follows the alias itself (``follower.py``).
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import multiprocessing.connection
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from fraud_detection.config import ApiConfig
from fraud_detection.errors import PipelineError
from fraud_detection.online.errors import OnlineError
from fraud_detection.online.service import OnlineService, open_online_service
from fraud_detection.serving.follower import ModelFollower, ServedModel, requested_reasons
from fraud_detection.serving.protocol import (
    JSON,
    RequestError,
    ScoringInput,
    bad_request,
    parse_request,
    predictions_json,
)
from fraud_detection.serving.webhooks import (
    WEBHOOK_PATH,
    RegistryWebhooks,
    WorkerWakeUps,
    webhook_secret_from_environment,
)

logger = logging.getLogger(__name__)

MODEL_VERSION_HEADER = "X-Model-Version"
# Names the columns a request sent that the model does not take (--extra-columns warn).
IGNORED_COLUMNS_HEADER = "X-Ignored-Columns"
# Column names are the client's text: only plain ones are repeated, and only a few.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NAMES_SHOWN = 10
# Upper bounds (seconds) of the latency histogram: from a single row to a large batch.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServingError(PipelineError):
    """The scoring service cannot start or one of its workers died."""


class ServiceMetrics:
    """Counters of one worker process, written in the Prometheus text format.

    Only the event loop thread updates them, so they need no lock.
    """

    def __init__(self) -> None:
        self.requests_by_status: dict[int, int] = {}
        self.bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.rows = 0
        self.extra_column_requests = 0

    def observe(self, status: int, seconds: float, rows: int) -> None:
        self.requests_by_status[status] = self.requests_by_status.get(status, 0) + 1
        index = next((i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound), -1)
        self.bucket_counts[index] += 1
        self.latency_sum += seconds
        self.rows += rows

    def render(self, follower: ModelFollower) -> str:
        model = follower.current
        total = sum(self.requests_by_status.values())
        client_errors = sum(n for s, n in self.requests_by_status.items() if 400 <= s < 500)
        server_errors = sum(n for s, n in self.requests_by_status.items() if s >= 500)
        lines = _metric("fraud_serving_requests_total", "counter", "Scoring requests by status.")
        lines += [
            f'fraud_serving_requests_total{{status="{status}"}} {count}'
            for status, count in sorted(self.requests_by_status.items())
        ]
        lines += _metric(
            "fraud_serving_errors_total", "counter", "Scoring requests that failed, by side."
        )
        lines += [
            f'fraud_serving_errors_total{{side="client"}} {client_errors}',
            f'fraud_serving_errors_total{{side="server"}} {server_errors}',
        ]
        lines += _metric(
            "fraud_serving_request_duration_seconds",
            "histogram",
            "Time from request received to response ready, /invocations only.",
        )
        cumulative = 0
        for bound, count in zip((*LATENCY_BUCKETS, "+Inf"), self.bucket_counts, strict=True):
            cumulative += count
            lines.append(
                f'fraud_serving_request_duration_seconds_bucket{{le="{bound}"}} {cumulative}'
            )
        lines += [
            f"fraud_serving_request_duration_seconds_sum {self.latency_sum:.6f}",
            f"fraud_serving_request_duration_seconds_count {total}",
        ]
        lines += _metric("fraud_serving_rows_total", "counter", "Rows scored.")
        lines.append(f"fraud_serving_rows_total {self.rows}")
        lines += _metric(
            "fraud_serving_extra_column_requests_total",
            "counter",
            "Requests that sent columns the model does not take (warned or rejected).",
        )
        lines.append(f"fraud_serving_extra_column_requests_total {self.extra_column_requests}")
        labels = f'name="{model.name or ""}",version="{model.version or ""}"'
        lines += _metric(
            "fraud_serving_model_version",
            "gauge",
            "Registered version being served (-1: not a registry version).",
        )
        number = int(model.version) if model.version and model.version.isdigit() else -1
        lines.append(f"fraud_serving_model_version{{{labels}}} {number}")
        lines += _metric(
            "fraud_serving_model_swaps_total", "counter", "Times the alias moved and was followed."
        )
        lines.append(f"fraud_serving_model_swaps_total {follower.swaps}")
        lines += _metric(
            "fraud_serving_alias_poll_failures_total",
            "counter",
            "Alias checks or loads that failed (the previous version kept serving).",
        )
        lines.append(f"fraud_serving_alias_poll_failures_total {follower.failed_polls}")
        return "\n".join(lines) + "\n"


def _metric(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def create_app(
    follower: ModelFollower,
    max_body_bytes: int,
    extra_columns: str = "warn",
    online: OnlineService | None = None,
    webhook_secret: str | None = None,
    wake_workers: Callable[[], None] | None = None,
) -> Starlette:
    """The ASGI application around a loaded ``follower`` (its thread runs while the app does).

    ``extra_columns`` is what a request with columns the model does not take gets: ``warn``
    (scored; the columns named in a response header, logged once per distinct set, counted) or
    ``reject`` (400). MLflow's scoring server drops them silently, which hides upstream bugs
    such as a renamed feature arriving beside the old name. ``online`` serves ``/transactions``
    and ``/feedback`` (default: a state in memory, cold). ``webhook_secret`` turns registry
    webhooks on (``webhooks.py``; None: the route answers 404); ``wake_workers`` tells the other
    workers of the service.
    """
    service = ScoringService(follower, max_body_bytes, extra_columns, online)
    webhooks = RegistryWebhooks(follower, webhook_secret, wake_workers)
    return Starlette(
        routes=[
            Route("/invocations", service.invocations, methods=["POST"]),
            Route("/ping", service.ping, methods=["GET"]),
            Route("/health", service.ping, methods=["GET"]),
            Route("/version", service.version, methods=["GET"]),
            Route("/metrics", service.prometheus, methods=["GET"]),
            Route("/transactions", service.transactions, methods=["POST"]),
            Route("/feedback", service.feedback, methods=["POST"]),
            Route(WEBHOOK_PATH, webhooks.receive, methods=["POST"]),
        ],
        lifespan=service.lifespan,
    )


class ScoringService:
    """The routes of one worker: the model it follows, its limits and its counters."""

    def __init__(
        self,
        follower: ModelFollower,
        max_body_bytes: int,
        extra_columns: str,
        online: OnlineService | None = None,
    ) -> None:
        self.follower = follower
        self.online = online if online is not None else _cold_online(follower)
        self.max_body_bytes = max_body_bytes
        self.extra_columns = extra_columns
        self.metrics = ServiceMetrics()
        self._warned: set[tuple[str, ...]] = set()

    async def invocations(self, request: Request) -> Response:
        started = time.perf_counter()
        rows = 0
        try:
            body = await _read_body(request, self.max_body_bytes)
            model = self.follower.current  # read once: the whole request uses this version
            parsed = parse_request(body, request.headers.get("content-type"), model.schema)
            headers = {**_version_header(model), **self._extra_columns(parsed, model)}
            rows = len(parsed.values)
            answer = model.answer(parsed.values, requested_reasons(parsed.params, model))
            response = Response(predictions_json(answer), media_type=JSON, headers=headers)
        except RequestError as error:
            response = Response(error.body(), status_code=error.status, media_type=JSON)
        except ClientDisconnect:
            # The client left before sending its whole body: nobody to answer. 499 is nginx's
            # status for it, kept for the metrics.
            response = Response(status_code=499)
        # Whatever else goes wrong is a bug or a broken model: log it here with its traceback,
        # answer 500 without one, and keep serving.
        except Exception:
            logger.exception("Scoring failed")
            body = {"error_code": "INTERNAL_ERROR", "message": "scoring failed; see the server log"}
            response = Response(json.dumps(body).encode(), status_code=500, media_type=JSON)
        self.metrics.observe(response.status_code, time.perf_counter() - started, rows)
        return response

    def _extra_columns(self, parsed: ScoringInput, model: ServedModel) -> dict[str, str]:
        """Apply the extra-columns policy; the response header that names them, if any."""
        if not parsed.extra_columns:
            return {}
        self.metrics.extra_column_requests += 1
        names = _describe_columns(parsed.extra_columns)
        if self.extra_columns == "reject":
            raise bad_request(
                f"the model does not take column(s) {names}; send only its "
                f"{len(model.schema.columns)} signature columns"
            )
        if parsed.extra_columns not in self._warned and len(self._warned) < 1000:
            self._warned.add(parsed.extra_columns)
            logger.warning("Requests send columns the model ignores: %s", names)
        return {IGNORED_COLUMNS_HEADER: names}

    async def transactions(self, request: Request) -> Response:
        return await self._online_route(
            request, lambda body: self.online.score(body, self.follower.current)
        )

    async def feedback(self, request: Request) -> Response:
        return await self._online_route(request, self.online.feedback)

    async def _online_route(self, request: Request, handle: Any) -> Response:
        """Run an online route; its refusals are 4xx with a one-line message."""
        try:
            body = await _read_body(request, self.max_body_bytes)
            return Response(await handle(body), media_type=JSON)
        except RequestError as error:
            return Response(error.body(), status_code=error.status, media_type=JSON)
        except OnlineError as error:
            status, code = error.status, error.code
            return Response(RequestError(status, code, str(error)).body(), status, media_type=JSON)
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception:
            logger.exception("Online scoring failed")
            body = {"error_code": "INTERNAL_ERROR", "message": "scoring failed; see the server log"}
            return Response(json.dumps(body).encode(), status_code=500, media_type=JSON)

    async def ping(self, request: Request) -> Response:
        # The app exists only once a model is loaded, so answering at all means healthy.
        return Response("\n", media_type=JSON)

    async def version(self, request: Request) -> Response:
        description = {
            **self.follower.current.describe(),
            "alias": self.follower.target.alias if self.follower.target else None,
        }
        return Response(json.dumps(description).encode(), media_type=JSON)

    async def prometheus(self, request: Request) -> Response:
        return Response(
            self.metrics.render(self.follower) + self.online.render_metrics(),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.follower.start()
        try:
            yield
        finally:
            self.follower.stop()


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = RequestError(
        413, "REQUEST_TOO_LARGE", f"the request body is larger than {limit} bytes"
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _cold_online(follower: ModelFollower) -> OnlineService:
    """A cold in-memory state for the model ``follower`` serves (no history, one worker)."""
    return open_online_service(ApiConfig(), follower.current)


def _describe_columns(names: tuple[str, ...]) -> str:
    """The first few plain names; other names counted, never repeated."""
    plain = [name for name in names if _PLAIN_NAME.fullmatch(name)][:_NAMES_SHOWN]
    others = len(names) - len(plain)
    return ", ".join(plain) + (f"{', ' if plain else ''}{others} other(s)" if others else "")


def _version_header(model: ServedModel) -> dict[str, str]:
    return {MODEL_VERSION_HEADER: model.version} if model.version else {}


# --- running it -------------------------------------------------------------------------------


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket with Nagle's algorithm off, shared by every worker.

    Created as IPPROTO_TCP with TCP_NODELAY, which accepted connections inherit: with a plain
    ``socket.socket()`` (what uvicorn's own multi-worker mode binds) asyncio leaves Nagle on,
    and every response on a reused connection waits about 40 ms for the client's delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ServingError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    sock.set_inheritable(True)
    return sock


def run_uvicorn(app: Any, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until SIGINT/SIGTERM (the settings every worker shares).

    uvicorn shuts down gracefully on those signals, then raises the signal again for the
    handler that was there before it; the no-op handler installed here turns that into a
    normal return, so that the caller cleans up and the process exits 0.
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        log_config=None,  # keep the logging set up by the command
        access_log=False,  # a log line per request costs more than scoring one
        lifespan="on",
    )
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in stop_signals}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_api(config: ApiConfig) -> str:
    """Serve ``config.model_uri`` over HTTP until stopped (SIGINT or SIGTERM)."""
    sock = listening_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    logger.info("Listening on http://%s:%d", host, port)
    try:
        if config.workers == 1:
            _serve_worker(config, sock)
        else:
            # Fail here, in one line, if the URI names nothing, rather than in every worker.
            ModelFollower(config.model_uri, poll_seconds=0).resolve()
            _supervise(config, sock)
    finally:
        sock.close()
    return f"stopped serving {config.model_uri} on http://{host}:{port}"


def _serve_worker(
    config: ApiConfig, sock: socket.socket, wake_ups: WorkerWakeUps | None = None
) -> None:
    webhook_secret = webhook_secret_from_environment()
    follower = ModelFollower(
        config.model_uri,
        config.poll_seconds,
        after_swap=settle_memory,
        wake_on_demand=webhook_secret is not None,
    )
    # Stopped while loading (before uvicorn handles signals): unwind, so the model's local
    # files are removed, instead of dying on the spot.
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        follower.load()
    finally:
        signal.signal(signal.SIGTERM, previous)
    relay_stop = threading.Event()
    try:
        online = open_online_service(config, follower.current)
        settle_memory()
        if wake_ups is not None:
            wake_ups.relay(follower, relay_stop)
        try:
            app = create_app(
                follower,
                config.max_body_bytes,
                config.extra_columns,
                online,
                webhook_secret=webhook_secret,
                wake_workers=wake_ups.announce if wake_ups is not None else None,
            )
            run_uvicorn(app, sock)
        finally:
            online.close()
    finally:
        relay_stop.set()
        follower.close()


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def settle_memory() -> None:
    """Collect garbage once, then hide every surviving object from the garbage collector.

    MLflow, pandas and the model leave some 300,000 long-lived objects; a full collection walks
    all of them (0.3 s measured here), and the collections that requests trigger from time to
    time would stall whichever request is running. Frozen objects are still freed by reference
    counting; after a swap the old version's cycles are collected first, so they do not pile up.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _worker_main(
    config: ApiConfig, sock: socket.socket, wake_ups: WorkerWakeUps | None = None
) -> None:
    """Entry point of a spawned worker process."""
    from fraud_detection.cli import configure_logging

    configure_logging()
    try:
        _serve_worker(config, sock, wake_ups)
    except PipelineError as error:
        logger.error("%s", error)
        raise SystemExit(1) from None


# How a worker ends when it is stopped: uvicorn's clean exit (0), the loading phase's
# SystemExit(128 + signal), or the default action of the signal (still importing).
_STOPPED_EXIT_CODES = frozenset(
    code for signum in (signal.SIGINT, signal.SIGTERM) for code in (0, -signum, 128 + signum)
)


def _supervise(config: ApiConfig, sock: socket.socket) -> None:
    """Run ``config.workers`` worker processes on ``sock``; stop them all on a signal.

    Workers are spawned (not forked: XGBoost's thread pool does not survive a fork) and each
    loads the model itself. If one dies, the others are stopped and the command fails, so that
    whatever supervises the service (systemd, Kubernetes) restarts it whole.
    """
    context = multiprocessing.get_context("spawn")
    # A registry webhook reaches one worker: it tells the others through these.
    wake_ups = WorkerWakeUps(context) if webhook_secret_from_environment() else None
    workers = [
        context.Process(
            target=_worker_main, args=(config, sock, wake_ups), name=f"scoring-worker-{i}"
        )
        for i in range(config.workers)
    ]
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for worker in workers:
            worker.start()
        logger.info("Started %d workers: %s", len(workers), [w.pid for w in workers])
        failed = None
        while not stopping.is_set():
            multiprocessing.connection.wait([w.sentinel for w in workers], timeout=0.5)
            ended = [w for w in workers if w.exitcode is not None]
            failed = next((w for w in ended if w.exitcode not in _STOPPED_EXIT_CODES), None)
            if ended:
                # A crash stops the service (and fails it); a worker that was stopped (the
                # signal sent to the whole group reaches the workers too, loading or serving)
                # stops the service cleanly.
                break
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed is not None:
        raise ServingError(f"worker {failed.name} (pid {failed.pid}) exited with {failed.exitcode}")
