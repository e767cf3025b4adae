"""The split on Spark places the pandas engine's windows and selects the same rows."""

from __future__ import annotations

import time

import pandas as pd
import pytest

pytest.importorskip("pyspark", reason='the Spark engine needs PySpark: pip install -e ".[spark]"')

from fraud_detection.config import DataConfig, SplitConfig, TransactionColumns
from fraud_detection.data import split as pandas_split
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.data.split import TimeSplit, TimeWindow
from fraud_detection.data.validation import prepare_transactions as pandas_prepare
from fraud_detection.errors import DataError
from fraud_detection.spark import split as spark_split
from fraud_detection.spark.validation import prepare_transactions as spark_prepare
from tests.support import public_data
from tests.support.pipeline import tiny_simulation

COLUMNS = TransactionColumns()
DAY, HOUR, SECOND = pd.Timedelta(days=1), pd.Timedelta(hours=1), pd.Timedelta(seconds=1)
WHOLE_DAYS = SplitConfig(train_start="2018-04-20", train_days=5, delay_days=3, test_days=4)
HOURS = SplitConfig(
    train_start="2018-04-25 06:30", train_days="3d", delay_days="12h", test_days="2d"
)


@pytest.fixture(scope="module")
def tables(spark):
    """The same 40 simulated days, checked by each engine; the Spark one cached for the module."""
    raw = tiny_simulation(seed=4, n_days=40)
    on_pandas = pandas_prepare(raw, DataConfig(), "tiny")
    on_spark = spark_prepare(spark.createDataFrame(raw), DataConfig(), "tiny").cache()
    yield on_pandas, on_spark
    on_spark.unpersist()


def _ids(frame) -> list[int]:
    if isinstance(frame, pd.DataFrame):
        return sorted(frame["TRANSACTION_ID"])
    return sorted(row[0] for row in frame.select("TRANSACTION_ID").collect())


def _days_by_id(frame) -> list[tuple[int, int]]:
    """(transaction id, evaluation day) of each row, in id order."""
    if not isinstance(frame, pd.DataFrame):
        frame = frame.select("TRANSACTION_ID", DAY_COLUMN).toPandas()
    return sorted(zip(frame["TRANSACTION_ID"], frame[DAY_COLUMN], strict=True))


@pytest.mark.parametrize(
    "config",
    [
        SplitConfig(),
        WHOLE_DAYS,
        HOURS,  # windows from 06:30, a 12-hour delay
        SplitConfig(train_days="36h", delay_days="2h", test_days="30h"),  # from the data's second
    ],
    ids=["default", "whole-days", "hours-from-06:30", "hours-automatic"],
)
def test_same_windows_and_rows_as_the_pandas_engine(tables, config):
    on_pandas, on_spark = tables
    expected = pandas_split.plan_split(on_pandas, "TX_DATETIME", config)
    split = spark_split.plan_split(on_spark, "TX_DATETIME", config)
    assert split == expected
    for name in ("validation_train", "train", "validation", "test"):
        window = getattr(split, name)
        rows = spark_split.select_window(on_spark, window, "TX_DATETIME")
        assert _ids(rows) == _ids(window.select(on_pandas, "TX_DATETIME")), name
    for name in ("validation", "test"):
        pandas_rows = pandas_split.evaluation_rows(on_pandas, expected, name, COLUMNS)
        spark_rows = spark_split.evaluation_rows(on_spark, split, name, COLUMNS)
        assert _days_by_id(spark_rows) == _days_by_id(pandas_rows), name
        window = getattr(expected, name)
        assert len(pandas_rows) < len(window.select(on_pandas, "TX_DATETIME"))  # cards removed


def test_training_windows_of_hours_hold_the_pandas_engines_rows(tables):
    on_pandas, on_spark = tables
    split = spark_split.plan_split(on_spark, "TX_DATETIME", HOURS)
    windows = spark_split.training_windows(on_spark, split, COLUMNS, "tiny")
    assert _ids(windows.validation_train) == _ids(
        split.validation_train.select(on_pandas, "TX_DATETIME")
    )
    assert _ids(windows.training) == _ids(split.train.select(on_pandas, "TX_DATETIME"))
    validation = pandas_split.evaluation_rows(on_pandas, split, "validation", COLUMNS)
    assert _days_by_id(windows.validation) == _days_by_id(validation)


