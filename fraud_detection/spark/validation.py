"""Check a transaction table on Spark with the pandas engine's rules and messages.

The counterpart of ``data.validation``: the same checks in the same order (no rows, missing
columns, timestamps, labels, numeric columns, duplicated ids) and the same one-line messages, so
a bad table fails alike on either engine (tests/spark/test_reading.py runs both on each case).
All the checks of a table take one aggregate over it (one row reaches the driver); only when one
fails does a second small query fetch an example to show.

Timestamps become Spark timestamps (dates, date-times, or numbers read as seconds since the
epoch, as pandas reads them) in the session's time zone, UTC (``session.py``), so hours and days
are those pandas computes on the same values. Spark's parser of date strings is stricter than
pandas' ``format="mixed"``: a string pandas guesses (``04/01/2018``) may be refused here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Row
from pyspark.sql import functions as sf
from pyspark.sql.types import (
    BooleanType,
    DateType,
    DoubleType,
    FloatType,
    NumericType,
    StringType,
    TimestampType,
)

from fraud_detection.config import DataConfig
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.data.validation import required_columns
from fraud_detection.errors import DataError

SECONDS_PER_DAY = 86_400
# The span of pandas' timestamps (years 1677 to 2262): numbers of seconds beyond it are not
# timestamps to pandas, so not here either.
_LARGEST_SECONDS = 9_223_372_036


def prepare_transactions(
    frame: DataFrame, config: DataConfig, source: str, require_labels: bool = True
) -> DataFrame:
    """Check ``frame`` against the schema ``config`` describes; return it with days added.

    The timestamp column becomes a timestamp, the label column 0/1 (``tinyint``), and
    ``DAY_COLUMN`` counts days from the first day's midnight. Rows keep Spark's (lack of) order.

    Raises:
        DataError: naming ``source``, the column and the problem, as ``data.validation`` does.
    """
    columns = config.columns
    if not frame.columns:
        raise DataError(f"{source}: the file is empty")
    if frame.isEmpty():
        raise DataError(f"{source}: no rows")
    _require_columns(frame, required_columns(config, require_labels), source)
    checks = _Checks(
        frame=frame,
        timestamp_name=columns.timestamp_column,
        timestamp=_parsed_timestamp(frame, columns.timestamp_column),
        label=columns.label_column if columns.label_column in frame.columns else None,
        numeric=(
            (columns.amount_column,) if config.engineered_features else config.passthrough_features
        ),
        identifier=columns.id_column if columns.id_column in frame.columns else None,
        labels_required=require_labels,
    )
    counts = frame.agg(*checks.counts()).first()
    checks.raise_first_problem(counts, source)
    checked = frame.withColumn(checks.timestamp_name, checks.timestamp)
    if checks.label is not None:
        label = sf.col(checks.label).try_cast("double").cast("tinyint")
        checked = checked.withColumn(checks.label, label)
    first_day = counts["first_second"] // SECONDS_PER_DAY * SECONDS_PER_DAY
    seconds = sf.unix_seconds(sf.col(checks.timestamp_name))
    return checked.withColumn(
        DAY_COLUMN, sf.floor((seconds - sf.lit(first_day)) / SECONDS_PER_DAY).cast("long")
    )


def _require_columns(frame: DataFrame, needed: list[str], source: str) -> None:
    missing = [name for name in needed if name not in frame.columns]
    if missing:
        available = ", ".join(frame.columns[:20])
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)} (columns found: {available})"
        )


def _parsed_timestamp(frame: DataFrame, name: str) -> Column:
    """The column ``name`` as timestamps; null where a value is not one (as pandas' NaT)."""

    value, data_type = sf.col(name), frame.schema[name].dataType
    if isinstance(data_type, TimestampType):
        return value
    if isinstance(data_type, NumericType):
        seconds = value.cast("double")
        in_range = ~sf.isnan(seconds) & (sf.abs(seconds) <= _LARGEST_SECONDS)
        return sf.when(in_range, sf.timestamp_seconds(seconds))
    if isinstance(data_type, StringType):
        return value.try_cast("timestamp")
    if isinstance(data_type, DateType) or data_type.typeName() == "timestamp_ntz":
        return value.cast("timestamp")
    return sf.lit(None).cast("timestamp")


@dataclass(frozen=True)
class _Checks:
    """The rules a table must keep, each counted in one aggregate and reported in turn."""

    frame: DataFrame
    timestamp_name: str
    timestamp: Column  # the parsed timestamps
    label: str | None
    numeric: tuple[str, ...]
    identifier: str | None
    labels_required: bool  # False when scoring: labels may be missing

    def counts(self) -> list[Column]:
        """How many values break each rule, and the first second of the table."""

        aggregates = [
            sf.count_if(self.timestamp.isNull()).alias("bad_timestamps"),
            sf.min(sf.unix_seconds(self.timestamp)).alias("first_second"),
        ]
        if self.label is not None:
            aggregates += [
                sf.count_if(sf.col(self.label).isNull()).alias("missing_labels"),
                sf.count_if(self._bad_label()).alias("bad_labels"),
            ]
        for index, name in enumerate(self.numeric):
            value, is_float = sf.col(name), self._is_float(name)
            missing = value.isNull() | sf.isnan(value) if is_float else value.isNull()
            infinite = value.isin(float("inf"), float("-inf")) if is_float else sf.lit(False)
            aggregates += [
                sf.count_if(missing).alias(f"missing_{index}"),
                sf.count_if(infinite).alias(f"infinite_{index}"),
            ]
        if self.identifier is not None:
            duplicated = sf.count(self.identifier) - sf.count_distinct(self.identifier)
            aggregates.append(duplicated.alias("duplicated_ids"))
        return aggregates

    def raise_first_problem(self, counts: Row, source: str) -> None:
        """Raise for the first rule broken, in the pandas engine's order, with its message."""
        frame, name = self.frame, self.timestamp_name
        if counts["bad_timestamps"]:
            first = frame.filter(self.timestamp.isNull()).select(name).first()[0]
            raise DataError(
                f"{source}: column {name} has {counts['bad_timestamps']} value(s) that are not "
                f"timestamps, first {first!r}"
            )
        if self.label is not None:
            self._check_labels(counts, source)
        for index, name in enumerate(self.numeric):
            missing, infinite = counts[f"missing_{index}"], counts[f"infinite_{index}"]
            self._check_numeric(name, missing, infinite, source)
        if self.identifier is not None and counts["duplicated_ids"]:
            repeated = frame.groupBy(self.identifier).count().filter(sf.col("count") > 1)
            first = repeated.select(self.identifier).first()[0]
            raise DataError(
                f"{source}: column {self.identifier} has {counts['duplicated_ids']} duplicated "
                f"transaction id(s), first {first!r}"
            )

    def _check_labels(self, counts: Row, source: str) -> None:
        if counts["missing_labels"] and self.labels_required:
            missing = counts["missing_labels"]
            raise DataError(f"{source}: column {self.label} has {missing} missing label(s)")
        if counts["bad_labels"]:
            bad = self.frame.filter(self._bad_label()).select(self.label).distinct().limit(3)
            examples = ", ".join(repr(row[0]) for row in bad.collect())
            raise DataError(f"{source}: column {self.label} must hold 0/1 labels, found {examples}")

    def _check_numeric(self, name: str, missing: int, infinite: int, source: str) -> None:

        data_type = self.frame.schema[name].dataType
        if not isinstance(data_type, NumericType | BooleanType):
            raise DataError(
                f"{source}: column {name} must be numeric, found {data_type.simpleString()}"
            )
        if missing:
            raise DataError(f"{source}: column {name} has {missing} missing value(s) (NaN)")
        if infinite:
            raise DataError(f"{source}: column {name} has infinite value(s)")

    def _bad_label(self) -> Column:

        value = sf.col(self.label).try_cast("double")
        return sf.col(self.label).isNotNull() & (value.isNull() | ~value.isin(0.0, 1.0))

    def _is_float(self, name: str) -> bool:

        return isinstance(self.frame.schema[name].dataType, DoubleType | FloatType)


def require_both_classes(frame: DataFrame, label_column: str, where: str) -> None:
    """Fail as ``data.validation.require_both_classes`` does when ``frame``'s labels lack
    fraud or genuine transactions (an empty window lacks both); one aggregate."""

    label = sf.col(label_column)
    counts = frame.agg(
        sf.count(sf.lit(1)).alias("rows"),
        sf.count_if(label == 1).alias("frauds"),
        sf.count_if(label == 0).alias("genuine"),
    ).first()
    if counts["frauds"] == 0 or counts["genuine"] == 0:
        present = "only fraud" if counts["genuine"] == 0 else "no fraud"
        raise DataError(
            f"{where}: {counts['rows']} transaction(s) with {present}; a fraud model needs both "
            "classes. Widen the window or check the label column."
        )


def fingerprint(frame: DataFrame) -> str:
    """Content digest of a table on Spark: same rows and columns give the same 16 hex characters,
    in any row order and partitioning.

    Not the pandas engine's digest (that one hashes pandas' own dtypes and values): a table has
    one fingerprint per engine, and a step compares it only with the same engine's.
    """

    row_hash = sf.xxhash64(*[sf.col(name) for name in frame.columns]).cast("decimal(38,0)")
    summary = frame.agg(sf.count(sf.lit(1)), sf.sum(row_hash)).first()
    digest = hashlib.sha256()
    digest.update(frame.schema.simpleString().encode())
    digest.update(f"{summary[0]}:{summary[1]}".encode())
    return digest.hexdigest()[:16]
