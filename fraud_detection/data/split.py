"""Time-based split: train | delay | test, with a validation split of the same shape before it.

Fraud labels arrive late: at the start of the test period, only transactions older than
``delay_days`` have known labels. The book (chapters 3.4 and 5.2) therefore trains on a period,
skips a delay period, and tests on the period after it. Model choices are made on a validation
split shifted back by ``delay + test`` days, whose validation period ends exactly where training
ends, so every label it uses is known when the model would be deployed::

    validation_train | delay | validation
                              train            | delay | test
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from fraud_detection.config import SplitConfig
from fraud_detection.data.features import WINDOW_DAYS
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DayWindow:
    """Whole days ``[start, end)``, as day indices counted from the data's first day."""

    start: int
    end: int

    def select(self, table: pd.DataFrame) -> pd.DataFrame:
        days = table[DAY_COLUMN]
        return table[(days >= self.start) & (days < self.end)]


@dataclass(frozen=True)
class TimeSplit:
    origin: pd.Timestamp  # midnight of the first day (day index 0)
    delay_days: int
    validation_train: DayWindow
    validation: DayWindow
    train: DayWindow
    test: DayWindow

    def date(self, day: int) -> str:
        return (self.origin + pd.Timedelta(days=day)).strftime("%Y-%m-%d")

    def describe(self) -> dict[str, str]:
        """First and last dates of each window, for parameters and logs."""
        described = {}
        for name, window in asdict(self).items():
            if isinstance(window, dict):
                described[f"{name}_first_day"] = self.date(window["start"])
                described[f"{name}_last_day"] = self.date(window["end"] - 1)
        return described


def plan_split(table: pd.DataFrame, timestamp_column: str, config: SplitConfig) -> TimeSplit:
    """Place the windows of ``config`` on the days ``table`` covers.

    Raises:
        DataError: when the windows do not fit in the data, naming the dates involved.
    """
    origin = table[timestamp_column].iloc[0].normalize()
    n_days = int(table[DAY_COLUMN].iloc[-1]) + 1
    length = config.train_days + config.delay_days + config.test_days
    if config.train_start:
        start = int((pd.Timestamp(config.train_start) - origin) // pd.Timedelta(days=1))
    else:
        start = n_days - length
    shift = config.delay_days + config.test_days
    split = TimeSplit(
        origin=origin,
        delay_days=config.delay_days,
        validation_train=DayWindow(start - shift, start - shift + config.train_days),
        validation=DayWindow(
            start + config.train_days - config.test_days, start + config.train_days
        ),
        train=DayWindow(start, start + config.train_days),
        test=DayWindow(start + config.train_days + config.delay_days, start + length),
    )
    first_date, last_date = split.date(0), split.date(n_days - 1)
    if split.validation_train.start < 0 or split.test.end > n_days:
        needed = length + shift
        raise DataError(
            f"the split does not fit the data ({first_date} to {last_date}, {n_days} days): "
            f"validation training would start {split.date(split.validation_train.start)} and "
            f"the test would end {split.date(split.test.end - 1)}; it needs {needed} days "
            f"(train_days + 2 x (delay_days + test_days)). Choose another train_start or "
            "shorter windows."
        )
    warm_up = max(WINDOW_DAYS) + config.delay_days
    if split.validation_train.start < warm_up:
        logger.warning(
            "Validation training starts on day %d; the 30-day feature windows are only complete "
            "from day %d. Early features are computed on less history.",
            split.validation_train.start,
            warm_up,
        )
    return split


def evaluation_rows(
    table: pd.DataFrame,
    window: DayWindow,
    history_start: int,
    delay_days: int,
    customer_column: str | None,
    label_column: str,
) -> pd.DataFrame:
    """Rows of ``window`` minus the cards already known to be compromised, as in the book.

    On evaluation day d, a card is known to be compromised when it had a fraud between
    ``history_start`` and day ``d - delay_days - 1``: its labels are known by then, and an
    investigator would already have blocked it. Without a customer column, the window is
    returned as is.
    """
    rows = window.select(table)
    if customer_column is None or customer_column not in table.columns:
        return rows
    history = table[(table[DAY_COLUMN] >= history_start) & (table[DAY_COLUMN] < window.end)]
    frauds = history[history[label_column] == 1]
    first_fraud_day = frauds.groupby(customer_column)[DAY_COLUMN].min()
    known_since = rows[customer_column].map(first_fraud_day).to_numpy(dtype=np.float64)
    known = known_since < (rows[DAY_COLUMN].to_numpy() - delay_days)
    return rows[~known]
