import pandas as pd
import pytest

from fraud_detection.config import (
    ConfigError,
    DataConfig,
    SplitConfig,
)
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.data.split import (
    DayWindow,
    evaluation_rows,
    plan_split,
)
from fraud_detection.data.validation import prepare_transactions
from fraud_detection.errors import DataError
from tests.support.pipeline import tiny_simulation


def _prepared(n_days: int = 60) -> pd.DataFrame:
    return prepare_transactions(tiny_simulation(n_days=n_days), DataConfig(), "tiny")


def test_book_protocol_windows():
    """Training from 2018-07-25 for 7 days, 7 days of delay, 7 days of test (the book's 3.4)."""
    table = _prepared(n_days=183)
    split = plan_split(table, "TX_DATETIME", SplitConfig(train_start="2018-07-25"))
    described = split.describe()
    assert described["train_first_day"] == "2018-07-25"
    assert described["train_last_day"] == "2018-07-31"
    assert described["test_first_day"] == "2018-08-08"
    assert described["test_last_day"] == "2018-08-14"
    # Validation is the same shape, shifted back by delay + test, ending where training ends.
    assert described["validation_train_first_day"] == "2018-07-11"
    assert described["validation_first_day"] == "2018-07-25"
    assert described["validation_last_day"] == "2018-07-31"


def test_automatic_start_puts_the_test_at_the_end_of_the_data():
    table = _prepared(n_days=60)
    split = plan_split(table, "TX_DATETIME", SplitConfig())
    assert split.test.end == 60
    assert split.train.start == 60 - 21


def test_windows_do_not_overlap_and_leave_the_delay_free():
    table = _prepared(n_days=60)
    split = plan_split(table, "TX_DATETIME", SplitConfig(train_days=10, delay_days=5, test_days=4))
    assert split.test.start - split.train.end == 5
    assert split.validation.start - split.validation_train.end == 5
    assert split.validation.end == split.train.end
    train_days = set(split.train.select(table)[DAY_COLUMN])
    test_days = set(split.test.select(table)[DAY_COLUMN])
    assert not train_days & test_days
    assert len(test_days) == 4


@pytest.mark.parametrize("start", ["2018-04-03", "2018-05-25"])
def test_windows_outside_the_data_are_refused(start):
    table = _prepared(n_days=60)
    with pytest.raises(DataError, match="does not fit the data"):
        plan_split(table, "TX_DATETIME", SplitConfig(train_start=start))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_days": 0}, "train_days"),
        ({"test_days": 400}, "test_days"),
        ({"delay_days": -1}, "delay_days"),
        ({"train_start": "not a date"}, "train_start"),
    ],
)
def test_bad_windows_are_refused_before_any_work(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SplitConfig(**kwargs)


def _card_table(rows):
    return pd.DataFrame(rows, columns=[DAY_COLUMN, "CUSTOMER_ID", "TX_FRAUD"])


def test_cards_known_to_be_compromised_are_removed_from_the_test():
    """The book: on test day d, drop cards with a fraud known by d (older than the delay)."""
    table = _card_table(
        [
            (0, "a", 1),  # training day: card a known from the first test day on
            (10, "a", 0),
            (3, "b", 1),  # delay day 3: known on test days >= 3 + 7 + 1 = 11
            (10, "b", 0),
            (11, "b", 0),
            (10, "c", 1),  # fraud inside the test itself: stays
            (11, "c", 0),
        ]
    )
    rows = evaluation_rows(
        table,
        DayWindow(10, 13),
        history_start=0,
        delay_days=7,
        customer_column="CUSTOMER_ID",
        label_column="TX_FRAUD",
    )
    assert sorted(zip(rows[DAY_COLUMN], rows["CUSTOMER_ID"], strict=True)) == [
        (10, "b"),
        (10, "c"),
        (11, "c"),
    ]


def test_without_cards_the_window_is_kept_whole():
    table = _card_table([(10, "a", 1), (11, "a", 0)]).drop(columns="CUSTOMER_ID")
    rows = evaluation_rows(table, DayWindow(10, 12), 0, 7, None, "TX_FRAUD")
    assert len(rows) == 2
