"""Time-based split: train | delay | test, with a validation split of the same shape before it.

Fraud labels arrive late: at the start of the test period, only transactions older than the
delay have known labels. The book (chapters 3.4 and 5.2) therefore trains on a period, skips a
delay period, and tests on the period after it. Model choices are made on a validation split
shifted back by ``delay + test``, whose validation period ends exactly where training ends, so
every label it uses is known when the model would be deployed::

    validation_train | delay | validation
                              train            | delay | test

Windows are ``[start, end)`` timestamps. When the train, delay and test lengths are whole days
(the default: 7 each), windows start at midnight, as in the book, and the data covers its first
day's midnight to the midnight after its last day. Otherwise windows start at the data's own
instants, to the second, and the data covers its first second to the second after its last.

The validation and test windows are evaluated per *evaluation day*: 24-hour periods from the
window's start, the last one shorter when the window is not whole days (with whole-day
windows, the calendar days). They are the days of card precision@100, and a card counts as
known to be compromised on a day when it had a fraud at least ``delay`` before the day began
(``evaluation_rows``). Days counted from the window rather than from midnight keep each day a
full 24 hours of the window, wherever a window of hours starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from fraud_detection.config import SplitConfig, TransactionColumns, format_duration
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.errors import DataError

logger = logging.getLogger(__name__)

DAY = pd.Timedelta(days=1)
SECOND = pd.Timedelta(seconds=1)
WINDOW_NAMES = ("validation_train", "validation", "train", "test")


@dataclass(frozen=True)
class TimeWindow:
    """The transactions at times in ``[start, end)``."""

    start: pd.Timestamp
    end: pd.Timestamp

    def select(self, table: pd.DataFrame, timestamp_column: str) -> pd.DataFrame:
        times = table[timestamp_column]
        return table[(times >= self.start) & (times < self.end)]

    @property
    def seconds(self) -> tuple[int, int]:
        """``(start, end)`` in seconds since 1970-01-01 UTC (a timestamp without a time zone
        read as UTC), as Spark's ``unix_seconds`` counts them."""
        return self.start.value // 10**9, self.end.value // 10**9


@dataclass(frozen=True)
class TimeSplit:
    origin: pd.Timestamp  # where the data starts: its first midnight, or its first second
    delay: pd.Timedelta
    whole_days: bool  # windows of whole days, starting at midnight
    validation_train: TimeWindow
    validation: TimeWindow
    train: TimeWindow
    test: TimeWindow

    @property
    def resolution(self) -> pd.Timedelta:
        """The step of the windows' bounds: a day, or a second."""
        return DAY if self.whole_days else SECOND

    def text(self, instant: pd.Timestamp) -> str:
        """``instant`` as parameters show it: a date for whole days, else date and time."""
        return instant.strftime("%Y-%m-%d") if self.whole_days else str(instant)

    def describe(self) -> dict[str, str]:
        """First and last day of each window (first and last second when not whole days)."""
        described = {}
        for name in WINDOW_NAMES:
            window = getattr(self, name)
            described[f"{name}_first_day"] = self.text(window.start)
            described[f"{name}_last_day"] = self.text(window.end - self.resolution)
        return described

    def evaluated(self, name: str) -> tuple[TimeWindow, pd.Timestamp]:
        """The ``validation`` or ``test`` window, and the start of its history of known frauds
        (the start of the training window before it, as in the book)."""
        if name == "validation":
            return self.validation, self.validation_train.start
        if name == "test":
            return self.test, self.train.start
        raise ValueError(f"no evaluated window {name!r}; choose validation or test")


def plan_split(
    table: pd.DataFrame,
    timestamp_column: str,
    config: SplitConfig,
    warm_up: pd.Timedelta | None = None,
) -> TimeSplit:
    """Place the windows of ``config`` on the time ``table`` covers (``place_split``)."""
    times = table[timestamp_column]
    return place_split(times.min(), times.max(), config, warm_up)


