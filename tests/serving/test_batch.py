"""Batch scoring with serve.py against a registered @champion in a real tracking store."""

import numpy as np
import pandas as pd
import pytest

from fraud_detection.cli import (
    EXIT_BAD_PARAMETERS,
    EXIT_FAILED,
    main_with_commands,
)
from fraud_detection.config import FeatureWindows, TransactionColumns
from fraud_detection.data.features import (
    FEATURE_COLUMNS,
    add_features,
    feature_columns,
)
from fraud_detection.modelling.pyfunc import (
    DECISION_COLUMN,
    PROBABILITY_COLUMN,
)
from fraud_detection.serving.batch import StreamingFeatures
from serve import COMMANDS
from tests.support.pipeline import tiny_simulation

CHAMPION = "models:/fraud-detector@champion"


def _serve(*args: str) -> int:
    return main_with_commands(COMMANDS, ["batch", *args], "serve")


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    """40 days of raw transactions in time order, as a payment system would export them."""
    return tiny_simulation(seed=8, n_days=40).drop(columns="TX_FRAUD_SCENARIO")


@pytest.fixture
def raw_file(transactions, tmp_path) -> str:
    path = tmp_path / "transactions.csv"
    transactions.to_csv(path, index=False)
    return str(path)


def test_raw_transactions_get_the_training_features(registry, transactions, raw_file, tmp_path):
    import mlflow

    output = tmp_path / "scored.parquet"
    assert _serve("--input", raw_file, "--output", str(output), "--chunk-rows", "700") == 0
    scored = pd.read_parquet(output)
    # Same rows, same order as the input, with the two model outputs appended.
    assert scored["TRANSACTION_ID"].tolist() == transactions["TRANSACTION_ID"].tolist()
    assert list(scored.columns[-2:]) == [PROBABILITY_COLUMN, DECISION_COLUMN]
    # Scored in chunks of 700 rows, as the whole table featured at once (training code). Window
    # sums start from a shorter history, so averages may differ in their last bits.
    featured = add_features(transactions, delay_days=7)[list(FEATURE_COLUMNS)]
    expected = mlflow.pyfunc.load_model(CHAMPION).predict(featured)
    np.testing.assert_allclose(
        scored[PROBABILITY_COLUMN], expected[PROBABILITY_COLUMN], rtol=1e-5, atol=1e-9
    )
    np.testing.assert_array_equal(scored[DECISION_COLUMN], expected[DECISION_COLUMN])
    # Frauds score higher than genuine transactions on average.
    means = scored.groupby("TX_FRAUD")[PROBABILITY_COLUMN].mean()
    assert means[1] > 5 * means[0]


def test_streamed_features_equal_the_whole_table_for_any_chunk_size(transactions):
    # Rows sharing a timestamp across a chunk border, with ids out of order among them: the
    # held-back rows must be featured with the next chunk, in training's (time, id) order.
    table = transactions.head(3000).copy()
    table.loc[1000:1010, "TX_DATETIME"] = table.loc[1000, "TX_DATETIME"]
    table.loc[1000:1010, "TRANSACTION_ID"] = table.loc[1000:1010, "TRANSACTION_ID"].to_numpy()[::-1]
    whole = add_features(
        table.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable"), delay_days=3
    ).sort_index()[list(FEATURE_COLUMNS)]
    for chunk_rows in (97, 1001, 5000):
        stream = StreamingFeatures(TransactionColumns(), delay_days=3, source="t")
        parts = [stream.push(table.iloc[i : i + chunk_rows]) for i in range(0, 3000, chunk_rows)]
        parts.append(stream.finish())
        rows = pd.concat([rows for rows, _ in parts], ignore_index=True)
        features = pd.concat([features for _, features in parts], ignore_index=True)
        assert rows["TRANSACTION_ID"].tolist() == table["TRANSACTION_ID"].tolist(), chunk_rows
        pd.testing.assert_frame_equal(
            features[list(FEATURE_COLUMNS)],
            whole.reset_index(drop=True),
            check_dtype=False,
            rtol=1e-12,  # window sums start from a shorter history: last-bit differences
        )


def test_streamed_features_of_hour_windows_carry_only_the_history_they_need(transactions):
    windows = FeatureWindows.parse("30min,3h")
    table = transactions.head(3000)
    names = list(feature_columns(windows))
    whole = add_features(table, delay_days="1h", windows=windows)[names]
    stream = StreamingFeatures(TransactionColumns(), "1h", source="t", windows=windows)
    parts = [stream.push(table.iloc[i : i + 500]) for i in range(0, 3000, 500)]
    parts.append(stream.finish())
    features = pd.concat([features for _, features in parts], ignore_index=True)
    pd.testing.assert_frame_equal(
        features[names], whole.reset_index(drop=True), check_dtype=False, rtol=1e-12
    )
    # The rows kept between chunks reach back the longest window plus the delay, no further.
    kept = stream._history["TX_DATETIME"]
    assert kept.max() - kept.min() < pd.Timedelta(hours=4)