@pytest.mark.parametrize(
    "config", [SplitConfig(train_start="2018-04-03"), HOURS], ids=["whole-days", "hours"]
)
def test_a_split_that_does_not_fit_fails_with_the_pandas_message(tables, config):
    on_pandas, on_spark = tables
    if config is HOURS:  # data that ends where training would start
        on_pandas = on_pandas[on_pandas["TX_DATETIME"] < pd.Timestamp("2018-04-25 06:30")]
        on_spark = on_spark.filter(on_spark["TX_DATETIME"] < pd.Timestamp("2018-04-25 06:30"))
    with pytest.raises(DataError) as on_pandas_error:
        pandas_split.plan_split(on_pandas, "TX_DATETIME", config)
    with pytest.raises(DataError) as on_spark_error:
        spark_split.plan_split(on_spark, "TX_DATETIME", config)
    assert str(on_spark_error.value) == str(on_pandas_error.value)


def test_a_split_short_of_feature_history_warns_as_on_the_pandas_engine(tables, caplog):
    on_pandas, on_spark = tables
    warnings = []
    for engine, table in ((pandas_split, on_pandas), (spark_split, on_spark)):
        caplog.clear()
        engine.plan_split(table, "TX_DATETIME", SplitConfig(), warm_up=37 * DAY)
        warnings.append(caplog.messages)
    assert warnings[1] == warnings[0]
    assert "Validation training starts 2018-04-06, 5 days into the data" in warnings[1][0]


def test_a_48_hour_table_timed_in_seconds_splits_as_on_the_pandas_engine(spark):
    """The public credit-card data's shape (``Time`` in seconds, no card) with the hour windows
    docs/pipeline.md gives it: 16 hours of training, 2 of delay, 12 of test."""
    raw = public_data.credit_card_table(rows=4_000, fraud_rate=0.02)
    parameters = public_data.PARAMETERS
    config = DataConfig(
        data="public",
        feature_columns=parameters["feature_columns"],
        columns=TransactionColumns(
            label_column="Class", timestamp_column="Time", amount_column="Amount"
        ),
    )
    split_config = SplitConfig(
        train_days=parameters["train_days"],
        delay_days=parameters["delay_days"],
        test_days=parameters["test_days"],
    )
    on_pandas = pandas_prepare(raw, config, "public")
    on_spark = spark_prepare(spark.createDataFrame(raw), config, "public")
    expected = pandas_split.plan_split(on_pandas, "Time", split_config)
    split = spark_split.plan_split(on_spark, "Time", split_config)
    assert split == expected
    assert split.test.end == pd.Timestamp(0) + (public_data.LAST_SECOND + 1) * SECOND
    windows = spark_split.training_windows(on_spark, split, config.columns, "public")
    for name, rows in (("validation_train", windows.validation_train), ("train", windows.training)):
        assert rows.count() == len(getattr(split, name).select(on_pandas, "Time")), name
    for name in ("validation", "test"):
        pandas_rows = pandas_split.evaluation_rows(on_pandas, expected, name, config.columns)
        spark_rows = spark_split.evaluation_rows(on_spark, split, name, config.columns)
        assert len(pandas_rows) == len(getattr(split, name).select(on_pandas, "Time"))
        spark_rows = spark_rows.select("Time", DAY_COLUMN).toPandas().sort_values("Time")
        assert spark_rows[DAY_COLUMN].tolist() == pandas_rows[DAY_COLUMN].tolist(), name
        assert (spark_rows["Time"].to_numpy() == pandas_rows["Time"].to_numpy()).all(), name


def _card_table(rows) -> pd.DataFrame:
    """Transactions (time since 2018-04-01, card, fraud)."""
    frame = pd.DataFrame(rows, columns=["since", "CUSTOMER_ID", "TX_FRAUD"])
    frame.insert(0, "TRANSACTION_ID", range(len(frame)))
    frame["TX_DATETIME"] = pd.Timestamp("2018-04-01") + frame.pop("since")
    return frame


def _split(test: TimeWindow, delay: pd.Timedelta, whole_days: bool) -> TimeSplit:
    """A split whose test window is ``test`` and whose training starts at the origin."""
    origin = pd.Timestamp("2018-04-01")
    early = TimeWindow(origin, origin + DAY)
    return TimeSplit(origin, delay, whole_days, early, early, TimeWindow(origin, test.start), test)


def _both_engines(spark, table: pd.DataFrame, split: TimeSplit, columns=COLUMNS):
    """The test window's rows on each engine, as (day, card) pairs."""
    expected = pandas_split.evaluation_rows(table, split, "test", columns)
    rows = spark_split.evaluation_rows(spark.createDataFrame(table), split, "test", columns)
    rows = rows.toPandas()
    assert list(rows.columns) == list(expected.columns)
    pairs = [
        sorted(zip(*_days_and_cards(frame), strict=True), key=str) for frame in (rows, expected)
    ]
    assert pairs[0] == pairs[1]
    return pairs[0]