def place_split(
    first: pd.Timestamp,
    last: pd.Timestamp,
    config: SplitConfig,
    warm_up: pd.Timedelta | None = None,
) -> TimeSplit:
    """Place the windows of ``config`` on data whose times run from ``first`` to ``last``.

    Any engine calls it with its data's earliest and latest timestamps (one aggregate).

    Args:
        first: The earliest transaction time.
        last: The latest transaction time.
        config: The lengths of the windows, and the first training instant if chosen.
        warm_up: How much history the features need (the longest window plus the delay);
            a warning says when validation training starts earlier than that.

    Raises:
        DataError: when the windows do not fit in the data, naming the span needed and found.
    """
    train, delay, test = config.train_duration, config.delay_duration, config.test_duration
    if config.whole_days:
        origin, data_end = first.normalize(), last.normalize() + DAY
    else:
        origin, data_end = first.floor("s"), last.floor("s") + SECOND
    start = _train_start(config, origin, latest=data_end - (train + delay + test))
    shift = delay + test
    split = TimeSplit(
        origin=origin,
        delay=delay,
        whole_days=config.whole_days,
        validation_train=TimeWindow(start - shift, start - shift + train),
        validation=TimeWindow(start + train - test, start + train),
        train=TimeWindow(start, start + train),
        test=TimeWindow(start + train + delay, start + train + delay + test),
    )
    if split.validation_train.start < origin or split.test.end > data_end:
        last_step = split.resolution
        raise DataError(
            f"the split does not fit the data ({split.text(origin)} to "
            f"{split.text(data_end - last_step)}): validation training would start "
            f"{split.text(split.validation_train.start)} and the test would end "
            f"{split.text(split.test.end - last_step)}; it needs "
            f"{format_duration(train + 2 * shift)} (train_days + 2 x (delay_days + test_days)), "
            f"the data spans {format_duration(data_end - origin)}. Choose another train_start "
            "or shorter windows."
        )
    if warm_up is not None and split.validation_train.start - origin < warm_up:
        logger.warning(
            "Validation training starts %s, %s into the data; the feature windows (the longest "
            "one and the delay) need %s of history. Early features are computed on less.",
            split.text(split.validation_train.start),
            format_duration(split.validation_train.start - origin),
            format_duration(warm_up),
        )
    return split


def _train_start(config: SplitConfig, origin: pd.Timestamp, latest: pd.Timestamp) -> pd.Timestamp:
    """The chosen first training instant (midnight of its day for whole days), or ``latest``."""
    if not config.train_start:
        return latest
    start = pd.Timestamp(config.train_start)
    if start.tz is None and origin.tz is not None:
        start = start.tz_localize(origin.tz)
    if config.whole_days:
        return origin + ((start - origin) // DAY) * DAY
    return start.floor("s")


def evaluation_rows(
    table: pd.DataFrame, split: TimeSplit, name: str, columns: TransactionColumns
) -> pd.DataFrame:
    """Rows of the ``validation`` or ``test`` window minus the cards already known to be
    compromised, as in the book; ``DAY_COLUMN`` holds each row's evaluation day.

    A card is known to be compromised on an evaluation day starting at s when it had a fraud
    between the history start (``TimeSplit.evaluated``) and s - delay: its label is known by
    then, and an investigator would already have blocked it. Without a customer column, the
    window is returned whole.
    """
    window, history_start = split.evaluated(name)
    time_column = columns.timestamp_column
    rows = window.select(table, time_column)
    elapsed_days = (rows[time_column] - window.start) // DAY
    # Numbered from the data's first day, so that whole-day windows keep their day numbers.
    rows = rows.assign(**{DAY_COLUMN: (window.start - split.origin) // DAY + elapsed_days})
    customer = columns.customer_column
    if customer not in table.columns:
        return rows
    times = table[time_column]
    history = table[(times >= history_start) & (times < window.end)]
    frauds = history[history[columns.label_column] == 1]
    if frauds.empty:
        return rows
    first_fraud = frauds.groupby(customer)[time_column].min()
    known_since = rows[customer].map(first_fraud)
    day_start = window.start + elapsed_days * DAY
    return rows[~(known_since < day_start - split.delay)]
