import numpy as np
import pandas as pd
import pytest

from fraud_detection.config import (
    ConfigError,
    DataConfig,
    SplitConfig,
    TransactionColumns,
)
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.data.split import (
    TimeSplit,
    TimeWindow,
    evaluation_rows,
    place_split,
    plan_split,
)
from fraud_detection.data.validation import prepare_transactions
from fraud_detection.errors import DataError
from tests.support.pipeline import tiny_simulation

COLUMNS = TransactionColumns()
DAY = pd.Timedelta(days=1)
HOUR = pd.Timedelta(hours=1)


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
    first_midnight = pd.Timestamp("2018-04-01")
    assert split.test.end == first_midnight + 60 * DAY
    assert split.train.start == first_midnight + (60 - 21) * DAY


def test_windows_do_not_overlap_and_leave_the_delay_free():
    table = _prepared(n_days=60)
    split = plan_split(table, "TX_DATETIME", SplitConfig(train_days=10, delay_days=5, test_days=4))
    assert split.test.start - split.train.end == 5 * DAY
    assert split.validation.start - split.validation_train.end == 5 * DAY
    assert split.validation.end == split.train.end
    train_days = set(split.train.select(table, "TX_DATETIME")[DAY_COLUMN])
    test_days = set(split.test.select(table, "TX_DATETIME")[DAY_COLUMN])
    assert not train_days & test_days
    assert len(test_days) == 4


@pytest.mark.parametrize("start", ["2018-04-03", "2018-05-25"])
def test_windows_outside_the_data_are_refused(start):
    table = _prepared(n_days=60)
    with pytest.raises(DataError, match="does not fit the data"):
        plan_split(table, "TX_DATETIME", SplitConfig(train_start=start))


def test_the_refusal_names_the_span_needed_and_found():
    with pytest.raises(DataError) as refused:
        place_split(
            pd.Timestamp("2018-04-01 10:00"), pd.Timestamp("2018-04-30 10:00"), SplitConfig()
        )
    assert "it needs 35 days (train_days + 2 x (delay_days + test_days))" in str(refused.value)
    assert "the data spans 30 days" in str(refused.value)
    assert "(2018-04-01 to 2018-04-30)" in str(refused.value)


def test_the_refusal_speaks_in_hours_for_windows_of_hours():
    config = SplitConfig(train_days="20h", delay_days="2h", test_days="14h")
    with pytest.raises(DataError) as refused:
        place_split(pd.Timestamp(0, unit="s"), pd.Timestamp(172_792, unit="s"), config)
    message = str(refused.value)
    assert "it needs 2 days 4 hours" in message
    assert "the data spans 1 day 23 hours 59 minutes 53 seconds" in message
    assert "(1970-01-01 00:00:00 to 1970-01-02 23:59:52)" in message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_days": 0}, "train_days must be more than 0 and at most 366 days, got 0"),
        ({"test_days": 400}, "test_days must be more than 0"),
        ({"test_days": "367d"}, "test_days must be more than 0 and at most 366 days"),
        ({"delay_days": -1}, "delay_days must be at least 0"),
        ({"delay_days": "-2h"}, "delay_days must be at least 0"),
        ({"train_days": "a week"}, "train_days must be a number of days or a duration"),
        ({"train_days": "1M"}, "train_days must be a number of days or a duration"),
        ({"test_days": "1.5s"}, "test_days must be a whole number of seconds"),
        ({"train_start": "not a date"}, "train_start must be a date"),
    ],
)
def test_bad_windows_are_refused_before_any_work(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SplitConfig(**kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7", 7 * DAY),
        (7, 7 * DAY),
        ("0.5", 12 * HOUR),
        ("7d", 7 * DAY),
        ("36h", 36 * HOUR),
        ("36H", 36 * HOUR),
        ("90min", 90 * pd.Timedelta(minutes=1)),
        ("1h30min", 90 * pd.Timedelta(minutes=1)),
        ("1 days 12:00:00", 36 * HOUR),
        ("P1DT12H", 36 * HOUR),
        ("2 weeks", 14 * DAY),
    ],
)
def test_windows_are_numbers_of_days_or_durations(text, expected):
    config = SplitConfig(train_days=text, delay_days=text, test_days=text)
    assert config.train_duration == config.delay_duration == config.test_duration == expected
    assert config.whole_days == (expected % DAY == pd.Timedelta(0))


def test_numbers_from_python_are_kept_as_the_text_mlflow_stores():
    assert SplitConfig(train_days=10).train_days == "10"
    assert SplitConfig(train_days=10) == SplitConfig(train_days="10")


