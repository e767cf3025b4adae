"""The monitor step on the session's two registered versions and files they scored."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from fraud_detection import contract
from fraud_detection.cli import EXIT_MONITOR_ALARM, EXIT_OK, main_with_exit_code
from fraud_detection.config import (
    BatchConfig,
    EvaluateConfig,
    MonitorConfig,
    PipelineConfig,
    RegisterConfig,
    TrainConfig,
)
from fraud_detection.config.fields import build_config, flatten
from fraud_detection.contract import Step
from fraud_detection.data.simulator import simulate_transactions
from fraud_detection.errors import DataError, LineageError, ThresholdCrossedError
from fraud_detection.serving.batch import score_batch
from fraud_detection.steps.evaluate import evaluate
from fraud_detection.steps.monitor import monitor
from fraud_detection.steps.register import register
from fraud_detection.steps.train import train
from tests.support.pipeline import LENIENT_GATE, MODEL_NAME, SMALL_DATA, latest_run

CHAMPION = f"models:/{MODEL_NAME}@champion"
CHALLENGER = f"models:/{MODEL_NAME}@challenger"


def scored(tmp_path: Path, table: pd.DataFrame, model_uri: str = CHAMPION, name="scored") -> str:
    """``table`` scored by ``model_uri`` as serve.py batch writes it."""
    source, output = tmp_path / f"{name}-in.csv", tmp_path / f"{name}.csv"
    table.to_csv(source, index=False)
    score_batch(BatchConfig(model_uri=model_uri, input=str(source), output=str(output)))
    return str(output)


def config(path: str, **changes) -> MonitorConfig:
    return MonitorConfig(scored=path, gate=LENIENT_GATE, **changes)


@pytest.fixture(scope="module")
def later_transactions() -> pd.DataFrame:
    """The SMALL_DATA world 35 days on: five weeks after the models' test week (from
    2018-05-31), with the 37 days of history before them that their features need."""
    table = simulate_transactions(replace(SMALL_DATA, n_days=95).simulator())
    return table[table["TX_DATETIME"] >= pd.Timestamp("2018-04-24")].reset_index(drop=True)


def monitor_runs() -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    parent = latest_run(Step.MONITOR)
    children = mlflow.MlflowClient().search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["params.window_start ASC"],
    )
    return parent, children


def test_profile_travels_with_the_registered_version(registry, tmp_path):
    local = mlflow.artifacts.download_artifacts(
        f"{CHAMPION}/artifacts/{contract.REFERENCE_PROFILE_FILE}", dst_path=str(tmp_path)
    )
    profile = json.loads(Path(local).read_text())
    assert len(profile["features"]) >= 15
    amount = profile["features"]["TX_AMOUNT"]
    assert len(amount["shares"]) == len(amount["edges"]) + 1 == 10
    assert sum(amount["shares"]) == pytest.approx(1.0)
    assert 0 < profile["alert_rate"] < 0.2


def window_alert_rates(children: list[mlflow.entities.Run]) -> list[tuple[float, float]]:
    return [(c.data.metrics["alert_rate"], c.data.metrics["alert_rate_ratio"]) for c in children]


def in_sample_alert_rate(model_uri: str, tmp_path: Path) -> float:
    """The alert rate of the profile inside the model: validation, the window it was fitted on."""
    local = mlflow.artifacts.download_artifacts(
        f"{model_uri}/artifacts/{contract.REFERENCE_PROFILE_FILE}", dst_path=str(tmp_path)
    )
    return json.loads(Path(local).read_text())["alert_rate"]


def test_windows_are_compared_with_the_test_windows_scores(registry, tmp_path, later_transactions):
    """Version 1's evaluate run saved the test window's score bins and alert rate (data the
    model never saw); the alert-rate ratio the monitor logs is against that rate, not the
    in-sample one of the profile inside the model."""
    client = mlflow.MlflowClient()
    evaluate_run_id = client.get_model_version(MODEL_NAME, "1").tags[contract.EVALUATE_RUN_TAG]
    test = contract.read_score_reference(evaluate_run_id)
    in_sample = in_sample_alert_rate(CHAMPION, tmp_path)
    assert test is not None and test.alert_rate > 0
    assert abs(test.alert_rate / in_sample - 1) > 0.05, (test.alert_rate, in_sample)
    monitor(config(scored(tmp_path, later_transactions)))
    parent, children = monitor_runs()
    used = parent.data.tags[contract.MONITOR_SCORE_REFERENCE_TAG]
    assert f"test window {test.window} of evaluate run {evaluate_run_id}" in used
    for alert_rate, ratio in window_alert_rates(children):
        assert ratio == pytest.approx(alert_rate / test.alert_rate, rel=1e-12)
        assert ratio != pytest.approx(alert_rate / in_sample, rel=0.01)


def test_a_version_without_an_evaluate_run_falls_back_to_the_in_sample_reference(
    registry, tmp_path, later_transactions, caplog
):
    """Version 1's model registered again without lineage (as by hand, or before evaluate
    saved a score reference): monitored against its profile's validation scores, with a
    warning that says so; a version whose evaluate run decided at another threshold is refused."""
    client = mlflow.MlflowClient()
    copy = mlflow.register_model(client.get_model_version(MODEL_NAME, "1").source, MODEL_NAME)
    uri = f"models:/{MODEL_NAME}/{copy.version}"
    monitor(config(scored(tmp_path, later_transactions), model_uri=uri))
    parent, children = monitor_runs()
    assert parent.data.tags[contract.MONITOR_SCORE_REFERENCE_TAG].startswith(
        "validation window (in sample)"
    )
    assert f"Model {uri} has no out-of-sample score reference" in caplog.text
    in_sample = in_sample_alert_rate(uri, tmp_path)
    for alert_rate, ratio in window_alert_rates(children):
        assert ratio == pytest.approx(alert_rate / in_sample, rel=1e-12)
    with mlflow.start_run() as before:  # an evaluate run from before the score reference
        mlflow.log_dict({}, contract.GATE_ARTIFACT)
    assert contract.read_score_reference(before.info.run_id) is None
    other = client.get_model_version(MODEL_NAME, "2").tags[contract.EVALUATE_RUN_TAG]
    client.set_model_version_tag(MODEL_NAME, copy.version, contract.EVALUATE_RUN_TAG, other)
    with pytest.raises(LineageError, match=f"evaluate run {other} measured its alert rate at"):
        monitor(config(str(tmp_path / "scored.csv"), model_uri=uri))
    assert latest_run(Step.MONITOR).info.status == "FAILED"


def test_quiet_weeks_do_not_alarm(registry, tmp_path, later_transactions):
    report = monitor(config(scored(tmp_path, later_transactions)))
    assert "no threshold crossed" in report
    parent, children = monitor_runs()
    assert parent.info.status == "FINISHED"
    assert contract.RETRAIN_TAG not in parent.data.tags
    assert [child.data.params["labels_matured"] for child in children] == [
        "true",
        "true",
        "true",
        "false",
        "false",
    ]
    assert "average_precision" in children[0].data.metrics
    assert "average_precision" not in children[3].data.metrics
    # Stepped by window on the parent, for the UI's charts over time.
    history = mlflow.MlflowClient().get_metric_history(parent.info.run_id, "score_psi")
    assert sorted(point.step for point in history) == [0, 1, 2, 3, 4]
    assert parent.data.params["psi_threshold"] == "0.1"
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert "monitoring_report.html" in artifacts


def test_amounts_tripled_alarm_with_exit_line_and_tag(registry, tmp_path, later_transactions):
    shifted = later_transactions.copy()
    late = shifted["TX_DATETIME"] >= pd.Timestamp("2018-06-07")
    shifted.loc[late, "TX_AMOUNT"] *= 3
    with pytest.raises(ThresholdCrossedError, match=r"psi_TX_AMOUNT = .* > threshold 0.1000"):
        monitor(config(scored(tmp_path, shifted)))
    parent, children = monitor_runs()
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[contract.RETRAIN_TAG] == "true"
    assert contract.RETRAIN_TAG not in children[0].data.tags  # the week before the shift
    assert children[1].data.tags[contract.RETRAIN_TAG] == "true"


def test_retrain_registers_through_the_gate(registry, tmp_path, later_transactions):
    shifted = later_transactions.copy()
    shifted.loc[shifted["TX_DATETIME"] >= pd.Timestamp("2018-06-07"), "TX_AMOUNT"] *= 3
    path = scored(tmp_path, shifted)
    with pytest.raises(ThresholdCrossedError, match=r"retrained: .*registered"):
        monitor(config(path, retrain=True), in_process_pipeline)
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'")
    assert len(versions) == 3
    parent = latest_run(Step.MONITOR)
    assert "version 3" in parent.data.tags[contract.MONITOR_RETRAIN_RESULT_TAG]


def in_process_pipeline(pipeline: PipelineConfig) -> str:
    """``run_pipeline``'s three steps, in this process (no `mlflow run` children)."""
    values = flatten(pipeline)
    train(build_config(TrainConfig, values))
    evaluate(
        replace(build_config(EvaluateConfig, values), run_id=latest_run(Step.TRAIN).info.run_id)
    )
    register(
        replace(build_config(RegisterConfig, values), run_id=latest_run(Step.EVALUATE).info.run_id)
    )
    decision, reason = contract.decision_of(latest_run(Step.REGISTER))
    version = latest_run(Step.REGISTER).data.tags.get(contract.VERSION_TAG)
    return f"registered version {version}: {decision} ({reason})"


