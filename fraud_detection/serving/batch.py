"""Batch scoring with a registered model: a file of transactions in, the same rows scored out.

The model URI is any MLflow model URI: ``models:/fraud-detector@champion`` (the default),
``models:/fraud-detector@challenger``, ``models:/fraud-detector/3`` or ``models:/<model id>``.
The file is read, featured, scored and written in chunks of ``chunk_rows`` rows, so a file
larger than memory works; the output appears (renamed into place) only once every row is scored.

Raw transactions get their features from the same code as training (``features.add_features``),
with the label delay and the feature windows the model was trained with (read from the model
itself). The time windows look back up to the longest window (customers, 30 days by default) and
the longest window plus the delay (terminals), so a history buffer of that much time of
transactions is carried from chunk to chunk, and the file must be in time order:
the timestamp never decreases from one row to the next (rows at the same instant may come in
any order). A file out of order is refused with the first offending row; sort it first. Within
that rule the features are exactly those of scoring the whole file at once. A file that already
holds the model's feature columns is scored as it is, in any order.

``--reasons k`` adds the model's k reason codes per row after its decision (the columns of
``pyfunc.reason_column_names``, as ``mlflow models serve`` answers ``"params": {"reasons": k}``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fraud_detection.config import (
    PARQUET_SUFFIXES,
    BatchConfig,
    ConfigError,
    DataConfig,
    FeatureWindows,
    TransactionColumns,
    parse_duration,
)
from fraud_detection.data.features import DEFAULT_WINDOWS, add_features
from fraud_detection.data.reading import read_chunks
from fraud_detection.data.validation import prepare_transactions
from fraud_detection.errors import DataError
from fraud_detection.modelling.pyfunc import DECISION_COLUMN, REASONS_PARAM, feature_recipe
from fraud_detection.serving.follower import ModelFollower, ServedModel, requested_reasons
from fraud_detection.serving.protocol import RequestError

logger = logging.getLogger(__name__)

_ROW = "__row__"  # position of a row in its chunk, to put featured rows back in file order
STAGES = ("read", "features", "predict", "write")


@dataclass
class BatchReport:
    """What a batch run did, and how fast each stage went."""

    model: ServedModel
    model_uri: str
    output: str
    rows: int = 0
    alerts: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def rows_per_second(self, stage: str) -> float:
        return self.rows / self.seconds[stage] if self.seconds[stage] > 0 else float("inf")

    def summary(self) -> str:
        version = f" (version {self.model.version})" if self.model.version else ""
        total = sum(self.seconds.values())
        stages = ", ".join(f"{stage} {self.rows_per_second(stage):,.0f}" for stage in STAGES)
        return (
            f"scored {self.rows} transactions with {self.model_uri}{version}: "
            f"{self.alerts} alerts -> {self.output}\n"
            f"rows/s by stage: {stages}; overall {self.rows / total if total else 0:,.0f} "
            f"({total:.1f} s)"
        )


def score_batch(config: BatchConfig) -> str:
    """Score ``config.input`` with ``config.model_uri`` into ``config.output`` (on Spark with
    ``--engine spark``: ``spark.batch``, a Parquet directory out)."""
    if config.engine == "spark":
        from fraud_detection.spark import batch as spark_batch  # PySpark is an optional extra

        return spark_batch.score_batch(config)
    follower = ModelFollower(config.model_uri, poll_seconds=0)
    model = follower.load()
    try:
        check_reasons(model, config.reasons)
        return score_file(model, config).summary()
    finally:
        follower.close()


def check_reasons(model: ServedModel, reasons: int) -> None:
    """Refuse ``--reasons`` the model cannot answer before any row is read (on one row).

    Raises:
        ConfigError: more reasons than features, or a model kind without reason codes.
    """
    if reasons == 0:
        return
    try:
        requested_reasons({REASONS_PARAM: reasons}, model)
        model.answer(np.zeros((1, len(model.schema.columns))), reasons)
    except RequestError as error:
        raise ConfigError(f"--reasons {reasons}: {error.message}") from error


def score_file(model: ServedModel, config: BatchConfig) -> BatchReport:
    """Stream ``config.input`` through ``model`` into ``config.output``; time every stage."""
    report = BatchReport(model=model, model_uri=config.model_uri, output=config.output)
    settings = model.config
    features = list(settings.get("features", model.schema.names))
    stream: StreamingFeatures | None = None
    chunks = read_chunks(config.input, config.chunk_rows)
    with ChunkWriter(config.output) as writer:
        while True:
            started = time.perf_counter()
            chunk = next(chunks, None)
            report.seconds["read"] += time.perf_counter() - started
            last = chunk is None
            if last and stream is None:
                break
            started = time.perf_counter()
            if stream is None and set(features) <= set(chunk.columns):
                ready, values = chunk, _feature_values(chunk, features, config.input, report.rows)
            else:
                if stream is None:
                    if not settings.get("engineered_features", True):
                        missing = sorted(set(features) - set(chunk.columns))
                        raise DataError(
                            f"{config.input}: missing feature column(s) {', '.join(missing)}"
                        )
                    delay, windows = feature_recipe(settings)
                    stream = StreamingFeatures(config.columns, delay, config.input, windows)
                ready, featured = stream.finish() if last else stream.push(chunk)
                values = featured[features].to_numpy(np.float64)
            report.seconds["features"] += time.perf_counter() - started
            if len(ready):
                started = time.perf_counter()
                predictions = model.answer(values, config.reasons)
                report.seconds["predict"] += time.perf_counter() - started
                started = time.perf_counter()
                scored = _with_predictions(ready.reset_index(drop=True), predictions)
                writer.write(scored)
                report.seconds["write"] += time.perf_counter() - started
                report.rows += len(scored)
                report.alerts += int(np.sum(predictions[DECISION_COLUMN]))
            if last:
                break
        if report.rows == 0:
            raise DataError(f"{config.input}: no rows")
        started = time.perf_counter()
    report.seconds["write"] += time.perf_counter() - started  # closing and renaming the file
    return report


def output_column(name: str, input_columns: pd.Index) -> str:
    """Where the model's output ``name`` goes in the scored file: its own name, or
    ``predicted_<name>`` when the input has a column of that name (a label column called
    ``is_fraud``, say), which is kept as it is."""
    return f"predicted_{name}" if name in input_columns else name


def _with_predictions(rows: pd.DataFrame, predictions: Mapping[str, np.ndarray]) -> pd.DataFrame:
    scored = rows.copy(deep=False)
    for name, column in predictions.items():
        scored[output_column(str(name), rows.columns)] = column
    return scored


def _feature_values(
    chunk: pd.DataFrame, features: list[str], source: str, first_row: int
) -> np.ndarray:
    """The feature columns of a file that already holds them, checked like a request."""
    for name in features:
        values = chunk[name]
        if not pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            raise DataError(f"{source}: column {name} must be numeric, found {values.dtype}")
        missing = values.isna().to_numpy()
        if missing.any():
            row = first_row + int(np.flatnonzero(missing)[0])
            raise DataError(
                f"{source}: column {name} has missing value(s), first at row {row} "
                "(counting from 0, header excluded)"
            )
    return chunk[features].to_numpy(np.float64)


class StreamingFeatures:
    """Features of raw transactions that arrive in time-ordered chunks.

    ``push`` takes the next rows of the file and returns the rows whose features are now final,
    in file order, with those features. Two things make the result equal to featuring the whole
    file at once:

    - a history of the prepared transactions of the last longest window + delay, which every
      time window of the next rows can reach, is kept from chunk to chunk;
    - the rows at the latest instant of a chunk are held back to the next one: rows at the same
      instant are ordered by transaction id (as ``prepare_transactions`` does for training), and
      more of them may follow in the next chunk.
    """

    def __init__(
        self,
        columns: TransactionColumns,
        delay_days: str | float | pd.Timedelta,
        source: str,
        windows: FeatureWindows = DEFAULT_WINDOWS,
    ) -> None:
        self.columns = columns
        self.delay = parse_duration("delay_days", delay_days)
        self.windows = windows
        self.source = source
        self._lookback = windows.longest + self.delay
        self._history: pd.DataFrame | None = None
        self._pending = pd.DataFrame()
        self._emitted = 0  # rows of the file already returned
        self._warned_unlabelled = False
        self._history_columns = list(
            dict.fromkeys(
                [
                    columns.timestamp_column,
                    columns.customer_column,
                    columns.terminal_column,
                    columns.amount_column,
                    columns.label_column,
                ]
            )
        )

    def push(self, chunk: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Add the next rows of the file; return (raw rows now final, their features)."""
        return self._advance(chunk, final=False)

    def finish(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Return the rows held back (the end of the file has been reached)."""
        return self._advance(None, final=True)

    def _advance(
        self, chunk: pd.DataFrame | None, final: bool
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        parts = [frame for frame in (self._pending, chunk) if frame is not None and len(frame)]
        if not parts:
            return pd.DataFrame(), pd.DataFrame()
        batch = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        batch = batch.reset_index(drop=True)
        prepared = self._prepare(batch)
        times = np.empty(len(batch), dtype=np.int64)
        times[prepared[_ROW].to_numpy()] = pd.DatetimeIndex(
            prepared[self.columns.timestamp_column]
        ).asi8
        self._check_order(times)
        # Hold back the rows at the latest instant: the next chunk may have more of them.
        cut = len(batch) if final else int(np.searchsorted(times, times[-1], side="left"))
        self._pending = batch.iloc[cut:]
        if cut == 0:
            return pd.DataFrame(), pd.DataFrame()
        ready = prepared[prepared[_ROW] < cut]
        history_length = 0 if self._history is None else len(self._history)
        combined = pd.concat(
            [self._history, ready[[*self._history_columns, _ROW]]], ignore_index=True
        )
        featured = add_features(combined, self.columns, delay_days=self.delay, windows=self.windows)
        new = featured.iloc[history_length:]
        new = new.iloc[np.argsort(new[_ROW].to_numpy(), kind="stable")].reset_index(drop=True)
        # Every row still within reach of a later row's windows (the file is in time order,
        # so the latest time here is the last ready row's).
        stamps = pd.DatetimeIndex(combined[self.columns.timestamp_column])
        keep = stamps > stamps.max() - self._lookback
        self._history = combined.loc[keep, [*self._history_columns, _ROW]].reset_index(drop=True)
        self._history[_ROW] = -1
        self._emitted += cut
        return batch.iloc[:cut], new

    def _prepare(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Check and parse the columns the features need (``prepare_transactions``)."""
        columns = self.columns
        wanted = [*self._history_columns, columns.id_column]
        work = batch[[name for name in dict.fromkeys(wanted) if name in batch.columns]].copy()
        work[_ROW] = np.arange(len(batch))
        if columns.label_column not in work.columns:
            if not self._warned_unlabelled:
                # Labels of past transactions feed the terminal fraud rates; without any, those
                # features are 0 and the model scores on customer behaviour alone.
                logger.warning(
                    "No %s column: terminal risk features will be 0", columns.label_column
                )
                self._warned_unlabelled = True
            work[columns.label_column] = np.nan
        try:
            return prepare_transactions(
                work, DataConfig(columns=columns), source=self.source, require_labels=False
            )
        except DataError as error:
            # Its messages name the column and the problem; row numbers there are the chunk's.
            raise DataError(f"{error} (rows {self._emitted} onwards)") from error

    def _check_order(self, times: np.ndarray) -> None:
        backwards = np.flatnonzero(np.diff(times) < 0)
        if backwards.size:
            row = self._emitted + int(backwards[0]) + 1
            raise DataError(
                f"{self.source}: rows must be in time order to be scored in chunks, but row "
                f"{row} (counting from 0) is earlier than the row before it in column "
                f"{self.columns.timestamp_column}; sort the file by that column"
            )


class ChunkWriter:
    """Append scored chunks to a CSV or Parquet file that appears only when complete."""

    def __init__(self, output: str) -> None:
        self.path = Path(output)
        self.parquet = self.path.name.lower().endswith(PARQUET_SUFFIXES)
        self._partial: Path | None = None
        self._parquet_writer = None
        self._schema = None

    def __enter__(self) -> ChunkWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent
        )
        os.close(handle)
        self._partial = Path(partial)
        return self

    def write(self, frame: pd.DataFrame) -> None:
        if self.parquet:
            self._write_parquet(frame)
        else:
            first = self._schema is None
            frame.to_csv(self._partial, mode="w" if first else "a", header=first, index=False)
            self._schema = True

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._parquet_writer is None:
            self._schema = table.schema
            self._parquet_writer = pq.ParquetWriter(self._partial, table.schema)
        elif not table.schema.equals(self._schema):
            try:
                table = table.cast(self._schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as error:
                changed = [
                    name
                    for name in self._schema.names
                    if name in table.schema.names
                    and table.schema.field(name).type != self._schema.field(name).type
                ]
                raise DataError(
                    f"{self.path}: column(s) {', '.join(changed) or '?'} change type from one "
                    "chunk to the next (CSV types are guessed per chunk); write CSV, or pass "
                    "Parquet input"
                ) from error
        self._parquet_writer.write_table(table)

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if self._parquet_writer is not None:
            self._parquet_writer.close()
        assert self._partial is not None
        if kind is None:
            self._partial.replace(self.path)
        else:
            self._partial.unlink(missing_ok=True)
