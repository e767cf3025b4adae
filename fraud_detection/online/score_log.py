"""What the live service scored, and the labels fed back, appended to CSV files for ``monitor``.

``serve.py api --score-log DIR`` writes two folders:

- ``DIR/scored/scored-<date>-<pid>.csv``: one row per transaction scored by ``POST
  /transactions`` (a retry answered as a duplicate is not logged again): the columns
  ``serve.py batch`` writes for the same raw transactions (id, time, card, terminal, amount,
  ``fraud_probability``, ``is_fraud``), then the model's features as the service computed them
  and ``model_version``, the version that scored the row;
- ``DIR/labels/labels-<date>-<pid>.csv``: one row per label recorded by ``POST /feedback``
  (id, label, ``received_at``: when it arrived, UTC).

``monitor --scored DIR/scored --labels DIR/labels`` reads them as they are. Scoring never waits
for the disk: a request only queues what it scored (one deque append, no formatting); a thread
formats and appends the rows every ``flush_seconds`` (1 s), or sooner when ``flush_requests``
requests are queued, each file in one write of complete lines, so a reader never sees half a
row (the monitor also ignores an unterminated last line). One file per writer, created
exclusively (``--workers`` never interleave inside a file), a new one each UTC day; ``close``
writes what is queued. A write that fails (disk full, permissions) is logged and its rows
counted as lost (``fraud_online_score_log_rows_total{outcome="lost"}``): the log never fails a
request. Why a writer thread: formatting a row costs about 25 us of Python against about 3 us
to queue it, on a request of about 1.3 ms of CPU (bench/serving.py, docs/serving.md).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from fraud_detection.config import TransactionColumns
from fraud_detection.errors import PipelineError
from fraud_detection.modelling.pyfunc import DECISION_COLUMN, PROBABILITY_COLUMN
from fraud_detection.online.requests import Label, RawTransaction

logger = logging.getLogger(__name__)

SCORED_FOLDER = "scored"
LABELS_FOLDER = "labels"
VERSION_COLUMN = "model_version"
RECEIVED_COLUMN = "received_at"
FLUSH_SECONDS = 1.0
FLUSH_REQUESTS = 1_000
# The writer lets the event loop take the GIL every this many rows formatted (about 1.2 ms).
YIELD_ROWS = 50
YIELD_SECONDS = 0.0002


def version_label(version: str | None, uri: str) -> str:
    """What ``model_version`` holds for a model: its registry version, else its URI."""
    return version or uri


# Named tuples, not frozen dataclasses: built on the request path (0.3 us against 2 us).
class _Scored(NamedTuple):
    received: float
    transactions: Sequence[RawTransaction]
    features: Sequence[Sequence[float]]
    probabilities: Sequence[float]
    decisions: Sequence[int]
    version: str


class _Labelled(NamedTuple):
    received: float
    labels: Sequence[Label]


class ScoreLog:
    """The write-behind log of one worker process.

    Args:
        directory: Where the ``scored`` and ``labels`` folders go (created if needed).
        columns: The raw fields' names (the transaction table's).
        features: The model's feature names, in its input order.
        flush_seconds: Longest time a scored row waits in memory.
        flush_requests: Queued requests that wake the writer before ``flush_seconds``.
        clock: Wall-clock seconds (tests move it across midnight).

    Raises:
        PipelineError: the directory cannot be created or written.
    """

    def __init__(
        self,
        directory: str | Path,
        columns: TransactionColumns,
        features: Sequence[str],
        flush_seconds: float = FLUSH_SECONDS,
        flush_requests: int = FLUSH_REQUESTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.columns = columns
        self.features = tuple(features)
        self.flush_seconds = flush_seconds
        self.flush_requests = flush_requests
        self.clock = clock
        self.counts = {"written": 0, "lost": 0}
        self.scored_header = scored_columns(columns, self.features)
        # The features not already among the raw columns (TX_AMOUNT), by position.
        raw = raw_columns(columns)
        self._logged_features = [i for i, name in enumerate(self.features) if name not in raw]
        self._queue: deque[_Scored | _Labelled] = deque()
        self._paths: dict[tuple[str, str], Path] = {}
        self._failing = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._flushing = threading.Lock()
        for folder in (SCORED_FOLDER, LABELS_FOLDER):
            try:
                (self.directory / folder).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise PipelineError(
                    f"--score-log {directory}: cannot create it ({error})"
                ) from None
            if not os.access(self.directory / folder, os.W_OK):
                raise PipelineError(f"--score-log {directory}/{folder}: not writable")
        self._writer = threading.Thread(target=self._run, name="score-log", daemon=True)
        self._writer.start()

    def scored(
        self,
        transactions: Sequence[RawTransaction],
        features: Sequence[Sequence[float]],
        probabilities: Sequence[float],
        decisions: Sequence[int],
        version: str,
    ) -> None:
        """Queue the rows of one request (formatted and written by the writer thread)."""
        self._queue.append(
            _Scored(self.clock(), transactions, features, probabilities, decisions, version)
        )
        if len(self._queue) >= self.flush_requests:
            self._wake.set()

    def labelled(self, labels: Sequence[Label]) -> None:
        """Queue the labels of one ``POST /feedback`` (recorded by the state)."""
        self._queue.append(_Labelled(self.clock(), labels))

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Append everything queued so far to its file (the writer thread calls it).

        Formatting costs about 25 us of Python per row, holding the GIL that the event loop
        needs, so the writer pauses every ``YIELD_ROWS`` rows and a request waiting for the GIL
        runs: in one go, a second's rows at c=8 (about 500) would hold it for over 10 ms
        (docs/serving.md, "The score log").
        """
        with self._flushing:
            files: dict[tuple[str, str], list[str]] = {}
            counts: dict[tuple[str, str], int] = {}
            since_pause = 0
            while self._queue:
                item = self._queue.popleft()
                day = time.strftime("%Y-%m-%d", time.gmtime(item.received))
                if isinstance(item, _Scored):
                    key, rows = (SCORED_FOLDER, day), self._scored_rows(item)
                else:
                    received = _timestamp(item.received, decimals=3)
                    rows = [[label.id, label.label, received] for label in item.labels]
                    key = (LABELS_FOLDER, day)
                text = io.StringIO()
                csv.writer(text, lineterminator="\n").writerows(rows)
                files.setdefault(key, []).append(text.getvalue())
                counts[key] = counts.get(key, 0) + len(rows)
                since_pause += len(rows)
                if since_pause >= YIELD_ROWS:
                    time.sleep(YIELD_SECONDS)
                    since_pause = 0
            for (folder, day), texts in files.items():
                self._append(folder, day, "".join(texts), counts[(folder, day)])

    def _scored_rows(self, item: _Scored) -> list[list[Any]]:
        rows = []
        for transaction, values, probability, decision in zip(
            item.transactions, item.features, item.probabilities, item.decisions, strict=True
        ):
            row = [
                transaction.id,
                _timestamp(transaction.seconds),
                transaction.card,
                transaction.terminal,
                transaction.amount,
                float(probability),
                int(decision),
            ]
            row += [values[i] for i in self._logged_features]
            row.append(item.version)
            rows.append(row)
        return rows

    def _append(self, folder: str, day: str, text: str, rows: int) -> None:
        try:
            _write_all(self._file(folder, day), text.encode(), os.O_APPEND)
        except OSError as error:
            self.counts["lost"] += rows
            if not self._failing:  # once per failing streak, not once a second
                logger.error("Score log: %d row(s) lost, cannot write %s: %s", rows, folder, error)
            self._failing = True
            return
        self._failing = False
        self.counts["written"] += rows

    @property
    def labels_header(self) -> tuple[str, ...]:
        return (self.columns.id_column, self.columns.label_column, RECEIVED_COLUMN)

    def _file(self, folder: str, day: str) -> Path:
        """This writer's file of ``day``, created with its header on first use. A name already
        taken (another writer of this process, or an earlier process with the same pid) gets
        the next suffix: a writer only ever appends to a file it created."""
        known = self._paths.get((folder, day))
        if known is not None:
            return known
        header = self.scored_header if folder == SCORED_FOLDER else self.labels_header
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(header)
        stem = f"{folder}-{day}-{os.getpid()}"
        for attempt in range(1_000):
            path = self.directory / folder / (f"{stem}-{attempt}.csv" if attempt else f"{stem}.csv")
            try:
                _write_all(path, text.getvalue().encode(), os.O_EXCL)
            except FileExistsError:
                continue
            self._paths[(folder, day)] = path
            return path
        raise OSError(f"no free file name for {stem}.csv")

    def render_metrics(self) -> list[str]:
        """Prometheus lines: rows written and lost."""
        lines = [
            "# HELP fraud_online_score_log_rows_total Rows of the score log (--score-log) "
            "by outcome.",
            "# TYPE fraud_online_score_log_rows_total counter",
        ]
        for outcome, count in self.counts.items():
            lines.append(f'fraud_online_score_log_rows_total{{outcome="{outcome}"}} {count}')
        return lines

    def close(self) -> None:
        """Stop the writer and write what is still queued."""
        self._stopping.set()
        self._wake.set()
        self._writer.join()
        self.flush()


def raw_columns(columns: TransactionColumns) -> tuple[str, ...]:
    """What ``serve.py batch`` writes for a file of raw transactions: its columns, the score and
    the decision."""
    return (
        columns.id_column,
        columns.timestamp_column,
        columns.customer_column,
        columns.terminal_column,
        columns.amount_column,
        PROBABILITY_COLUMN,
        DECISION_COLUMN,
    )


def scored_columns(columns: TransactionColumns, features: Sequence[str]) -> tuple[str, ...]:
    """The scored log's header: ``raw_columns``, the features not already among them (the
    amount), the version."""
    raw = raw_columns(columns)
    return (*raw, *(name for name in features if name not in raw), VERSION_COLUMN)


def _timestamp(seconds: float, decimals: int = 0) -> str:
    """UTC text of epoch seconds as the tables hold times (no offset): 2018-05-03 14:02:11."""
    moment = datetime.fromtimestamp(seconds, UTC)
    if not decimals:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[: decimals - 6]


def _write_all(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` (complete lines) to ``path``, created if needed, opened with ``mode``
    (``O_APPEND``; ``O_EXCL``: only if it does not exist yet)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | mode, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
    finally:
        os.close(descriptor)