def test_another_models_scores_are_refused(registry, tmp_path, later_transactions):
    path = scored(tmp_path, later_transactions, CHALLENGER)
    with pytest.raises(LineageError, match="was not written by models:/fraud-detector/1"):
        monitor(config(path))
    assert latest_run(Step.MONITOR).info.status == "FAILED"


def test_no_matured_labels_when_performance_is_required(registry, tmp_path, later_transactions):
    path = scored(tmp_path, later_transactions)
    with pytest.raises(DataError, match="no window has matured labels as of 2018-06-10"):
        monitor(config(path, as_of="2018-06-10", require_performance=True))
    assert latest_run(Step.MONITOR).info.status == "FAILED"


def test_model_without_profile_is_refused(registry, tmp_path, later_transactions):
    """A version registered from a copy of version 1 without its profile (as models trained
    before monitoring existed are)."""
    path = scored(tmp_path, later_transactions)
    bare = Path(mlflow.artifacts.download_artifacts(CHAMPION, dst_path=str(tmp_path / "bare")))
    (bare / "artifacts" / contract.REFERENCE_PROFILE_FILE).unlink()
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(bare), "model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", MODEL_NAME).version
    with pytest.raises(LineageError, match="has no reference profile"):
        monitor(config(path, model_uri=f"models:/{MODEL_NAME}/{version}"))
    assert latest_run(Step.MONITOR).info.status == "FAILED"