def test_windows_of_hours_start_at_the_datas_own_instants():
    """48 hours of data from a Time column of seconds: 16h | 2h | 12h, validation before it."""
    first, last = pd.Timestamp(5, unit="s"), pd.Timestamp(172_792, unit="s")
    config = SplitConfig(train_days="16h", delay_days="2h", test_days="12h")
    split = place_split(first, last, config)
    assert not split.whole_days
    assert split.origin == pd.Timestamp("1970-01-01 00:00:05")
    data_end = pd.Timestamp("1970-01-02 23:59:53")  # the second after the last transaction
    assert split.test == TimeWindow(data_end - 12 * HOUR, data_end)
    assert split.train == TimeWindow(data_end - 30 * HOUR, data_end - 14 * HOUR)
    assert split.validation == TimeWindow(split.train.end - 12 * HOUR, split.train.end)
    assert split.validation_train.start == split.train.start - 14 * HOUR
    assert split.describe()["test_first_day"] == "1970-01-02 11:59:53"
    assert split.describe()["test_last_day"] == "1970-01-02 23:59:52"
    assert split.test.seconds == (172_793 - 12 * 3600, 172_793)


def test_a_train_start_of_hours_is_kept_to_the_second():
    first, last = pd.Timestamp("2018-04-01 00:00:00"), pd.Timestamp("2018-04-03 23:00:00")
    config = SplitConfig(
        train_start="2018-04-02 06:30:00.700", train_days="12h", delay_days="1h", test_days="6h"
    )
    split = place_split(first, last, config)
    assert split.train.start == pd.Timestamp("2018-04-02 06:30:00")
    assert split.test.end == pd.Timestamp("2018-04-02 06:30:00") + 19 * HOUR


def test_whole_days_start_at_midnight_whatever_the_time_of_day():
    first, last = pd.Timestamp("2018-04-01 08:00"), pd.Timestamp("2018-05-30 22:00")
    split = place_split(first, last, SplitConfig(train_start="2018-05-01 15:00"))
    assert split.whole_days
    assert split.origin == pd.Timestamp("2018-04-01")
    assert split.train.start == pd.Timestamp("2018-05-01")


def _reference_day_split(table: pd.DataFrame, config: SplitConfig) -> dict[str, set]:
    """The split in day indices, the way it was computed before durations.

    Returns the transaction ids of each window, and of the evaluated windows without the cards
    known to be compromised (a fraud on a day before d - delay_days, from the history start).
    """
    train, delay, test = (
        duration // DAY
        for duration in (config.train_duration, config.delay_duration, config.test_duration)
    )
    days = table[DAY_COLUMN]
    start = int(days.max()) + 1 - (train + delay + test)
    shift = delay + test
    windows = {
        "validation_train": (start - shift, start - shift + train),
        "validation": (start + train - test, start + train),
        "train": (start, start + train),
        "test": (start + train + delay, start + train + delay + test),
    }
    rows = {name: table[(days >= low) & (days < high)] for name, (low, high) in windows.items()}
    found = {name: set(frame["TRANSACTION_ID"]) for name, frame in rows.items()}
    for name, history_start in (("validation", start - shift), ("test", start)):
        frauds = table[(days >= history_start) & (table["TX_FRAUD"] == 1)]
        first_fraud_day = frauds.groupby("CUSTOMER_ID")[DAY_COLUMN].min()
        evaluated = rows[name]
        known = evaluated["CUSTOMER_ID"].map(first_fraud_day) < evaluated[DAY_COLUMN] - delay
        found[f"{name}_evaluated"] = set(evaluated.loc[~known, "TRANSACTION_ID"])
    return found


@pytest.mark.parametrize(
    "config",
    [
        SplitConfig(),
        SplitConfig(train_days=10, delay_days=5, test_days=4),
        SplitConfig(train_days="3d", delay_days="0", test_days="48h"),
    ],
)
def test_whole_days_give_the_day_split_of_before(config):
    table = prepare_transactions(tiny_simulation(seed=3, n_days=40), DataConfig(), "tiny")
    split = plan_split(table, "TX_DATETIME", config)
    reference = _reference_day_split(table, config)
    for name in ("validation_train", "validation", "train", "test"):
        rows = getattr(split, name).select(table, "TX_DATETIME")
        assert set(rows["TRANSACTION_ID"]) == reference[name], name
    for name in ("validation", "test"):
        rows = evaluation_rows(table, split, name, COLUMNS)
        assert set(rows["TRANSACTION_ID"]) == reference[f"{name}_evaluated"], name
        # Evaluation days of whole-day windows are the calendar days of before.
        np.testing.assert_array_equal(rows[DAY_COLUMN], table.loc[rows.index, DAY_COLUMN])


