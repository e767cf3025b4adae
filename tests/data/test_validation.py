import pandas as pd
import pytest

from fraud_detection.config import (
    ConfigError,
    DataConfig,
)
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.data.transactions import load_transactions
from fraud_detection.data.validation import (
    fingerprint,
    require_both_classes,
)
from fraud_detection.errors import DataError
from tests.support.pipeline import tiny_simulation


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return tiny_simulation(n_days=10).drop(columns="TX_FRAUD_SCENARIO")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".csv.gz"])
def test_user_files_load_like_the_simulator(tmp_path, raw, suffix):
    path = tmp_path / f"transactions{suffix}"
    if suffix == ".parquet":
        raw.to_parquet(path)
    else:
        raw.sample(frac=1.0, random_state=0).to_csv(path, index=False)  # any row order
    loaded = load_transactions(DataConfig(data=str(path)))
    assert loaded.source == str(path)
    assert len(loaded.table) == len(raw)
    assert loaded.table["TX_DATETIME"].is_monotonic_increasing
    assert loaded.table[DAY_COLUMN].min() == 0
    assert loaded.table[DAY_COLUMN].max() == 9


def test_fingerprint_is_stable_and_content_sensitive(raw):
    assert fingerprint(raw) == fingerprint(raw.copy())
    changed = raw.copy()
    changed.loc[changed.index[-1], "TX_AMOUNT"] += 0.01
    assert fingerprint(changed) != fingerprint(raw)


def test_simulated_data_is_identified_by_its_settings():
    loaded = load_transactions(DataConfig(n_customers=50, n_terminals=100, n_days=5, seed=9))
    assert loaded.source.startswith("simulator:n_customers=50,")
    again = load_transactions(DataConfig(n_customers=50, n_terminals=100, n_days=5, seed=9))
    assert again.fingerprint == loaded.fingerprint


def test_other_column_names(tmp_path, raw):
    renamed = raw.rename(columns={"TX_FRAUD": "is_fraud", "TX_DATETIME": "ts"})
    renamed.to_csv(tmp_path / "t.csv", index=False)
    config = DataConfig(data=str(tmp_path / "t.csv"))
    config = DataConfig(
        data=config.data,
        columns=type(config.columns)(label_column="is_fraud", timestamp_column="ts"),
    )
    assert len(load_transactions(config).table) == len(raw)


def _write(tmp_path, frame, name="t.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns="TX_AMOUNT"), "missing column.*TX_AMOUNT"),
        (lambda t: t.assign(TX_FRAUD=t["TX_FRAUD"] * 2), "TX_FRAUD must hold 0/1 labels"),
        (lambda t: t.assign(TX_FRAUD="yes"), "TX_FRAUD must hold 0/1 labels"),
        (lambda t: t.assign(TX_DATETIME="not a date"), "TX_DATETIME has .* not timestamps"),
        (
            lambda t: t.assign(TX_AMOUNT=t["TX_AMOUNT"].where(t.index != 3)),
            "TX_AMOUNT has 1 missing value",
        ),
        (
            lambda t: t.assign(TRANSACTION_ID=t["TRANSACTION_ID"].where(t.index != 2, 1)),
            "TRANSACTION_ID has 1 duplicated",
        ),
        (lambda t: t.head(0), "no rows"),
    ],
)
def test_bad_tables_fail_with_the_column_and_the_problem(tmp_path, raw, change, message):
    path = _write(tmp_path, change(raw.copy()))
    with pytest.raises(DataError, match=message) as caught:
        load_transactions(DataConfig(data=path))
    assert path in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_transactions(DataConfig(data=str(tmp_path / "absent.csv")))


def test_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_transactions(DataConfig(data=str(tmp_path / "empty.csv")))


def test_truncated_parquet(tmp_path, raw):
    path = tmp_path / "t.parquet"
    raw.to_parquet(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_transactions(DataConfig(data=str(path)))


def test_unsupported_file_type(tmp_path):
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(DataError, match="unsupported file type"):
        load_transactions(DataConfig(data=str(tmp_path / "t.json")))


def test_single_class_is_refused():
    with pytest.raises(DataError, match="no fraud"):
        require_both_classes(pd.Series([0, 0, 0]), "somewhere")
    with pytest.raises(DataError, match="only fraud"):
        require_both_classes(pd.Series([1]), "somewhere")


def test_feature_columns_are_checked(tmp_path, raw):
    path = _write(tmp_path, raw)
    with pytest.raises(DataError, match=r"missing column.*V1"):
        load_transactions(DataConfig(data=path, feature_columns="TX_AMOUNT,V1"))
    with pytest.raises(ConfigError, match="label column"):
        DataConfig(data=path, feature_columns="TX_AMOUNT,TX_FRAUD")