def test_empty_file_and_missing_column(registry, tmp_path, later_transactions):
    path = Path(scored(tmp_path, later_transactions))
    table = pd.read_csv(path)
    table.head(0).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(DataError, match="no rows"):
        monitor(config(str(tmp_path / "empty.csv")))
    table.drop(columns="fraud_probability").to_csv(tmp_path / "unscored.csv", index=False)
    with pytest.raises(DataError, match="missing column fraud_probability"):
        monitor(config(str(tmp_path / "unscored.csv")))
    table.drop(columns="TX_AMOUNT").to_csv(tmp_path / "no-amount.csv", index=False)
    with pytest.raises(DataError, match="TX_AMOUNT"):
        monitor(config(str(tmp_path / "no-amount.csv")))
    assert latest_run(Step.MONITOR).info.status == "FAILED"


def test_window_without_transactions_is_refused(registry, tmp_path, later_transactions):
    times = later_transactions["TX_DATETIME"]
    gap = (times >= pd.Timestamp("2018-06-07")) & (times < pd.Timestamp("2018-06-14"))
    with pytest.raises(DataError, match=r"window 2018-06-07\.\.2018-06-13 has no transactions"):
        monitor(config(scored(tmp_path, later_transactions[~gap])))


def test_exit_codes_of_the_command_line(registry, tmp_path, later_transactions, capsys):
    quiet = scored(tmp_path, later_transactions, name="quiet")
    arguments = ["--scored", quiet, "--min-roc-auc", "0.5"]
    assert main_with_exit_code(MonitorConfig, monitor, arguments, "monitor") == EXIT_OK
    shifted = later_transactions.assign(TX_AMOUNT=later_transactions["TX_AMOUNT"] * 3)
    path = scored(tmp_path, shifted, name="shifted")
    code = main_with_exit_code(MonitorConfig, monitor, ["--scored", path], "monitor")
    assert code == EXIT_MONITOR_ALARM == 3
    assert main_with_exit_code(MonitorConfig, monitor, ["--window-days", "0"], "m") == 2


def test_labels_from_their_own_file(registry, tmp_path, later_transactions):
    path = Path(scored(tmp_path, later_transactions))
    table = pd.read_csv(path)
    table[["TRANSACTION_ID", "TX_FRAUD"]].to_csv(tmp_path / "labels.csv", index=False)
    table.drop(columns="TX_FRAUD").to_csv(tmp_path / "unlabelled.csv", index=False)
    monitor(config(str(tmp_path / "unlabelled.csv"), labels=str(tmp_path / "labels.csv")))
    _, children = monitor_runs()
    assert children[0].data.metrics["average_precision_ratio"] > 0.7
    (tmp_path / "ids.csv").write_text("TRANSACTION_ID\n1\n")
    with pytest.raises(DataError, match=r"ids\.csv: missing column TX_FRAUD"):
        monitor(config(str(tmp_path / "unlabelled.csv"), labels=str(tmp_path / "ids.csv")))
