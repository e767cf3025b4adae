"""How steps open their runs: the experiment rule, parameter logging, failures recorded."""

import pytest
from mlflow.tracking import MlflowClient

from fraud_detection.cli import (
    EXIT_BAD_PARAMETERS,
    EXIT_FAILED,
    main_with_exit_code,
)
from fraud_detection.config import (
    TrackingConfig,
    TrainConfig,
)
from fraud_detection.config.fields import flatten
from fraud_detection.contract import CONTINUED_IN_TAG, STEP_TAG
from fraud_detection.steps.train import train
from fraud_detection.tracking import get_or_create_experiment
from tests.support.pipeline import FAST_MODEL, SMALL_DATA, latest_run, train_small


def test_step_leaves_a_launcher_run_in_default_and_continues_in_the_experiment(
    experiment, monkeypatch
):
    """What `mlflow run .` without --experiment-name does: its run lands in Default."""
    client = MlflowClient()
    launcher = client.create_run("0", tags={"mlflow.source.git.commit": "abc123"})
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
    run = client.get_run(train_small(model_kinds="xgboost"))
    assert run.info.experiment_id == experiment
    assert run.data.tags["fraud.launcher_run_id"] == launcher.info.run_id
    assert run.data.tags["mlflow.source.git.commit"] == "abc123"
    assert client.get_run(launcher.info.run_id).data.tags[CONTINUED_IN_TAG] == run.info.run_id


def test_launcher_experiment_wins_over_the_default_name(tracking_uri, monkeypatch, tmp_path):
    client = MlflowClient()
    other = client.create_experiment("team-x", artifact_location=(tmp_path / "a").as_uri())
    launcher = client.create_run(other)
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
    train(TrainConfig(data=SMALL_DATA, model=FAST_MODEL))
    run = client.get_run(launcher.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[STEP_TAG] == "train"
    assert run.data.params["n_customers"] == str(SMALL_DATA.n_customers)


def test_conflicting_experiment_names_are_refused(tracking_uri, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team-x")
    config = TrainConfig(tracking=TrackingConfig(experiment_name="team-y"), data=SMALL_DATA)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in flatten(config).items()]
    assert main_with_exit_code(TrainConfig, train, flags, "") == EXIT_BAD_PARAMETERS
    assert "use one of the two" in caplog.text


def test_params_logged_by_the_launcher_are_not_logged_again(experiment, monkeypatch):
    """`mlflow run` logs parameters as it received them ('0.050'); ours would clash ('0.05')."""
    client = MlflowClient()
    launcher = client.create_run(experiment)
    client.log_param(launcher.info.run_id, "learning_rate", "0.050")
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
    train(TrainConfig(data=SMALL_DATA, model=FAST_MODEL))
    params = client.get_run(launcher.info.run_id).data.params
    assert params["learning_rate"] == "0.050"
    assert params["n_estimators"] == str(FAST_MODEL.n_estimators)


def test_bad_data_fails_the_run_and_registers_nothing(experiment, tmp_path, small_transactions):
    path = tmp_path / "transactions.csv"
    small_transactions.drop(columns="TX_AMOUNT").to_csv(path, index=False)
    assert main_with_exit_code(TrainConfig, train, ["--data", str(path)], "train") == EXIT_FAILED
    run = latest_run("train")
    assert run.info.status == "FAILED"
    assert "missing column(s) TX_AMOUNT" in run.data.tags["fraud.error"]
    assert MlflowClient().search_registered_models() == []


def test_experiment_creation_is_idempotent(tracking_uri):
    first = get_or_create_experiment("fresh")
    assert get_or_create_experiment("fresh") == first


def test_a_deleted_experiment_is_named(tracking_uri):
    from fraud_detection.config import ConfigError

    client = MlflowClient()
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(ConfigError, match="experiment 'gone' is deleted"):
        get_or_create_experiment("gone")


def test_the_tests_send_no_telemetry():
    """tests/__init__.py switches MLflow's telemetry off before MLflow is imported: no client,
    so no request beyond 127.0.0.1 and no telemetry thread importing beside autolog."""
    from mlflow.telemetry.client import get_telemetry_client

    assert get_telemetry_client() is None
