"""The Spark engine's features equal the pandas engine's on the same rows.

Counts must be equal exactly; amounts and rates within rtol 1e-9 (the pandas engine sums by
differences of cumulative sums over the whole table, which rounds at about 1e-11 here; Spark sums
each window directly).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark", reason='the Spark engine needs PySpark: pip install -e ".[spark]"')

from fraud_detection.config import ConfigError, DataConfig, FeatureWindows, TransactionColumns
from fraud_detection.data import features as pandas_features
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.data.validation import prepare_transactions as pandas_prepare
from fraud_detection.spark import features as spark_features
from fraud_detection.spark.reading import read_source
from fraud_detection.spark.validation import prepare_transactions as spark_prepare
from tests.support.pipeline import tiny_simulation

RTOL = 1e-9
DAY, HOUR = 86_400, 3_600


def _spark_features(spark, table: pd.DataFrame, columns=None, **arguments) -> pd.DataFrame:
    """The Spark engine's features of ``table`` (checked as in the pipeline), by transaction id."""
    config = DataConfig(data="table", columns=columns or TransactionColumns())
    prepared = spark_prepare(spark.createDataFrame(table), config, "table")
    featured = spark_features.add_features(prepared, config.columns, **arguments)
    return featured.toPandas().set_index(config.columns.id_column).sort_index()


def _assert_same_features(spark_frame, pandas_frame, names) -> None:
    for name in names:
        actual = spark_frame[name].to_numpy(np.float64)
        expected = pandas_frame.loc[spark_frame.index, name].to_numpy(np.float64)
        if "NB_TX" in name or name.startswith("TX_DURING"):
            np.testing.assert_array_equal(actual, expected, err_msg=name)
        else:
            np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=0, err_msg=name)


def test_simulated_data_equals_the_pandas_engine(spark):
    table = pandas_prepare(tiny_simulation(seed=3, n_days=40), DataConfig(), "tiny")
    expected = pandas_features.add_features(table).set_index("TRANSACTION_ID")
    featured = _spark_features(spark, table.drop(columns=DAY_COLUMN))
    assert list(featured.columns) == list(expected.columns)  # same columns, same order
    assert len(featured) == len(expected)
    _assert_same_features(featured, expected, pandas_features.FEATURE_COLUMNS)


def _crafted() -> pd.DataFrame:
    """Same-second ties on a card and on a terminal, a burst, windows ending exactly on a row."""
    start = pd.Timestamp("2018-04-06 23:00:00")  # a Friday night, into the weekend
    rows = [
        # id, seconds after start, card, terminal, amount, fraud
        (10, 0, "a", 1, 10.0, 1),
        (12, 0, "a", 1, 30.0, 0),  # same second as 10, same card and terminal
        (11, 0, "a", 2, 20.0, 0),  # same second again, listed out of id order
        (13, 1, "a", 1, 5.0, 0),
        (14, DAY, "a", 1, 7.0, 0),  # exactly one day after 10-12: not in their 1-day window
        (15, DAY - 1, "b", 1, 0.0, 1),  # a free item
        (16, DAY - 1, "b", 1, -4.0, 0),  # a refund larger than the spend, same second
        *((20 + i, 3 * DAY + 60 * i, "c", 3, 1.0 + i, i % 2) for i in range(6)),  # burst
        (30, 7 * DAY, "d", 1, 9.0, 0),  # terminal 1's frauds are exactly 7 days old
        (31, 8 * DAY, "d", 1, 9.0, 0),  # 10-12 exactly 8 days old: out of the 1-day window
        (32, 8 * DAY - 1, "e", 1, 3.0, 0),
        (33, 37 * DAY, "a", 1, 2.0, 0),  # 10-12 exactly 37 days old: out of every window
        (34, 37 * DAY - 1, "a", 1, 2.0, 0),
    ]
    frame = pd.DataFrame(
        rows, columns=["TRANSACTION_ID", "offset", "CUSTOMER_ID", "TERMINAL_ID", "amount", "fraud"]
    )
    frame.insert(1, "TX_DATETIME", start + pd.to_timedelta(frame.pop("offset"), unit="s"))
    return frame


