"""Windows of hours through the steps: a 48-hour table of ready-made features to a @champion,
and hour feature windows whose model scores raw transactions with the same features."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fraud_detection.config import (
    BatchConfig,
    DataConfig,
    EvaluateConfig,
    FeatureWindows,
    RegisterConfig,
    SplitConfig,
    TrainConfig,
    TransactionColumns,
)
from fraud_detection.config.fields import build_config
from fraud_detection.contract import MODEL_ID_TAG
from fraud_detection.data.features import add_features, feature_columns
from fraud_detection.data.windows import prepare_data
from fraud_detection.errors import DataError
from fraud_detection.modelling.pyfunc import PROBABILITY_COLUMN
from fraud_detection.serving.batch import score_file
from fraud_detection.serving.follower import ModelFollower
from fraud_detection.steps.evaluate import evaluate
from fraud_detection.steps.register import register
from fraud_detection.steps.train import train
from tests.support import PROJECT_DIR
from tests.support.pipeline import FAST_MODEL, latest_run
from tests.support.public_data import PARAMETERS, credit_card_table


@pytest.fixture(scope="module")
def table_48_hours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("public") / "creditcard.csv"
    credit_card_table().to_csv(path, index=False)
    return path


def test_whole_days_do_not_fit_48_hours_and_the_refusal_says_why(table_48_hours):
    """What a user met before durations, even with the shortest windows of whole days."""
    data = build_config(DataConfig, {**PARAMETERS, "data": str(table_48_hours)})
    days = SplitConfig(train_days=1, delay_days=0, test_days=1)
    with pytest.raises(DataError, match=r"it needs 3 days .*, the data spans 2 days\."):
        prepare_data(data, days)


def test_a_48_hour_table_of_ready_made_features_runs_to_a_champion(experiment, table_48_hours):
    config = build_config(TrainConfig, {**PARAMETERS, "data": str(table_48_hours)})
    train(TrainConfig(data=config.data, split=config.split, model=FAST_MODEL))
    train_run = latest_run("train")
    params = train_run.data.params
    # Seconds since the first transaction, read as seconds since 1970-01-01 (the data's own
    # clock): the test ends with the second after the last transaction, training 14h before.
    assert params["test_last_day"] == "1970-01-02 23:59:52"
    assert params["train_first_day"] == "1970-01-01 17:59:53"
    assert params["train_last_day"] == "1970-01-02 09:59:52"
    assert params["resolved_train_start"] == "1970-01-01 17:59:53"
    assert params["train_days"] == "16h"

    evaluate(EvaluateConfig(run_id=train_run.info.run_id))
    evaluation = latest_run("evaluate")
    assert evaluation.data.tags["fraud.gate"] == "passed"
    assert "test_card_precision_at_100" not in evaluation.data.metrics  # no card column
    register(RegisterConfig(run_id=evaluation.info.run_id))

    model = mlflow.pyfunc.load_model("models:/fraud-detector@champion")
    assert model.metadata.get_input_schema().input_names() == PARAMETERS["feature_columns"].split(
        ","
    )
    scored = model.predict(model.input_example)
    assert scored[PROBABILITY_COLUMN].between(0, 1).all()
    assert evaluation.data.metrics["test_average_precision"] > 0.5


def test_hour_feature_windows_are_rebuilt_by_batch_scoring(experiment, tmp_path):
    """The model carries its windows and delay; the batch scorer computes the same features."""
    data = DataConfig(
        n_customers=300, n_terminals=600, n_days=7, seed=3, feature_windows="1h,6h,24h"
    )
    split = SplitConfig(train_days="2d", delay_days="12h", test_days="1d")
    train(TrainConfig(data=data, split=split, model=FAST_MODEL))
    run = latest_run("train")
    model_uri = f"models:/{run.data.tags[MODEL_ID_TAG]}"
    model = mlflow.pyfunc.load_model(model_uri)
    assert model.model_config["feature_windows"] == "1h,6h,24h"
    assert model.model_config["delay_days"] == "12h"
    windows = FeatureWindows.parse("1h,6h,24h")
    assert model.metadata.get_input_schema().input_names() == list(feature_columns(windows))
    assert "CUSTOMER_ID_NB_TX_6H_WINDOW" in model.model_config["features"]

    raw = prepare_data(data, split).transactions.table.drop(columns="TX_TIME_DAYS").tail(2_000)
    raw.to_csv(tmp_path / "raw.csv", index=False)
    config = BatchConfig(
        model_uri=model_uri,
        input=str(tmp_path / "raw.csv"),
        output=str(tmp_path / "scored.csv"),
        chunk_rows=300,
    )
    follower = ModelFollower(model_uri, poll_seconds=0)
    try:
        score_file(follower.load(), config)
    finally:
        follower.close()
    scored = pd.read_csv(tmp_path / "scored.csv")
    featured = add_features(raw, TransactionColumns(), delay_days="12h", windows=windows)
    expected = model.predict(featured[list(feature_columns(windows))])
    np.testing.assert_allclose(
        scored[PROBABILITY_COLUMN], expected[PROBABILITY_COLUMN], rtol=1e-5, atol=1e-9
    )
    assert MlflowClient().get_run(run.info.run_id).data.params["feature_windows"] == "1h,6h,24h"


def test_the_documented_command_uses_these_parameters():
    page = (PROJECT_DIR / "docs" / "pipeline.md").read_text()
    command = page[page.index("-P data=/data/creditcard.csv") :].split("```")[0]
    for key, value in PARAMETERS.items():
        if key != "feature_columns":
            assert f"-P {key}={value}" in command, key
    # `seq -s, -f V%g 1 28` writes V1,V2,...,V28.
    assert "-P feature_columns=$(seq -s, -f V%g 1 28),Amount" in command
    assert PARAMETERS["feature_columns"] == ",".join(f"V{i}" for i in range(1, 29)) + ",Amount"
