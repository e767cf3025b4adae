"""Reading with Spark: every kind of source, and every bad table failing with the pandas
engine's message."""

from __future__ import annotations

import pandas as pd
import pytest

pytest.importorskip("pyspark", reason='the Spark engine needs PySpark: pip install -e ".[spark]"')

from fraud_detection.config import DataConfig, TransactionColumns
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.data.transactions import load_transactions as pandas_load
from fraud_detection.data.validation import require_both_classes as pandas_both_classes
from fraud_detection.errors import DataError
from fraud_detection.spark.reading import (
    DeltaUnavailableError,
    load_transactions,
    read_source,
)
from fraud_detection.spark.validation import fingerprint, prepare_transactions
from fraud_detection.spark.validation import require_both_classes as spark_both_classes
from tests.support.pipeline import tiny_simulation


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return tiny_simulation(n_days=10).drop(columns="TX_FRAUD_SCENARIO")


def _rows(frame: pd.DataFrame) -> pd.DataFrame:
    """A loaded table in a comparable form: by transaction id, timestamps to the microsecond."""
    frame = frame.set_index("TRANSACTION_ID").sort_index()
    frame["TX_DATETIME"] = frame["TX_DATETIME"].astype("datetime64[us]")
    return frame


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "parquet", "parquet-directory", "csv-directory"])
def test_files_and_directories_load_like_the_pandas_engine(spark, tmp_path, raw, kind):
    path = tmp_path / f"transactions.{kind}"
    if kind == "parquet":
        raw.to_parquet(path)  # read by Spark as timestamp_ntz
    elif kind.startswith("csv") and "directory" not in kind:
        raw.sample(frac=1.0, random_state=0).to_csv(path, index=False)
    else:
        writer = spark.createDataFrame(raw).repartition(3).write
        if kind == "parquet-directory":
            writer.parquet(str(path))
        else:
            writer.csv(str(path), header=True)
    loaded = load_transactions(spark, DataConfig(data=str(path)))
    assert loaded.source == str(path)
    assert len(loaded.fingerprint) == 16
    ours = _rows(loaded.frame.toPandas())
    if "directory" in kind:
        path = tmp_path / "reference.parquet"
        raw.to_parquet(path)
    expected = _rows(pandas_load(DataConfig(data=str(path))).table)
    assert list(ours.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(ours, expected, check_dtype=False, check_index_type=False)


def test_simulated_data_loads_like_the_pandas_engine(spark):
    config = DataConfig(n_customers=60, n_terminals=120, n_days=8, seed=2)
    loaded = load_transactions(spark, config)
    assert loaded.source == pandas_load(config).source
    ours, expected = _rows(loaded.frame.toPandas()), _rows(pandas_load(config).table)
    pd.testing.assert_frame_equal(ours, expected, check_dtype=False, check_index_type=False)


def test_a_table_name_and_a_relative_path(spark, tmp_path, raw, monkeypatch):
    spark.createDataFrame(raw).createOrReplaceTempView("transactions_view")
    by_name = load_transactions(spark, DataConfig(data="transactions_view"))
    assert by_name.frame.count() == len(raw)
    monkeypatch.chdir(tmp_path)  # Spark's JVM started elsewhere: the path is made absolute
    raw.to_csv("relative.csv", index=False)
    assert load_transactions(spark, DataConfig(data="relative.csv")).frame.count() == len(raw)


def test_seconds_as_timestamps_give_the_pandas_engines_days(spark, tmp_path, raw):
    """A table timed in seconds from its first transaction (as the public credit-card data)."""
    timed = raw.assign(Time=(raw["TX_DATETIME"] - raw["TX_DATETIME"].min()).dt.total_seconds())
    timed = timed.drop(columns="TX_DATETIME")
    path = tmp_path / "seconds.parquet"
    timed.to_parquet(path)
    config = DataConfig(data=str(path), columns=TransactionColumns(timestamp_column="Time"))
    ours = load_transactions(spark, config).frame.toPandas().set_index("TRANSACTION_ID")
    expected = pandas_load(config).table.set_index("TRANSACTION_ID")
    assert (ours.loc[expected.index, DAY_COLUMN] == expected[DAY_COLUMN]).all()
    assert (ours.loc[expected.index, "Time"] == expected["Time"]).all()


BAD_TABLES = [
    (lambda t: t.drop(columns="TX_AMOUNT"), "missing column.*TX_AMOUNT"),
    (lambda t: t.assign(TX_FRAUD=t["TX_FRAUD"] * 2), "TX_FRAUD must hold 0/1 labels"),
    (lambda t: t.assign(TX_FRAUD="yes"), "TX_FRAUD must hold 0/1 labels"),
    (lambda t: t.assign(TX_FRAUD=t["TX_FRAUD"].where(t.index != 4)), "1 missing label"),
    (lambda t: t.assign(TX_DATETIME="not a date"), "TX_DATETIME has .* not timestamps"),
    (lambda t: t.assign(TX_AMOUNT=t["TX_AMOUNT"].where(t.index != 3)), "1 missing value"),
    (lambda t: t.assign(TX_AMOUNT="12 EUR"), "TX_AMOUNT must be numeric"),
    (
        lambda t: t.assign(TRANSACTION_ID=t["TRANSACTION_ID"].where(t.index != 2, 1)),
        "TRANSACTION_ID has 1 duplicated",
    ),
    (lambda t: t.head(0), "no rows"),
]


@pytest.mark.parametrize(("change", "message"), BAD_TABLES)
def test_bad_tables_fail_as_on_the_pandas_engine(spark, tmp_path, raw, change, message):
    path = tmp_path / "t.csv"
    change(raw.copy()).to_csv(path, index=False)
    config = DataConfig(data=str(path))
    with pytest.raises(DataError, match=message) as on_spark:
        load_transactions(spark, config)
    with pytest.raises(DataError) as on_pandas:
        pandas_load(config)
    if "numeric" in message:  # the type is named in each engine's terms: string, str
        assert str(on_spark.value).startswith(f"{path}: column TX_AMOUNT must be numeric, found")
    else:
        assert str(on_spark.value) == str(on_pandas.value)


def test_infinite_amounts(spark, tmp_path, raw):
    path = tmp_path / "t.parquet"
    raw.assign(TX_AMOUNT=raw["TX_AMOUNT"].where(raw.index != 5, float("inf"))).to_parquet(path)
    with pytest.raises(DataError, match="TX_AMOUNT has infinite value"):
        load_transactions(spark, DataConfig(data=str(path)))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("absent.csv", None, "no such file"),
        ("empty.csv", b"", "the file is empty"),
        ("t.json", b"{}", "unsupported file type"),
        ("t.csv.zip", b"PK", "cannot read zip files"),
        ("t.parquet", b"PAR1 truncated", "not a readable Parquet file"),
    ],
)
def test_unreadable_files(spark, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as caught:
        load_transactions(spark, DataConfig(data=str(path)))
    assert str(caught.value).startswith(f"{path}: ")
    assert "\n" not in str(caught.value)


def test_a_missing_table_name(spark):
    with pytest.raises(DataError, match=r"^no_such_table: no such file or table$"):
        read_source(spark, "no_such_table")


def test_delta_without_delta_lake_says_what_to_install(spark, tmp_path, raw):
    """Delta reading itself needs jars this machine cannot download: only the refusal is
    tested (docs/spark.md)."""
    table = tmp_path / "delta-table"
    spark.createDataFrame(raw).write.parquet(str(table))
    (table / "_delta_log").mkdir()
    with pytest.raises(DeltaUnavailableError, match=r"is a Delta table.*pip install delta-spark"):
        read_source(spark, str(table))


def test_one_class_only_fails_as_on_the_pandas_engine(spark, raw):
    genuine = raw.assign(TX_FRAUD=0)
    on_spark = spark.createDataFrame(genuine)
    for rows, where in ((0, "empty window"), (len(genuine), "training window")):
        with pytest.raises(DataError) as pandas_error:
            pandas_both_classes(genuine["TX_FRAUD"].head(rows), where)
        with pytest.raises(DataError) as spark_error:
            spark_both_classes(on_spark.limit(rows), "TX_FRAUD", where)
        assert str(spark_error.value) == str(pandas_error.value)
    frauds = spark.createDataFrame(raw.assign(TX_FRAUD=1))
    with pytest.raises(DataError, match="only fraud"):
        spark_both_classes(frauds, "TX_FRAUD", "somewhere")


def test_fingerprint_ignores_row_order_and_sees_content(spark, raw):
    frame = spark.createDataFrame(raw)
    assert fingerprint(frame) == fingerprint(frame.orderBy("TX_AMOUNT").repartition(3))
    changed = raw.copy()
    changed.loc[changed.index[-1], "TX_AMOUNT"] += 0.01
    assert fingerprint(spark.createDataFrame(changed)) != fingerprint(frame)


def test_scoring_tables_may_lack_labels(spark, raw):
    unlabelled = raw.assign(TX_FRAUD=raw["TX_FRAUD"].where(raw.index % 2 == 0))
    frame = spark.createDataFrame(unlabelled)
    checked = prepare_transactions(frame, DataConfig(), "new", require_labels=False)
    assert checked.filter("TX_FRAUD IS NULL").count() == (raw.index % 2 == 1).sum()
