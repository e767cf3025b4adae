"""Transaction features on Spark: the pandas engine's columns (``data.features``), computed with
window functions over event time.

Each entity's window is ``Window.partitionBy(entity).orderBy(seconds).rangeBetween(lo, hi)``:
both ends inclusive, on whole seconds, so the window ``(t - end - length, t - end]`` of pandas is
the frame ``[-(end + length - 1), -end]``. Windows are given in seconds
(``windows_seconds``, ``delay_seconds``); whole days give the pandas engine's names
(``CUSTOMER_ID_NB_TX_7DAY_WINDOW``), other lengths ``..._36H_WINDOW``, ``..._90MIN_WINDOW``,
``..._45S_WINDOW``.

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

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window, WindowSpec
from pyspark.sql import functions as sf

from fraud_detection.config import DEFAULT_DELAY_DAYS, ConfigError, TransactionColumns
from fraud_detection.data.features import NIGHT_LAST_HOUR, WINDOW_DAYS

SECONDS_PER_DAY = 86_400
DEFAULT_WINDOWS_SECONDS: tuple[int, ...] = tuple(days * SECONDS_PER_DAY for days in WINDOW_DAYS)
DEFAULT_DELAY_SECONDS = DEFAULT_DELAY_DAYS * SECONDS_PER_DAY
# Working columns, dropped before the result is returned.
_SECONDS, _TIE_ORDER, _AMOUNT, _LABEL = "__seconds__", "__tie_order__", "__amount__", "__label__"
_CUSTOMER_KINDS, _TERMINAL_KINDS = ("NB_TX", "AVG_AMOUNT"), ("NB_TX", "RISK")


def window_name(seconds: int) -> str:
    """The name of a window in feature names: ``7DAY``, ``36H``, ``90MIN`` or ``45S``."""
    for unit_seconds, unit in ((SECONDS_PER_DAY, "DAY"), (3_600, "H"), (60, "MIN")):
        if seconds % unit_seconds == 0:
            return f"{seconds // unit_seconds}{unit}"
    return f"{seconds}S"


def feature_columns(windows_seconds: Sequence[int] = DEFAULT_WINDOWS_SECONDS) -> tuple[str, ...]:
    """The engineered columns in the pandas engine's order (its ``FEATURE_COLUMNS`` for the
    default windows): the book's fifteen, then the amount ratios."""
    names = [window_name(seconds) for seconds in windows_seconds]
    return (
        "TX_AMOUNT",
        "TX_DURING_WEEKEND",
        "TX_DURING_NIGHT",
        *(f"CUSTOMER_ID_{kind}_{name}_WINDOW" for name in names for kind in _CUSTOMER_KINDS),
        *(f"TERMINAL_ID_{kind}_{name}_WINDOW" for name in names for kind in _TERMINAL_KINDS),
        *(f"CUSTOMER_ID_AMOUNT_RATIO_{name}_WINDOW" for name in names),
    )


def add_features(
    frame: DataFrame,
    columns: TransactionColumns | None = None,
    windows_seconds: Sequence[int] = DEFAULT_WINDOWS_SECONDS,
    delay_seconds: int = DEFAULT_DELAY_SECONDS,
) -> DataFrame:
    """Return ``frame`` with the feature columns (``feature_columns(windows_seconds)``) added.

    Args:
        frame: Transactions with timestamp, customer, terminal, amount and label columns (names
            from ``columns``); the timestamp a Spark timestamp, as ``validation`` leaves it.
        columns: Column names of the table (default: the simulator's).
        windows_seconds: Lengths of the customer and terminal windows, in seconds.
        delay_seconds: Seconds before a fraud label is known; the terminal windows end this long
            before each transaction.

    Returns:
        The input columns followed by the feature columns (the amount column is copied to
        ``TX_AMOUNT`` when it has another name), as the pandas engine returns them.
    """
    columns = columns or TransactionColumns()
    _check_windows(windows_seconds, delay_seconds)
    names = feature_columns(windows_seconds)
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
            **_customer_features(columns.customer_column, windows_seconds),
            **_terminal_features(columns.terminal_column, windows_seconds, delay_seconds),
        }
    )
    kept = [name for name in frame.columns if name not in names]
    return work.select(*kept, *names)


def _labels(frame: DataFrame, label_column: str) -> Column:
    """The labels as doubles; all unknown when the table has none (new rows being scored)."""
    if label_column in frame.columns:
        return sf.col(label_column).cast("double")
    return sf.lit(None).cast("double")


def _check_windows(windows_seconds: Sequence[int], delay_seconds: int) -> None:
    if not windows_seconds or any(int(s) != s or s < 1 for s in windows_seconds):
        raise ConfigError(f"feature windows must be whole seconds >= 1, got {windows_seconds}")
    if int(delay_seconds) != delay_seconds or delay_seconds < 0:
        raise ConfigError(f"the delay must be whole seconds >= 0, got {delay_seconds}")


def _customer_features(customer: str, windows_seconds: Sequence[int]) -> dict[str, Column]:
    """The card's spending over each window ending at the transaction, itself included."""
    features: dict[str, Column] = {}
    for seconds in windows_seconds:
        name = window_name(seconds)
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
    terminal: str, windows_seconds: Sequence[int], delay_seconds: int
) -> dict[str, Column]:
    """The terminal's traffic and fraud rate over each window ending ``delay_seconds`` ago."""
    features: dict[str, Column] = {}
    for seconds in windows_seconds:
        name = window_name(seconds)
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
