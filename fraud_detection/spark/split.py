"""The time split on Spark: the pandas engine's windows (``data.split``), rows selected in Spark.

Where the windows fall depends only on the data's first and last instants: one min/max aggregate
gives them, and the pandas engine's ``data.split.place_split`` places the windows on them, so
both engines place the same ``TimeWindow``s by the same code (and refuse a split that does not
fit with the same message). Selecting a window's rows by timestamp, numbering its evaluation
days, removing the cards already known to be compromised (``evaluation_rows``) and checking
that a window holds both classes are done in Spark; only aggregates reach the driver.

A window's bounds are whole seconds (``TimeWindow.seconds``), so comparing each row's timestamp
with them keeps a row at 12:00:00.5 where pandas keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as sf

from fraud_detection.config import SplitConfig, TransactionColumns
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.data.split import DAY, SECOND, TimeSplit, TimeWindow, place_split
from fraud_detection.errors import DataError
from fraud_detection.spark.validation import require_both_classes

_DAY_SECONDS = DAY // SECOND
_MICROS_PER_SECOND = 1_000_000
_FIRST_FRAUD = "__first_fraud__"


def time_span(frame: DataFrame, timestamp_column: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first and last instants of ``frame`` (one aggregate), as pandas timestamps in UTC
    without a time zone.

    Taken as microseconds since the epoch, not as Python datetimes, which PySpark would shift
    into the driver's local time zone.
    """
    micros = sf.unix_micros(sf.col(timestamp_column).cast("timestamp"))
    first, last = frame.agg(sf.min(micros), sf.max(micros)).first()
    if first is None:
        raise DataError("no rows to split")
    return pd.Timestamp(first, unit="us"), pd.Timestamp(last, unit="us")


def plan_split(
    frame: DataFrame,
    timestamp_column: str,
    config: SplitConfig,
    warm_up: pd.Timedelta | None = None,
) -> TimeSplit:
    """Place the windows of ``config`` on the time ``frame`` covers, as the pandas engine does
    (``data.split.plan_split``, with the same arguments).

    Raises:
        DataError: when the windows do not fit in the data (the pandas engine's message).
    """
    first, last = time_span(frame, timestamp_column)
    return place_split(first, last, config, warm_up)


def _instant(seconds: int | Column) -> Column:
    """A Spark timestamp ``seconds`` after 1970-01-01 UTC (as ``TimeWindow.seconds`` counts)."""
    return sf.timestamp_seconds(seconds if isinstance(seconds, Column) else sf.lit(seconds))


def select_window(frame: DataFrame, window: TimeWindow, timestamp_column: str) -> DataFrame:
    """The rows of ``frame`` at times in ``[start, end)`` (``TimeWindow.select`` on Spark)."""
    start, end = window.seconds
    time = sf.col(timestamp_column)
    return frame.filter((time >= _instant(start)) & (time < _instant(end)))


def evaluation_rows(
    frame: DataFrame, split: TimeSplit, name: str, columns: TransactionColumns
) -> DataFrame:
    """Rows of the ``validation`` or ``test`` window minus the cards already known to be
    compromised; ``DAY_COLUMN`` holds each row's evaluation day (``data.split.evaluation_rows``
    on Spark, with the same arguments and rule).

    Evaluation days are 24-hour periods from the window's start. A card is known to be
    compromised on a day starting at s when it had a fraud between the history start
    (``TimeSplit.evaluated``) and s - delay (strictly before). Each card's first fraud is one
    small aggregate joined back to the window's rows; without a customer column, the window is
    returned whole.
    """
    window, history_start = split.evaluated(name)
    time_column = columns.timestamp_column
    start, _ = window.seconds
    since_start = sf.unix_micros(sf.col(time_column)) - start * _MICROS_PER_SECOND
    elapsed_days = sf.floor(since_start / (_DAY_SECONDS * _MICROS_PER_SECOND))
    # Numbered from the data's first day, so that whole-day windows keep their day numbers.
    first_day = (window.start - split.origin) // DAY
    rows = select_window(frame, window, time_column).withColumn(
        DAY_COLUMN, (elapsed_days + first_day).cast("long")
    )
    customer = columns.customer_column
    if customer not in frame.columns:
        return rows
    history = select_window(frame, TimeWindow(history_start, window.end), time_column)
    first_fraud = (
        history.filter(sf.col(columns.label_column) == 1)
        .groupBy(customer)
        .agg(sf.min(time_column).alias(_FIRST_FRAUD))
    )
    # Whole seconds (the window's start, whole days, the delay); the fraud keeps its fraction.
    day_start = start + elapsed_days * _DAY_SECONDS
    known = sf.col(_FIRST_FRAUD) < _instant(day_start - split.delay // SECOND)
    return (
        rows.join(first_fraud, on=customer, how="left")
        .filter(~sf.coalesce(known, sf.lit(False)))
        .select(*rows.columns)
    )


@dataclass(frozen=True)
class SparkWindows:
    """The rows of each window the train step uses (``data.windows.Windows`` on Spark)."""

    validation_train: DataFrame
    validation: DataFrame  # known-compromised cards removed
    training: DataFrame


def training_windows(
    frame: DataFrame, split: TimeSplit, columns: TransactionColumns, source: str
) -> SparkWindows:
    """The validation-training, validation and training rows, each checked for both classes
    with the pandas engine's message (one aggregate per window)."""
    time_column = columns.timestamp_column
    windows = SparkWindows(
        validation_train=select_window(frame, split.validation_train, time_column),
        validation=evaluation_rows(frame, split, "validation", columns),
        training=select_window(frame, split.train, time_column),
    )
    for name, rows in vars(windows).items():
        where = f"{source}, {name.replace('_', ' ')} window"
        require_both_classes(rows, columns.label_column, where)
    return windows
