"""The split on Spark places the pandas engine's windows and selects the same rows."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from fraud_detection.config import DataConfig, SplitConfig, TransactionColumns
from fraud_detection.data import split as pandas_split
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.data.validation import prepare_transactions as pandas_prepare
from fraud_detection.errors import DataError
from fraud_detection.spark import split as spark_split
from fraud_detection.spark.validation import prepare_transactions as spark_prepare
from tests.support.pipeline import tiny_simulation

COLUMNS = TransactionColumns()


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


@pytest.mark.parametrize(
    "config",
    [
        SplitConfig(),
        SplitConfig(train_start="2018-04-20", train_days=5, delay_days=3, test_days=4),
    ],
)
def test_same_windows_and_rows_as_the_pandas_engine(tables, config):
    on_pandas, on_spark = tables
    expected = pandas_split.plan_split(on_pandas, "TX_DATETIME", config)
    split = spark_split.plan_split(on_spark, "TX_DATETIME", config)
    assert split == expected
    windows = spark_split.training_windows(on_spark, split, COLUMNS, "tiny")
    assert _ids(windows.training) == _ids(expected.train.select(on_pandas))
    assert _ids(windows.validation_train) == _ids(expected.validation_train.select(on_pandas))
    for name in ("validation", "test"):
        window, history_start = {
            "validation": (expected.validation, expected.validation_train.start),
            "test": (expected.test, expected.train.start),
        }[name]
        pandas_rows = pandas_split.evaluation_rows(
            on_pandas, window, history_start, config.delay_days, "CUSTOMER_ID", "TX_FRAUD"
        )
        spark_rows = spark_split.evaluation_window(on_spark, split, COLUMNS, name)
        assert _ids(spark_rows) == _ids(pandas_rows), name
        assert len(pandas_rows) < len(window.select(on_pandas))  # some cards were removed


def test_a_split_that_does_not_fit_fails_with_the_pandas_message(tables):
    on_pandas, on_spark = tables
    config = SplitConfig(train_start="2018-04-03")
    with pytest.raises(DataError) as on_pandas_error:
        pandas_split.plan_split(on_pandas, "TX_DATETIME", config)
    with pytest.raises(DataError) as on_spark_error:
        spark_split.plan_split(on_spark, "TX_DATETIME", config)
    assert str(on_spark_error.value) == str(on_pandas_error.value)


def _card_table(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[DAY_COLUMN, "CUSTOMER_ID", "TX_FRAUD"])


def test_known_compromised_cards_are_removed_as_in_the_book(spark):
    """The pandas engine's own case (tests/data/test_split.py), on both engines."""
    table = _card_table(
        [
            (0, "a", 1),  # training day: card a known from the first test day on
            (10, "a", 0),
            (3, "b", 1),  # delay day 3: known on test days >= 3 + 7 + 1 = 11
            (10, "b", 0),
            (11, "b", 0),
            (10, "c", 1),  # fraud inside the test itself: stays
            (11, "c", 0),
            (12, None, 0),  # no card: stays
        ]
    )
    arguments = (pandas_split.DayWindow(10, 13), 0, 7, "CUSTOMER_ID", "TX_FRAUD")
    expected = pandas_split.evaluation_rows(table, *arguments)
    rows = spark_split.evaluation_rows(spark.createDataFrame(table), *arguments).toPandas()
    assert sorted(map(tuple, rows.itertuples(index=False)), key=str) == sorted(
        map(tuple, expected.itertuples(index=False)), key=str
    )
    assert list(rows.columns) == list(table.columns)
    assert len(rows) == 4  # (10, b), (10, c), (11, c), (12, None)


def test_without_cards_the_window_is_kept_whole(spark):
    table = _card_table([(10, "a", 1), (11, "a", 0)]).drop(columns="CUSTOMER_ID")
    frame = spark.createDataFrame(table)
    rows = spark_split.evaluation_rows(
        frame, pandas_split.DayWindow(10, 12), 0, 7, None, "TX_FRAUD"
    )
    assert rows.count() == 2


def test_a_window_with_one_class_fails_with_the_pandas_message(tables):
    on_pandas, on_spark = tables
    genuine = on_spark.withColumn("TX_FRAUD", on_spark["TX_FRAUD"] * 0)
    split = spark_split.plan_split(genuine, "TX_DATETIME", SplitConfig())
    with pytest.raises(DataError) as caught:
        spark_split.training_windows(genuine, split, COLUMNS, "tiny")
    training = split.validation_train.select(on_pandas)
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