def _card_table(rows):
    """Transactions (hours since 2018-04-01, card, fraud)."""
    frame = pd.DataFrame(rows, columns=["hours", "CUSTOMER_ID", "TX_FRAUD"])
    frame["TX_DATETIME"] = pd.Timestamp("2018-04-01") + frame.pop("hours") * HOUR
    return frame


def _day_split(test: tuple[int, int], train_start: int = 0, delay_days: int = 7) -> TimeSplit:
    origin = pd.Timestamp("2018-04-01")
    day = [origin + n * DAY for n in range(30)]
    return TimeSplit(
        origin=origin,
        delay=delay_days * DAY,
        whole_days=True,
        validation_train=TimeWindow(day[0], day[1]),
        validation=TimeWindow(day[1], day[2]),
        train=TimeWindow(day[train_start], day[3]),
        test=TimeWindow(day[test[0]], day[test[1]]),
    )


def test_cards_known_to_be_compromised_are_removed_from_the_test():
    """The book: on test day d, drop cards with a fraud known by d (older than the delay)."""
    table = _card_table(
        [
            (0 * 24 + 9, "a", 1),  # training day: card a known from the first test day on
            (10 * 24 + 9, "a", 0),
            (3 * 24 + 9, "b", 1),  # delay day 3: known on test days >= 3 + 7 + 1 = 11
            (10 * 24 + 9, "b", 0),
            (11 * 24 + 9, "b", 0),
            (10 * 24 + 9, "c", 1),  # fraud inside the test itself: stays
            (11 * 24 + 9, "c", 0),
        ]
    )
    rows = evaluation_rows(table, _day_split(test=(10, 13)), "test", COLUMNS)
    assert sorted(zip(rows[DAY_COLUMN], rows["CUSTOMER_ID"], strict=True)) == [
        (10, "b"),
        (10, "c"),
        (11, "c"),
    ]


def test_without_cards_the_window_is_kept_whole():
    table = _card_table([(10 * 24, "a", 1), (11 * 24, "a", 0)]).drop(columns="CUSTOMER_ID")
    rows = evaluation_rows(table, _day_split(test=(10, 12)), "test", COLUMNS)
    assert len(rows) == 2
    assert rows[DAY_COLUMN].tolist() == [10, 11]


def test_a_window_of_hours_is_evaluated_in_24_hour_days_from_its_start():
    """A 36-hour test from 06:00: day one is 06:00 to 06:00, day two the last 12 hours."""
    origin = pd.Timestamp("2018-04-01")
    start = origin + 10 * DAY + 6 * HOUR
    split = TimeSplit(
        origin=origin,
        delay=2 * HOUR,
        whole_days=False,
        validation_train=TimeWindow(origin, origin + DAY),
        validation=TimeWindow(origin + DAY, origin + 2 * DAY),
        train=TimeWindow(origin + 8 * DAY, start - 2 * HOUR),
        test=TimeWindow(start, start + 36 * HOUR),
    )
    hours = 10 * 24 + 6  # the test's first hour
    table = _card_table(
        [
            (hours - 3, "a", 1),  # 3 hours before the test: known after the 2-hour delay
            (hours, "a", 0),
            (hours - 1, "b", 1),  # 1 hour before: still unknown on day one...
            (hours + 1, "b", 0),
            (hours + 24, "b", 0),  # ...known on day two
            (hours + 23, "c", 0),
            (hours + 35, "c", 0),
            (hours + 36, "c", 0),  # after the test
        ]
    )
    rows = evaluation_rows(table, split, "test", COLUMNS)
    assert sorted(zip(rows[DAY_COLUMN], rows["CUSTOMER_ID"], strict=True)) == [
        (10, "b"),
        (10, "c"),
        (11, "c"),
    ]


def test_a_split_that_starts_before_the_features_have_history_says_so(caplog):
    first, last = pd.Timestamp("2018-04-01"), pd.Timestamp("2018-05-10 12:00")
    place_split(first, last, SplitConfig(), warm_up=37 * DAY)
    assert "Validation training starts 2018-04-06, 5 days into the data" in caplog.text
    assert "need 37 days of history" in caplog.text
    caplog.clear()
    place_split(first, last, SplitConfig(), warm_up=5 * DAY)
    assert not caplog.text


def test_a_window_without_any_known_fraud_is_kept_whole():
    table = _card_table([(10 * 24, "a", 0), (11 * 24, "b", 0)])
    rows = evaluation_rows(table, _day_split(test=(10, 12)), "test", COLUMNS)
    assert rows["CUSTOMER_ID"].tolist() == ["a", "b"]