def test_rows_out_of_time_order_are_refused(registry, transactions, tmp_path, caplog):
    path = tmp_path / "shuffled.csv"
    transactions.sample(frac=1.0, random_state=1).to_csv(path, index=False)
    output = tmp_path / "out.csv"
    assert _serve("--input", str(path), "--output", str(output)) == EXIT_FAILED
    assert "rows must be in time order" in caplog.text
    assert "sort the file by that column" in caplog.text
    assert not output.exists()  # nothing half-written
    assert not list(tmp_path.glob("*.partial"))


def test_feature_rows_are_scored_as_they_are(registry, tmp_path):
    import mlflow

    features = add_features(tiny_simulation(seed=9, n_days=40))[list(FEATURE_COLUMNS)]
    shuffled = features.sample(frac=1.0, random_state=0)  # any order: no history involved
    path = tmp_path / "features.parquet"
    shuffled.to_parquet(path, index=False)
    assert (
        _serve("--input", str(path), "--output", str(tmp_path / "out.csv"), "--chunk-rows", "999")
        == 0
    )
    scored = pd.read_csv(tmp_path / "out.csv")
    expected = mlflow.pyfunc.load_model(CHAMPION).predict(shuffled)
    # XGBoost sums trees in blocks of rows: a row may differ in the last bit with the batch size.
    np.testing.assert_allclose(scored[PROBABILITY_COLUMN], expected[PROBABILITY_COLUMN], rtol=1e-5)


def test_a_model_version_can_be_chosen(registry, raw_file, tmp_path):
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assert _serve("--input", raw_file, "--output", str(one)) == 0
    assert (
        _serve("--model-uri", "models:/fraud-detector/2", "--input", raw_file, "--output", str(two))
        == 0
    )
    assert not np.allclose(
        pd.read_csv(one)[PROBABILITY_COLUMN], pd.read_csv(two)[PROBABILITY_COLUMN]
    )


def test_unlabelled_transactions_can_be_scored(registry, transactions, tmp_path, caplog):
    path = tmp_path / "unlabelled.csv"
    transactions.drop(columns="TX_FRAUD").to_csv(path, index=False)
    assert _serve("--input", str(path), "--output", str(tmp_path / "out.csv")) == 0
    assert "terminal risk features will be 0" in caplog.text


def test_the_report_gives_rows_per_second_for_every_stage(registry, raw_file, tmp_path, capsys):
    assert _serve("--input", raw_file, "--output", str(tmp_path / "out.parquet")) == 0
    report = capsys.readouterr().out
    assert "(version 1)" in report
    for stage in ("read", "features", "predict", "write"):
        assert f"{stage} " in report


def test_a_missing_model_fails_clearly(tracking_uri, raw_file, caplog):
    code = _serve("--model-uri", "models:/nope@champion", "--input", raw_file, "--output", "o.csv")
    assert code == EXIT_FAILED
    assert "cannot resolve models:/nope@champion" in caplog.text


def test_a_missing_column_fails_clearly(registry, transactions, tmp_path, caplog):
    path = tmp_path / "bad.csv"
    transactions.drop(columns="TERMINAL_ID").to_csv(path, index=False)
    assert _serve("--input", str(path), "--output", str(tmp_path / "o.csv")) == EXIT_FAILED
    assert f"{path}: missing column(s) TERMINAL_ID" in caplog.text


def test_a_missing_feature_value_names_the_row(registry, tmp_path, caplog):
    features = add_features(tiny_simulation(seed=9, n_days=5))[list(FEATURE_COLUMNS)]
    features.loc[123, "TX_AMOUNT"] = np.nan
    path = tmp_path / "features.csv"
    features.to_csv(path, index=False)
    assert (
        _serve("--input", str(path), "--output", str(tmp_path / "o.csv"), "--chunk-rows", "100")
        == EXIT_FAILED
    )
    assert "column TX_AMOUNT has missing value(s), first at row 123" in caplog.text


def test_output_must_be_csv_or_parquet(caplog):
    assert _serve("--input", "in.csv", "--output", "out.txt") == EXIT_BAD_PARAMETERS
    assert "--output must end with .csv or .parquet" in caplog.text


def test_an_input_column_named_like_a_model_output_is_kept():
    """A labelled file whose label is called ``is_fraud`` keeps it; the model's decision is
    written beside it as ``predicted_is_fraud``."""
    import numpy as np
    import pandas as pd

    from fraud_detection.serving.batch import output_column

    rows = pd.DataFrame({"is_fraud": [0, 1], "TX_AMOUNT": [5.0, 500.0]})
    assert output_column("is_fraud", rows.columns) == "predicted_is_fraud"
    assert output_column("fraud_probability", rows.columns) == "fraud_probability"
    from fraud_detection.serving.batch import _with_predictions

    scored = _with_predictions(
        rows, {"fraud_probability": np.array([0.1, 0.9]), "is_fraud": np.array([0, 1])}
    )
    assert list(scored.columns) == [
        "is_fraud",
        "TX_AMOUNT",
        "fraud_probability",
        "predicted_is_fraud",
    ]
    assert scored["is_fraud"].tolist() == [0, 1]
