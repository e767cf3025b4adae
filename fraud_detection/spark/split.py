"""The time split on Spark: the pandas engine's windows (``data.split``), rows selected in Spark.

Where the windows fall depends only on the data's first and last instants: one min/max aggregate
gives them, and the pandas planner ``data.split.plan_split`` places the windows on a two-row
summary of them, so both engines place the same windows by the same code. Selecting a window's
rows, removing the cards already known to be compromised (``evaluation_rows``) and checking that
a window holds both classes are done in Spark; only aggregates reach the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as sf

from fraud_detection.config import SplitConfig, TransactionColumns
from fraud_detection.data import split as pandas_split
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.data.split import DayWindow, TimeSplit
from fraud_detection.errors import DataError
from fraud_detection.spark.validation import require_both_classes

_FIRST_FRAUD_DAY = "__first_fraud_day__"


def time_span(frame: DataFrame, timestamp_column: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first and last instants of ``frame`` (one aggregate), as pandas timestamps.

    Taken as microseconds since the epoch, not as Python datetimes, which PySpark would shift
    into the driver's local time zone.
    """
    micros = sf.unix_micros(sf.col(timestamp_column).cast("timestamp"))
    first, last = frame.agg(sf.min(micros), sf.max(micros)).first()
    if first is None:
        raise DataError("no rows to split")
    return pd.Timestamp(first, unit="us"), pd.Timestamp(last, unit="us")


def plan_split(frame: DataFrame, timestamp_column: str, config: SplitConfig) -> TimeSplit:
    """Place the windows of ``config`` on the days ``frame`` covers, as the pandas engine does.

    Raises:
        DataError: when the windows do not fit in the data (the pandas planner's message).
    """
    first, last = time_span(frame, timestamp_column)
    summary = pd.DataFrame({timestamp_column: [first, last]})
    days = (summary[timestamp_column] - first.normalize()) // pd.Timedelta(days=1)
    summary[DAY_COLUMN] = days.astype(np.int64)
    return pandas_split.plan_split(summary, timestamp_column, config)


def select_window(frame: DataFrame, window: DayWindow) -> DataFrame:
    """The rows of ``frame`` in ``window`` (``DayWindow.select`` on Spark)."""
    day = sf.col(DAY_COLUMN)
    return frame.filter((day >= window.start) & (day < window.end))


def evaluation_rows(
    frame: DataFrame,
    window: DayWindow,
    history_start: int,
    delay_days: int,
    customer_column: str | None,
    label_column: str,
) -> DataFrame:
    """Rows of ``window`` minus the cards already known to be compromised, as in the book.

    On evaluation day d, a card is known to be compromised when it had a fraud between
    ``history_start`` and day ``d - delay_days - 1``. Each card's first fraud day is one small
    aggregate joined back to the window's rows; without a customer column, the window is
    returned as is (``data.split.evaluation_rows``).
    """
    rows = select_window(frame, window)
    if customer_column is None or customer_column not in frame.columns:
        return rows
    history = select_window(frame, DayWindow(history_start, window.end))
    first_fraud_day = (
        history.filter(sf.col(label_column) == 1)
        .groupBy(customer_column)
        .agg(sf.min(DAY_COLUMN).alias(_FIRST_FRAUD_DAY))
    )
    known = sf.col(_FIRST_FRAUD_DAY) < sf.col(DAY_COLUMN) - delay_days
    return (
        rows.join(first_fraud_day, on=customer_column, how="left")
        .filter(~sf.coalesce(known, sf.lit(False)))
        .select(*rows.columns)
    )


@dataclass(frozen=True)
class SparkWindows:
    """The rows of each window the train step uses (``data.windows.Windows`` on Spark)."""

    validation_train: DataFrame
    validation: DataFrame  # known-compromised cards removed
    training: DataFrame


def evaluation_window(
    frame: DataFrame, split: TimeSplit, columns: TransactionColumns, name: str
) -> DataFrame:
    """Rows of the ``validation`` or ``test`` window, known-compromised cards removed."""
    window, history_start = {
        "validation": (split.validation, split.validation_train.start),
        "test": (split.test, split.train.start),
    }[name]
    customer = columns.customer_column
    return evaluation_rows(
        frame,
        window,
        history_start,
        split.delay_days,
        customer if customer in frame.columns else None,
        columns.label_column,
    )


def training_windows(
    frame: DataFrame, split: TimeSplit, columns: TransactionColumns, source: str
) -> SparkWindows:
    """The validation-training, validation and training rows, each checked for both classes
    with the pandas engine's message (one aggregate per window)."""
    windows = SparkWindows(
        validation_train=select_window(frame, split.validation_train),
        validation=evaluation_window(frame, split, columns, "validation"),
        training=select_window(frame, split.train),
    )
    for name, rows in vars(windows).items():
        where = f"{source}, {name.replace('_', ' ')} window"
        require_both_classes(rows, columns.label_column, where)
    return windows
