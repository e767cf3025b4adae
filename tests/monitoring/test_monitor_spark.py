"""A model trained on the Spark engine carries its reference profile and is monitored as any
other (tests/monitoring/test_monitor.py does the same for the pandas engine's models)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest

pytest.importorskip("pyspark", reason='the Spark engine needs PySpark: pip install -e ".[spark]"')

from fraud_detection import contract
from fraud_detection.config import BatchConfig, ModelConfig, MonitorConfig, TrainConfig
from fraud_detection.contract import Step
from fraud_detection.data.simulator import simulate_transactions
from fraud_detection.serving.batch import score_batch
from fraud_detection.steps.monitor import monitor
from fraud_detection.steps.train import train
from tests.support.pipeline import LENIENT_GATE, SMALL_DATA, latest_run

# The Spark train step on SMALL_DATA (smaller worlds have too few rows a week for quiet weeks to
# stay under the thresholds) takes over a minute on the 2-core build machine: integration layer.
pytestmark = [pytest.mark.slow, pytest.mark.minutes]

# One XGBoost fit per step of the sweep, few rounds: the profile is tested, not the model.
SPARK_MODEL = ModelConfig(
    model_kinds="xgboost", grid="none", n_estimators=30, early_stopping_rounds=10, n_jobs=1
)


def test_a_spark_trained_model_carries_its_profile_and_quiet_weeks_do_not_alarm(
    spark, experiment, tmp_path
):
    train(TrainConfig(data=SMALL_DATA, model=SPARK_MODEL, engine="spark"))
    train_run = latest_run(Step.TRAIN)
    assert train_run.data.params["engine"] == "spark"
    model_uri = f"models:/{train_run.data.tags[contract.MODEL_ID_TAG]}"

    model_dir = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path)))
    profile = json.loads((model_dir / "artifacts" / contract.REFERENCE_PROFILE_FILE).read_text())
    settings = mlflow.pyfunc.load_model(model_uri).model_config
    assert list(profile["features"]) == list(settings["features"])
    assert profile["threshold"] == settings["threshold"]
    assert profile["training_rows"] == train_run.data.metrics["training_rows"]
    assert profile["validation_rows"] == train_run.data.metrics["validation_rows"]
    amount = profile["features"]["TX_AMOUNT"]
    assert len(amount["shares"]) == len(amount["edges"]) + 1 == 10
    assert 0 < profile["alert_rate"] < 0.2

    report = monitor(
        MonitorConfig(scored=_scored(tmp_path, model_uri), model_uri=model_uri, gate=LENIENT_GATE)
    )

    assert "no threshold crossed" in report
    parent = latest_run(Step.MONITOR)
    assert parent.info.status == "FINISHED"
    assert contract.RETRAIN_TAG not in parent.data.tags
    history = mlflow.MlflowClient().get_metric_history(parent.info.run_id, "score_psi")
    assert len(history) == 5  # five weekly windows, each compared with the profile


def _scored(tmp_path: Path, model_uri: str) -> str:
    """The SMALL_DATA world five weeks after the model's test week (with the 37 days of history
    its features need), scored by ``model_uri`` as serve.py batch scores it."""
    table = simulate_transactions(replace(SMALL_DATA, n_days=95).simulator())
    later = table[table["TX_DATETIME"] >= pd.Timestamp("2018-04-24")]
    source, output = tmp_path / "later.csv", tmp_path / "scored.csv"
    later.to_csv(source, index=False)
    score_batch(BatchConfig(model_uri=model_uri, input=str(source), output=str(output)))
    return str(output)
