"""Raw transactions in, scores out: the online state tied to the model being served.

``OnlineService`` is what the ``/transactions`` and ``/feedback`` routes call: it checks a
request whole, records it in the state, computes the features (``features``), scores them with
the model version the request started with, and counts what it did for ``/metrics``.
``open_online_service`` builds it when a worker starts (warm start from ``--history``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from fraud_detection.config import ApiConfig, DataConfig, TransactionColumns
from fraud_detection.data.features import add_features
from fraud_detection.data.reading import read_table
from fraud_detection.data.validation import prepare_transactions
from fraud_detection.errors import DataError, PipelineError
from fraud_detection.modelling.pyfunc import DECISION_COLUMN, PROBABILITY_COLUMN
from fraud_detection.online.errors import (
    NotServableError,
    OnlineError,
    OrderConflictError,
)
from fraud_detection.online.features import OnlineRecipe, feature_vector, transaction_features
from fraud_detection.online.requests import (
    RawTransaction,
    TransactionsRequest,
    parse_feedback,
    parse_transactions,
)
from fraud_detection.online.score_log import ScoreLog, version_label
from fraud_detection.online.state import (
    Features,
    HistoryRow,
    MemoryState,
    Observation,
    OnlineState,
)
from fraud_detection.serving.follower import ServedModel, requested_reasons
from fraud_detection.serving.protocol import RequestError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A retry that reaches another worker while the first is still scoring waits this long (Redis).
_PENDING_WAIT_SECONDS = 2.0
# The thread calling Redis: one round trip at a time, carrying every request queued meanwhile.
_STATE_THREADS = 1


class OnlineService:
    """The raw-transaction routes of one worker.

    Args:
        state: Where the entries live; None when raw transactions cannot be served here.
        columns: The JSON field names (the transaction table's column names).
        unavailable: Why not, when ``state`` is None (the routes answer it with 409).
        score_log: Where what was scored and fed back is appended (``--score-log``), if set.
    """

    def __init__(
        self,
        state: OnlineState | None,
        columns: TransactionColumns | None = None,
        unavailable: str = "",
        score_log: ScoreLog | None = None,
    ) -> None:
        self.state = state
        self.columns = columns or TransactionColumns()
        self.unavailable = unavailable
        self.score_log = score_log
        self.counts: dict[tuple[str, str], int] = {}
        self._checked: ServedModel | None = None  # the last model whose recipe matched
        self._threads: ThreadPoolExecutor | None = None  # the Redis calls' (started when needed)
        self._queued: list[tuple[Sequence[RawTransaction], asyncio.Future]] = []
        self._recording = False  # a task records the queued requests
        self._recorder: asyncio.Task | None = None

    async def score(self, body: bytes, model: ServedModel) -> bytes:
        """Answer a ``POST /transactions`` body (JSON bytes).

        Raises:
            OnlineError: a refusal with its status; nothing was recorded.
        """
        state = self._state_for(model)
        try:
            request = parse_transactions(body, self.columns)
            reasons = requested_reasons(request.params, model)
            observations = await self._record(state, request.transactions)
        except (OnlineError, RequestError):
            self._count("transactions", "refused")
            raise
        computed = {
            o.transaction.key: _vector(o, state.recipe) for o in observations if not o.duplicate
        }
        if computed:
            state.remember(computed)  # Redis: queued, written by the state's own thread
        vectors = [
            await self._recorded_features(o, state) if o.duplicate else computed[o.transaction.key]
            for o in observations
        ]
        for observation in observations:
            self._count("transactions", "duplicate" if observation.duplicate else "scored")
        predictions = score_rows(model, np.array(vectors, dtype=np.float64), reasons)
        if self.score_log is not None:
            self._log_scored(observations, vectors, predictions, model)
        return _answer(request, observations, vectors, predictions, model, state.recipe)

    async def feedback(self, body: bytes) -> bytes:
        """Answer a ``POST /feedback`` body: labels of transactions already scored."""
        state = self._state_for(None)
        try:
            labels = parse_feedback(body, self.columns)
            await self._io(state.feedback, labels)
        except OnlineError:
            self._count("feedback", "refused")
            raise
        if self.score_log is not None:
            self.score_log.labelled(labels)
        for _ in labels:
            self._count("feedback", "recorded")
        return json.dumps({"recorded": len(labels)}).encode()

    def _log_scored(
        self,
        observations: Sequence[Observation],
        vectors: Sequence[Features],
        predictions: Mapping[str, Any],
        model: ServedModel,
    ) -> None:
        """Queue the new transactions for the score log (a duplicate was logged the first time,
        by whichever worker recorded it)."""
        fresh = [i for i, o in enumerate(observations) if not o.duplicate]
        if not fresh:
            return
        everything = len(fresh) == len(observations)
        probabilities = np.asarray(predictions[PROBABILITY_COLUMN])
        decisions = np.asarray(predictions[DECISION_COLUMN])
        self.score_log.scored(  # type: ignore[union-attr] (checked by the caller)
            [observations[i].transaction for i in fresh],
            vectors if everything else [vectors[i] for i in fresh],
            probabilities if everything else probabilities[fresh],
            decisions if everything else decisions[fresh],
            version_label(model.version, model.uri),
        )

    def _state_for(self, model: ServedModel | None) -> OnlineState:
        if self.state is None:
            raise NotServableError(self.unavailable)
        if model is not None and model is not self._checked:
            # The alias may have moved to a model of other windows or delay than the state's.
            recipe = OnlineRecipe.of_model(model.config, model.version)
            if recipe != self.state.recipe:
                raise NotServableError(
                    f"model version {model.version} needs {recipe.describe()}, the online state "
                    f"holds {self.state.recipe.describe()}; restart the service to rebuild it"
                )
            self._checked = model
        return self.state

    async def _io(self, call: Callable[..., T], *args: Any) -> T:
        """Call the state: in memory at once; over the network in a thread, so that the event
        loop answers other requests while this one waits for Redis (one worker measured 310
        requests/s at concurrency 8 with the waits on the loop, bench/serving.py)."""
        if self.state is None or not self.state.remote:
            return call(*args)
        if self._threads is None:
            self._threads = ThreadPoolExecutor(_STATE_THREADS, thread_name_prefix="online-state")
        return await asyncio.get_running_loop().run_in_executor(self._threads, call, *args)

    async def _record(
        self, state: OnlineState, transactions: Sequence[RawTransaction]
    ) -> list[Observation]:
        """``state.record``; over the network, the requests waiting meanwhile go together in one
        round trip (``record_many``) from a thread, so that the event loop answers others."""
        if not state.remote:
            return state.record(transactions)
        future: asyncio.Future[list[Observation]] = asyncio.get_running_loop().create_future()
        self._queued.append((transactions, future))
        if not self._recording:
            self._recording = True
            self._recorder = asyncio.create_task(self._record_queued(state))
        return await future

    async def _record_queued(self, state: OnlineState) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    answers = await self._io(state.record_many, [t for t, _ in batch])
                except Exception as error:  # noqa: BLE001 (re-raised in each waiting request)
                    for _, future in batch:
                        future.set_exception(error)
                    continue
                for (_, future), answer in zip(batch, answers, strict=True):
                    if isinstance(answer, OrderConflictError):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            self._recording = False

    async def _recorded_features(self, observation: Observation, state: OnlineState) -> Features:
        """A duplicate's features, recorded the first time (perhaps by another worker)."""
        features = observation.features
        deadline = time.monotonic() + _PENDING_WAIT_SECONDS
        while features is None and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # another worker recorded it, and computes its features
            features = await self._io(state.recorded_features, observation.transaction.key)
        if features is None:
            # Recorded by a worker that has not stored its features (or died before it could).
            raise OrderConflictError(
                "a transaction of this request is still being scored by another worker; retry"
            )
        return features

    def _count(self, route: str, outcome: str) -> None:
        self.counts[(route, outcome)] = self.counts.get((route, outcome), 0) + 1

    def render_metrics(self) -> str:
        """Prometheus lines: raw transactions and feedback labels, by outcome."""
        lines = [
            "# HELP fraud_online_transactions_total Raw transactions by outcome.",
            "# TYPE fraud_online_transactions_total counter",
            "# HELP fraud_online_feedback_total Feedback labels by outcome.",
            "# TYPE fraud_online_feedback_total counter",
        ]
        for (route, outcome), count in sorted(self.counts.items()):
            lines.append(f'fraud_online_{route}_total{{outcome="{outcome}"}} {count}')
        if self.score_log is not None:
            lines += self.score_log.render_metrics()
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        if self.score_log is not None:
            self.score_log.close()  # a clean stop writes what is still queued
        if self._threads is not None:
            self._threads.shutdown()
        if self.state is not None:
            self.state.close()


def _vector(observation: Observation, recipe: OnlineRecipe) -> Features:
    features = transaction_features(
        observation.transaction, observation.card, observation.terminal, recipe
    )
    return tuple(feature_vector(features, recipe))


def score_rows(model: ServedModel, values: np.ndarray, reasons: int = 0) -> dict[str, Any]:
    """The model's answer for ``values`` (its feature order), with ``reasons`` reason codes:
    the columns /invocations answers for the same rows (``ServedModel.answer``)."""
    predictions = model.answer(values, reasons)
    if not isinstance(predictions, Mapping):
        predictions = {PROBABILITY_COLUMN: np.asarray(predictions)}
    return {str(name): column for name, column in predictions.items()}


def _answer(
    request: TransactionsRequest,
    observations: Sequence[Observation],
    vectors: Sequence[Features],
    predictions: Mapping[str, Any],
    model: ServedModel,
    recipe: OnlineRecipe,
) -> bytes:
    rows = []
    for i, (observation, vector) in enumerate(zip(observations, vectors, strict=True)):
        row: dict[str, Any] = {"id": observation.transaction.id}
        for name, column in predictions.items():
            value = column[i]
            row[name] = value.item() if isinstance(value, np.generic) else value
        row["model_version"] = model.version
        row["duplicate"] = observation.duplicate
        if request.with_features:
            row["features"] = dict(zip(recipe.features, vector, strict=True))
        rows.append(row)
    return json.dumps({"predictions": rows}).encode()


# --- starting ------------------------------------------------------------------------------------


def open_online_service(config: ApiConfig, model: ServedModel) -> OnlineService:
    """The online routes of a worker: the state (memory or ``--state-url``), warm-started, and
    the score log (``--score-log``).

    Raises:
        PipelineError: ``--history``, ``--state-url`` or ``--score-log`` was given for a model
            that cannot score raw transactions, the history file is unusable, Redis cannot be
            reached, or the score log's directory cannot be written.
    """
    try:
        recipe = OnlineRecipe.of_model(model.config, model.version)
    except NotServableError as error:
        if config.history or config.state_url:
            raise PipelineError(f"--history/--state-url: {error}") from None
        if config.score_log:
            raise PipelineError(f"--score-log: {error}") from None
        return OnlineService(None, unavailable=str(error))
    service = _online_state(config, recipe)
    if config.score_log and service.state is not None:
        service.score_log = ScoreLog(config.score_log, TransactionColumns(), recipe.features)
        logger.info("Score log: %s (one file per worker and day)", config.score_log)
    return service


def _online_state(config: ApiConfig, recipe: OnlineRecipe) -> OnlineService:
    """The routes with their state, in memory or in Redis, warm-started from ``--history``."""
    if config.workers > 1 and not config.state_url:
        return OnlineService(
            None,
            unavailable="raw transactions need --state-url when --workers is above 1 (each "
            "worker would keep a state of its own)",
        )
    if not config.state_url:
        state: OnlineState = MemoryState(recipe)
        if config.history:
            loaded = state.load(history_rows(config.history, TransactionColumns(), recipe))
            logger.info("Online state: %d transactions of %s in memory", loaded, config.history)
        return OnlineService(state)
    from fraud_detection.online.redis_state import RedisState

    state = RedisState(config.state_url, recipe)
    if config.history:
        history = config.history
        loaded = state.warm_start_once(lambda: history_rows(history, TransactionColumns(), recipe))
        logger.info(
            "Online state at %s: %s",
            config.state_url,
            "kept" if loaded is None else f"{loaded} transactions of {config.history} loaded",
        )
    return OnlineService(state)


def history_rows(
    source: str, columns: TransactionColumns, recipe: OnlineRecipe
) -> list[HistoryRow]:
    """The transactions of ``source`` that later ones can reach: the last longest window plus
    the delay, time ordered, with their labels (missing: unknown) and their features.

    Raises:
        DataError: the file cannot be read, lacks a column, or has bad values.
    """
    table = read_table(source)
    if columns.id_column not in table.columns:
        raise DataError(
            f"{source}: missing column {columns.id_column}; the online state keeps transactions "
            "by id (retries, feedback)"
        )
    prepared = prepare_transactions(
        table, DataConfig(columns=columns), source=source, require_labels=False
    )
    if columns.label_column not in prepared.columns:
        prepared[columns.label_column] = pd.array([pd.NA] * len(prepared), dtype="Int8")
    featured = add_features(
        prepared,
        columns,
        delay_days=pd.Timedelta(seconds=recipe.delay_seconds),
        windows=recipe.windows,
    )
    seconds = pd.DatetimeIndex(featured[columns.timestamp_column]).as_unit("s").asi8
    recent = featured[seconds > seconds.max() - recipe.terminal_lookback]
    recent_seconds = seconds[seconds > seconds.max() - recipe.terminal_lookback]
    labels = recent[columns.label_column].astype("Float64").to_numpy(np.float64, na_value=np.nan)
    values = recent[list(recipe.features)].to_numpy(np.float64)
    rows = []
    for i, (transaction_id, card, terminal, amount) in enumerate(
        recent[
            [
                columns.id_column,
                columns.customer_column,
                columns.terminal_column,
                columns.amount_column,
            ]
        ].itertuples(index=False, name=None)
    ):
        transaction = RawTransaction(
            id=_plain(transaction_id),
            seconds=int(recent_seconds[i]),
            card=str(_plain(card)),
            terminal=str(_plain(terminal)),
            amount=float(amount),
        )
        label = None if np.isnan(labels[i]) else int(labels[i])
        rows.append(HistoryRow(transaction, label, tuple(float(v) for v in values[i])))
    return rows


def _plain(value: Any) -> int | str:
    """A table's id as the JSON routes take it: an integer, or text."""
    if isinstance(value, np.integer | int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return str(value)
