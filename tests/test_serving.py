"""Batch scoring with serve.py against a registered @champion in a real tracking store."""

import numpy as np
import pandas as pd
import pytest

from fraud_detection.cli import EXIT_BAD_PARAMETERS, EXIT_FAILED, main_with_commands
from fraud_detection.config import EvaluateConfig, RegisterConfig, TrainConfig
from fraud_detection.evaluation import evaluate
from fraud_detection.features import FEATURE_COLUMNS, add_features
from fraud_detection.model import DECISION_COLUMN, PROBABILITY_COLUMN
from fraud_detection.registry import register
from fraud_detection.training import train
from serve import COMMANDS
from tests.conftest import FAST_MODEL, LENIENT_GATE, SMALL_DATA, tiny_simulation


@pytest.fixture
def champion(experiment) -> str:
    train(TrainConfig(data=SMALL_DATA, model=FAST_MODEL))
    evaluate(EvaluateConfig(gate=LENIENT_GATE))
    register(RegisterConfig())
    return "models:/fraud-detector@champion"


def _serve(*args: str) -> int:
    return main_with_commands(COMMANDS, ["batch", *args], "serve")


@pytest.fixture
def raw_file(tmp_path) -> tuple[pd.DataFrame, str]:
    table = tiny_simulation(seed=8, n_days=40).drop(columns="TX_FRAUD_SCENARIO")
    shuffled = table.sample(frac=1.0, random_state=1)
    path = tmp_path / "transactions.csv"
    shuffled.to_csv(path, index=False)
    return shuffled.reset_index(drop=True), str(path)


def test_raw_transactions_get_the_training_features(champion, raw_file, tmp_path):
    table, path = raw_file
    output = tmp_path / "scored.parquet"
    assert _serve("--input", path, "--output", str(output)) == 0
    scored = pd.read_parquet(output)
    # Same rows, same order as the input, with the two model outputs appended.
    assert scored["TRANSACTION_ID"].tolist() == table["TRANSACTION_ID"].tolist()
    assert scored[PROBABILITY_COLUMN].between(0, 1).all()
    assert set(scored[DECISION_COLUMN].unique()) <= {0, 1}
    # Frauds score higher than genuine transactions on average.
    means = scored.groupby("TX_FRAUD")[PROBABILITY_COLUMN].mean()
    assert means[1] > 5 * means[0]


def test_feature_rows_are_scored_as_they_are(champion, tmp_path):
    import mlflow

    features = add_features(tiny_simulation(seed=9, n_days=40))[list(FEATURE_COLUMNS)]
    path = tmp_path / "features.csv"
    features.to_csv(path, index=False)
    assert _serve("--input", str(path), "--output", str(tmp_path / "out.csv")) == 0
    scored = pd.read_csv(tmp_path / "out.csv")
    expected = mlflow.pyfunc.load_model(champion).predict(features)
    np.testing.assert_allclose(scored[PROBABILITY_COLUMN], expected[PROBABILITY_COLUMN], rtol=1e-6)


def test_unlabelled_transactions_can_be_scored(champion, raw_file, tmp_path, caplog):
    table, _ = raw_file
    path = tmp_path / "unlabelled.csv"
    table.drop(columns="TX_FRAUD").to_csv(path, index=False)
    assert _serve("--input", str(path), "--output", str(tmp_path / "out.csv")) == 0
    assert "terminal risk features will be 0" in caplog.text


def test_a_missing_model_fails_clearly(tracking_uri, raw_file, tmp_path, caplog):
    _, path = raw_file
    code = _serve("--model-uri", "models:/nope@champion", "--input", path, "--output", "o.csv")
    assert code == EXIT_FAILED
    assert "cannot load model models:/nope@champion" in caplog.text


def test_a_missing_column_fails_clearly(champion, raw_file, tmp_path, caplog):
    table, _ = raw_file
    path = tmp_path / "bad.csv"
    table.drop(columns="TERMINAL_ID").to_csv(path, index=False)
    assert _serve("--input", str(path), "--output", str(tmp_path / "o.csv")) == EXIT_FAILED
    assert f"{path}: missing column(s) TERMINAL_ID" in caplog.text


def test_output_must_be_csv_or_parquet(caplog):
    assert _serve("--input", "in.csv", "--output", "out.txt") == EXIT_BAD_PARAMETERS
    assert "--output must end with .csv or .parquet" in caplog.text