CRAFTED_COLUMNS = TransactionColumns(amount_column="amount", label_column="fraud")


@pytest.mark.parametrize("delay_days", [7, 0])
def test_ties_bursts_and_boundaries_equal_the_pandas_engine(spark, delay_days):
    table = _crafted()
    config = DataConfig(data="crafted", columns=CRAFTED_COLUMNS)
    prepared = pandas_prepare(table, config, "crafted")
    expected = pandas_features.add_features(prepared, CRAFTED_COLUMNS, delay_days=delay_days)
    featured = _spark_features(spark, table, CRAFTED_COLUMNS, delay_days=delay_days)
    _assert_same_features(
        featured, expected.set_index("TRANSACTION_ID"), pandas_features.FEATURE_COLUMNS
    )
    # The tie rule itself (docs/spark.md): at one instant, a row counts the rows of smaller id.
    assert featured.loc[[10, 11, 12], "CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist() == [1, 2, 3]
    assert featured.loc[[10, 11, 12], "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"].tolist() == [10, 15, 20]
    assert featured.loc[14, "CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2  # 13 and itself, not 10-12
    assert featured.loc[16, "CUSTOMER_ID_AMOUNT_RATIO_1DAY_WINDOW"] == 1.0  # average -2
    if delay_days == 7:
        # Terminal 1, windows ending 7 days back: 30 sees (-1 day, 0]: 10 (fraud) and 12 ...
        assert featured.loc[30, "TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 2
        assert featured.loc[30, "TERMINAL_ID_RISK_1DAY_WINDOW"] == 0.5
        # ... 31 sees (0, 1 day]: 13, 15, 16 and 14, not 10 and 12 exactly 8 days old.
        assert featured.loc[31, "TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 4
        # 30 days back from 37 days ends at day 0 exactly for 33, a second later for 34.
        assert featured.loc[[33, 34], "TERMINAL_ID_NB_TX_30DAY_WINDOW"].tolist() == [7, 9]
    else:
        # Without delay a row's own label never counts: 12 sees 10 (fraud) at its instant.
        assert featured.loc[[10, 12, 13], "TERMINAL_ID_NB_TX_1DAY_WINDOW"].tolist() == [0, 1, 2]
        assert featured.loc[12, "TERMINAL_ID_RISK_1DAY_WINDOW"] == 1.0


def test_the_pandas_engine_orders_ties_by_id_in_any_row_order():
    prepared = pandas_prepare(_crafted(), DataConfig(data="c", columns=CRAFTED_COLUMNS), "c")
    in_order = pandas_features.add_features(prepared, CRAFTED_COLUMNS, delay_days=0)
    shuffled = prepared.sample(frac=1.0, random_state=4)
    reordered = pandas_features.add_features(shuffled, CRAFTED_COLUMNS, delay_days=0)
    pd.testing.assert_frame_equal(
        reordered.set_index("TRANSACTION_ID").sort_index(),
        in_order.set_index("TRANSACTION_ID").sort_index(),
    )


def _reference(table: pd.DataFrame, entity: str, value: str, length: int, end: int, current: bool):
    """Count and sum of ``value`` per row by brute force over every pair of rows (the rule of
    docs/spark.md written out: window (t - end - length, t - end], ties by id)."""
    seconds = (table["TX_DATETIME"] - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
    counts, totals = [], []
    for i in range(len(table)):
        t, ident = seconds.iloc[i], table["TRANSACTION_ID"].iloc[i]
        same = table[entity] == table[entity].iloc[i]
        inside = (seconds > t - end - length) & (seconds <= t - end)
        if end == 0:
            earlier = (seconds < t) | (table["TRANSACTION_ID"] < ident)
            inside &= earlier | ((table["TRANSACTION_ID"] == ident) & current)
        counts.append(float((same & inside).sum()))
        totals.append(float(table.loc[same & inside, value].sum()))
    return np.array(counts), np.array(totals)


def test_hour_windows_follow_the_rule(spark):
    """Windows that are not whole days (36 h, 90 min) against a brute-force reference."""
    table = _crafted()
    windows = FeatureWindows.parse("36h,90min")
    featured = _spark_features(spark, table, CRAFTED_COLUMNS, delay_days="1h", windows=windows).loc[
        table["TRANSACTION_ID"]
    ]
    for name, length in zip(windows.labels, windows.seconds, strict=True):
        count, total = _reference(table, "CUSTOMER_ID", "amount", length, 0, current=True)
        np.testing.assert_array_equal(featured[f"CUSTOMER_ID_NB_TX_{name}_WINDOW"], count)
        np.testing.assert_allclose(
            featured[f"CUSTOMER_ID_AVG_AMOUNT_{name}_WINDOW"], total / count, rtol=RTOL
        )
        count, frauds = _reference(table, "TERMINAL_ID", "fraud", length, HOUR, current=False)
        np.testing.assert_array_equal(featured[f"TERMINAL_ID_NB_TX_{name}_WINDOW"], count)
        risk = np.divide(frauds, count, out=np.zeros_like(frauds), where=count > 0)
        np.testing.assert_allclose(featured[f"TERMINAL_ID_RISK_{name}_WINDOW"], risk, rtol=RTOL)


@pytest.mark.parametrize(
    ("windows", "delay"),
    [("1h,6h,24h", "2h"), ("36h,90min,45s", "1h30min"), ("1d,2h", 0)],
)
def test_hour_windows_and_delays_equal_the_pandas_engine(spark, windows, delay):
    """Hour, minute and second windows with an hour delay: the same columns, names and values
    on both engines (simulated days, then the crafted ties and boundaries)."""
    windows = FeatureWindows.parse(windows)
    names = pandas_features.feature_columns(windows)
    assert any("H_WINDOW" in name for name in names)  # not the default day names
    simulated = pandas_prepare(tiny_simulation(seed=5, n_days=6), DataConfig(), "tiny")
    crafted = pandas_prepare(_crafted(), DataConfig(data="c", columns=CRAFTED_COLUMNS), "c")
    for table, columns in ((simulated, TransactionColumns()), (crafted, CRAFTED_COLUMNS)):
        expected = pandas_features.add_features(table, columns, delay_days=delay, windows=windows)
        expected = expected.set_index("TRANSACTION_ID")
        featured = _spark_features(
            spark, table.drop(columns=DAY_COLUMN), columns, delay_days=delay, windows=windows
        )
        assert list(featured.columns) == list(expected.columns)
        assert len(featured) == len(expected)
        _assert_same_features(featured, expected, names)


def test_without_an_id_ties_follow_the_files_order(spark, tmp_path):
    """No id column: rows at one instant count in the order of the file, on both engines."""
    table = _crafted().drop(columns="TRANSACTION_ID")
    path = tmp_path / "no-id.csv"
    table.to_csv(path, index=False)
    columns = CRAFTED_COLUMNS
    config = DataConfig(data=str(path), columns=columns)
    expected = pandas_features.add_features(
        pandas_prepare(pd.read_csv(path), config, str(path)), columns, delay_days=0
    )
    prepared = spark_prepare(read_source(spark, str(path)), config, str(path))
    featured = spark_features.add_features(prepared, columns, delay_days=0).toPandas()
    key = ["TX_DATETIME", "CUSTOMER_ID", "amount"]  # unique in this table
    featured = featured.set_index(key).sort_index()
    expected = expected.set_index(key).sort_index()
    _assert_same_features(featured, expected, pandas_features.FEATURE_COLUMNS)


@pytest.mark.parametrize(
    ("delay", "message"),
    [
        (-1, "delay_days must be at least 0 and at most 366 days, got -1"),
        ("400d", "delay_days must be at least 0 and at most 366 days, got '400d'"),
        ("soon", "delay_days must be a number of days or a duration like 36h or 90min"),
        ("1.5s", "delay_days must be a whole number of seconds"),
    ],
)
def test_bad_delays_are_refused_with_the_parameters_message(spark, delay, message):
    frame = spark.createDataFrame(_crafted())
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        spark_features.add_features(frame, CRAFTED_COLUMNS, delay_days=delay)
