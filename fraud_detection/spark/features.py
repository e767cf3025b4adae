"""Transaction features on Spark: the pandas engine's columns (``data.features``), computed with
window functions over event time.

The windows are the pandas engine's: a ``config.FeatureWindows`` (the ``feature_windows``
parameter) and the delay as a duration, read by the same functions, and the columns are named by
the same ``data.features.feature_columns`` (``CUSTOMER_ID_NB_TX_7DAY_WINDOW``,
``..._36H_WINDOW``, ``..._90MIN_WINDOW``). Each entity's window is
``Window.partitionBy(entity).orderBy(seconds).rangeBetween(lo, hi)``: both ends inclusive, on
whole seconds, so the window ``(t - end - length, t - end]`` of pandas is the frame
``[-(end + length - 1), -end]``, with the lengths from ``FeatureWindows.seconds``.

Rows at the same instant follow the rule both engines share (docs/spark.md): within one
entity, rows are ordered by time, then transaction id (the table's order when there is no id
column), and a window that ends at the row itself holds the rows at its instant that come no
later than it in that order (the row itself only for customer spending, never for labels). A
range frame alone would hold every row at that instant, so those windows are a range frame over
the seconds strictly before, plus a running frame over the rows at the same instant.

Equal to the pandas engine on the same rows: counts exactly, amounts and rates within float
rounding (tests/spark/test_features.py: rtol 1e-9).
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import Column, DataFrame, Window, WindowSpec
from pyspark.sql import functions as sf

from fraud_detection.config import (
    DEFAULT_DELAY_DAYS,
    FeatureWindows,
    TransactionColumns,
    parse_duration,
)
from fraud_detection.config.durations import SECOND, check_range
from fraud_detection.data.features import DEFAULT_WINDOWS, NIGHT_LAST_HOUR, feature_columns

# Working columns, dropped before the result is returned.
_SECONDS, _TIE_ORDER, _AMOUNT, _LABEL = "__seconds__", "__tie_order__", "__amount__", "__label__"


def add_features(
    frame: DataFrame,
    columns: TransactionColumns | None = None,
    delay_days: str | float | pd.Timedelta = DEFAULT_DELAY_DAYS,
    windows: FeatureWindows = DEFAULT_WINDOWS,
) -> DataFrame:
    """Return ``frame`` with the feature columns (``feature_columns(windows)``) added.

    The Spark counterpart of ``data.features.add_features``, with the same arguments.

    Args:
        frame: Transactions with timestamp, customer, terminal, amount and label columns (names
            from ``columns``); the timestamp a Spark timestamp, as ``validation`` leaves it.
        columns: Column names of the table (default: the simulator's).
        delay_days: Time before a fraud label is known, as a number of days or a duration
            (``36h``); the terminal windows end this long before each transaction.
        windows: Lengths of the card and terminal windows (default: 1, 7 and 30 days).

    Returns:
        The input columns followed by the feature columns (the amount column is copied to
        ``TX_AMOUNT`` when it has another name), as the pandas engine returns them.

    Raises:
        ConfigError: when the delay is not a duration, or is negative or over 366 days.
    """
    columns = columns or TransactionColumns()
    delay = check_range(
        "delay_days", parse_duration("delay_days", delay_days), delay_days, allow_zero=True
    )
    names = feature_columns(windows)
    timestamp = sf.col(columns.timestamp_column).cast("timestamp")
    tie_order = (
        sf.col(columns.id_column)
        if columns.id_column in frame.columns
        else sf.monotonically_increasing_id()  # the order rows were read in
    )
    work = frame.withColumns(
        {
            _SECONDS: sf.unix_seconds(timestamp),
            _TIE_ORDER: tie_order,
            _AMOUNT: sf.col(columns.amount_column).cast("double"),
            # Unknown labels (rows being scored) count as genuine, as in the pandas engine.
            _LABEL: sf.coalesce(_labels(frame, columns.label_column), sf.lit(0.0)),
        }
    )
    work = work.withColumns(
        {
            "TX_AMOUNT": sf.col(_AMOUNT),
            # dayofweek: 1 is Sunday, 7 Saturday.
            "TX_DURING_WEEKEND": sf.dayofweek(timestamp).isin(1, 7).cast("tinyint"),
            "TX_DURING_NIGHT": (sf.hour(timestamp) <= NIGHT_LAST_HOUR).cast("tinyint"),
            **_customer_features(columns.customer_column, windows),
            **_terminal_features(columns.terminal_column, windows, int(delay // SECOND)),
        }
    )
    kept = [name for name in frame.columns if name not in names]
    return work.select(*kept, *names)


def _labels(frame: DataFrame, label_column: str) -> Column:
    """The labels as doubles; all unknown when the table has none (new rows being scored)."""
    if label_column in frame.columns:
        return sf.col(label_column).cast("double")
    return sf.lit(None).cast("double")


def _customer_features(customer: str, windows: FeatureWindows) -> dict[str, Column]:
    """The card's spending over each window ending at the transaction, itself included."""
    features: dict[str, Column] = {}
    for name, seconds in zip(windows.labels, windows.seconds, strict=True):
        count, total = _backward(customer, _AMOUNT, seconds, end=0, include_current=True)
        average = total / count
        features[f"CUSTOMER_ID_NB_TX_{name}_WINDOW"] = count
        features[f"CUSTOMER_ID_AVG_AMOUNT_{name}_WINDOW"] = average
        # As in the pandas engine: an average that is not positive gives ratio 1.
        features[f"CUSTOMER_ID_AMOUNT_RATIO_{name}_WINDOW"] = sf.when(
            average > 0, sf.col(_AMOUNT) / average
        ).otherwise(1.0)
    return features


def _terminal_features(
    terminal: str, windows: FeatureWindows, delay_seconds: int
) -> dict[str, Column]:
    """The terminal's traffic and fraud rate over each window ending ``delay_seconds`` ago."""
    features: dict[str, Column] = {}
    for name, seconds in zip(windows.labels, windows.seconds, strict=True):
        count, frauds = _backward(
            terminal, _LABEL, seconds, end=delay_seconds, include_current=False
        )
        features[f"TERMINAL_ID_NB_TX_{name}_WINDOW"] = count
        features[f"TERMINAL_ID_RISK_{name}_WINDOW"] = sf.when(count > 0, frauds / count).otherwise(
            0.0
        )
    return features


def _backward(
    entity: str, value: str, length: int, end: int, include_current: bool
) -> tuple[Column, Column]:
    """Count (as a double, like pandas) and sum of ``value`` over the window of each row: the
    same entity's rows with times in ``(t - end - length, t - end]``, under the tie rule of the
    module docstring."""
    by_time = Window.partitionBy(entity).orderBy(_SECONDS)
    if end > 0:  # the window ends before the row's instant: no tie to order
        frame = by_time.rangeBetween(-(end + length - 1), -end)
        return _count(frame), sf.coalesce(sf.sum(value).over(frame), sf.lit(0.0))
    count, total = sf.lit(0.0), sf.lit(0.0)
    if length > 1:  # the seconds strictly before the row's own
        earlier = by_time.rangeBetween(-(length - 1), -1)
        count, total = _count(earlier), sf.coalesce(sf.sum(value).over(earlier), sf.lit(0.0))
    ties = Window.partitionBy(entity, _SECONDS).orderBy(_TIE_ORDER)
    same_instant = ties.rowsBetween(Window.unboundedPreceding, 0 if include_current else -1)
    tie_total = sf.coalesce(sf.sum(value).over(same_instant), sf.lit(0.0))
    return count + _count(same_instant), total + tie_total


def _count(frame: WindowSpec) -> Column:
    return sf.count(sf.lit(1)).over(frame).cast("double")