def _days_and_cards(frame: pd.DataFrame) -> tuple[list, list]:
    cards = frame["CUSTOMER_ID"] if "CUSTOMER_ID" in frame.columns else [None] * len(frame)
    return list(frame[DAY_COLUMN]), [None if pd.isna(card) else card for card in cards]


def _at(days: int, hours: int = 9) -> pd.Timedelta:
    return days * DAY + hours * HOUR


def test_known_compromised_cards_are_removed_on_whole_days(spark):
    """The pandas engine's own case (tests/data/test_split.py), on both engines."""
    table = _card_table(
        [
            (_at(0), "a", 1),  # training day: card a known from the first test day on
            (_at(10), "a", 0),
            (_at(3), "b", 1),  # delay day 3: known on test days >= 3 + 7 + 1 = 11
            (_at(10), "b", 0),
            (_at(11), "b", 0),
            (_at(10), "c", 1),  # fraud inside the test itself: stays
            (_at(11), "c", 0),
            (_at(12), None, 0),  # no card: stays
        ]
    )
    test = TimeWindow(pd.Timestamp("2018-04-11"), pd.Timestamp("2018-04-14"))
    kept = _both_engines(spark, table, _split(test, 7 * DAY, whole_days=True))
    assert kept == [(10, "b"), (10, "c"), (11, "c"), (12, None)]


def test_a_window_of_hours_is_evaluated_in_24_hour_days_from_its_start(spark):
    """A 36-hour test from 06:00 with a 2-hour delay: day one is 06:00 to 06:00, day two the
    last 12 hours; a fraud counts as known strictly before the day's start minus the delay,
    to the fraction of a second."""
    start = 10 * DAY + 6 * HOUR
    table = _card_table(
        [
            (start - 3 * HOUR, "a", 1),  # known after the 2-hour delay
            (start, "a", 0),
            (start - HOUR, "b", 1),  # still unknown on day one...
            (start + HOUR, "b", 0),
            (start + 24 * HOUR, "b", 0),  # ...known on day two
            (start - 2 * HOUR, "d", 1),  # exactly the delay before day one: not yet known
            (start + 2 * HOUR, "d", 0),
            (start - 2 * HOUR - SECOND / 2, "e", 1),  # half a second earlier: known
            (start + 2 * HOUR, "e", 0),
            (start + 23 * HOUR, "c", 0),
            (start + 36 * HOUR - SECOND / 2, "c", 0),  # the test's last half second
            (start + 36 * HOUR, "c", 0),  # after the test
        ]
    )
    origin = pd.Timestamp("2018-04-01")
    test = TimeWindow(origin + start, origin + start + 36 * HOUR)
    kept = _both_engines(spark, table, _split(test, 2 * HOUR, whole_days=False))
    assert kept == [(10, "b"), (10, "c"), (10, "d"), (11, "c")]


def test_without_cards_the_window_is_kept_whole(spark):
    table = _card_table([(10 * DAY, "a", 1), (11 * DAY, "a", 0)]).drop(columns="CUSTOMER_ID")
    test = TimeWindow(pd.Timestamp("2018-04-11"), pd.Timestamp("2018-04-13"))
    kept = _both_engines(spark, table, _split(test, 7 * DAY, whole_days=True))
    assert kept == [(10, None), (11, None)]


def test_a_window_with_one_class_fails_with_the_pandas_message(tables):
    on_pandas, on_spark = tables
    genuine = on_spark.withColumn("TX_FRAUD", on_spark["TX_FRAUD"] * 0)
    split = spark_split.plan_split(genuine, "TX_DATETIME", SplitConfig())
    with pytest.raises(DataError) as caught:
        spark_split.training_windows(genuine, split, COLUMNS, "tiny")
    training = split.validation_train.select(on_pandas, "TX_DATETIME")
    expected = (
        f"tiny, validation train window: {len(training)} transaction(s) with no fraud; a fraud "
        "model needs both classes. Widen the window or check the label column."
    )
    assert str(caught.value) == expected


def test_time_span_is_read_in_utc_whatever_the_drivers_time_zone(tables, monkeypatch):
    """PySpark turns collected timestamps into the driver's local time; the span is not."""
    on_pandas, on_spark = tables
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        first, last = spark_split.time_span(on_spark, "TX_DATETIME")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert (first, last) == (on_pandas["TX_DATETIME"].iloc[0], on_pandas["TX_DATETIME"].iloc[-1])
