"""How steps open their runs: the experiment rule, parameter logging, failures recorded."""

import threading
import time

import numpy as np
import pandas as pd
import pytest
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.tracking import MlflowClient

from fraud_detection.cli import EXIT_BAD_PARAMETERS, EXIT_FAILED, flatten, main_with_exit_code
from fraud_detection.config import TrackingConfig, TrainConfig
from fraud_detection.tracking import (
    CONTINUED_IN_TAG,
    STEP_TAG,
    FastSchemaPandasDataset,
    LoggingLane,
    get_or_create_experiment,
)
from fraud_detection.training import train
from tests.conftest import FAST_MODEL, SMALL_DATA, latest_run, train_small


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


def test_datasets_get_mlflows_schema_without_its_per_value_loop():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "amount": rng.random(3_000),
            "count": rng.integers(0, 5, 3_000),
            "flag": rng.integers(0, 2, 3_000).astype(bool),
            "ratio": rng.random(3_000).astype(np.float32),
            "gap": rng.random(3_000),
        }
    )
    frame.loc[2_500, "gap"] = np.nan  # beyond the type sample: still found optional
    source = CodeDatasetSource({"generator": "test"})
    ours = FastSchemaPandasDataset(frame, source, name="t", digest="d").schema
    assert ours == PandasDataset(frame, source, name="t", digest="d").schema
    assert [spec.required for spec in ours.inputs] == [True, True, True, True, False]


def test_the_logging_lane_runs_calls_in_order_off_the_callers_thread():
    done, threads = [], set()

    def call(number):
        threads.add(threading.get_ident())
        done.append(number)

    with LoggingLane() as lane:
        for number in range(20):
            lane.submit(call, number)
    assert done == list(range(20))
    assert threading.get_ident() not in threads


def test_the_logging_lane_raises_the_first_failure_and_drops_what_was_queued_after_it():
    release, done = threading.Event(), []

    def blocked():
        release.wait(timeout=30)
        raise ConnectionError("server gone")

    with pytest.raises(ConnectionError, match="server gone"), LoggingLane() as lane:
        lane.submit(blocked)
        lane.submit(done.append, "queued after the failure")
        lane.check()  # nothing has finished yet: no failure to raise
        release.set()
    assert done == []


def test_check_raises_a_finished_failure_on_the_callers_thread():
    def failing():
        raise ValueError("bad batch")

    with pytest.raises(ValueError), LoggingLane() as lane:  # and again when the lane ends
        lane.submit(failing)
        with pytest.raises(ValueError, match="bad batch"):
            for _ in range(3000):
                lane.check()
                time.sleep(0.01)


def test_when_the_step_fails_queued_calls_are_dropped_and_scratch_folders_removed():
    release, done = threading.Event(), []
    with pytest.raises(RuntimeError, match="fit failed"), LoggingLane() as lane:
        scratch = lane.scratch_dir()
        (scratch / "checkpoint.json").write_text("{}")
        lane.submit(release.wait, 30)
        lane.submit(done.append, "never sent")
        threading.Timer(0.5, release.set).start()  # after the lane has dropped the queue
        raise RuntimeError("fit failed")
    assert done == []
    assert not scratch.exists()
