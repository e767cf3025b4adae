"""The train step against a real `mlflow server` that crashes, restarts or stays down, and
several train steps (or their dataset logging) at once against a new experiment on a server.

The server is deploy/dev-server.sh (SQLite, local artifacts), killed with SIGKILL: a crash, not
a shutdown. The step runs as a user runs it (`python train.py`), with the client retry budget
the template sets (README, "When the server has a bad moment").
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fraud_detection.hardening.datasets import (
    log_datasets,
    pandas_dataset,
)
from fraud_detection.hardening.spool import STATE_DIR_VARIABLE
from tests.support.faults import (
    EXPERIMENT,
    STEP_TIMEOUT_S,
    all_runs,
    check_the_sweep_is_whole,
    train_step,
    wait_for_first_candidate,
)
from tests.support.processes import free_port, mlflow_environment, run_command
from tests.support.services import dev_server

pytestmark = pytest.mark.slow


@contextmanager
def killed_mid_sweep(workdir: Path, **variables: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """A train step mid-sweep whose tracking server (deploy/dev-server.sh, its store in
    ``workdir``) has just been killed; yields the step and the port to restart the server on."""
    port = free_port()
    with dev_server(workdir, port) as server, train_step(server.url, workdir, **variables) as step:
        wait_for_first_candidate(MlflowClient(server.url), step)
        server.kill()
        yield step, port


def test_a_server_restart_mid_sweep_loses_nothing(tmp_path):
    with killed_mid_sweep(tmp_path) as (step, port):
        time.sleep(3)
        with dev_server(tmp_path, port) as restarted:
            exit_code = step.wait(timeout=STEP_TIMEOUT_S)
            log = next(tmp_path.glob("train-*.log")).read_text()
            assert exit_code == 0, log[-4000:]
            check_the_sweep_is_whole(MlflowClient(restarted.url))


def test_a_server_that_stays_down_fails_the_step_then_its_runs_are_failed(tmp_path):
    # A smaller retry budget than the template's (about 7 s instead of 31 s) keeps the test
    # short; bench/reliability.py measures the time to fail with the template's own.
    with killed_mid_sweep(tmp_path, MLFLOW_HTTP_REQUEST_MAX_RETRIES="3") as (step, port):
        killed = time.monotonic()
        exit_code = step.wait(timeout=STEP_TIMEOUT_S)
        failed_after = time.monotonic() - killed
    log = next(tmp_path.glob("train-*.log")).read_text()
    assert exit_code != 0
    error = log.strip().splitlines()[-1]
    assert f"the tracking server http://127.0.0.1:{port} did not answer" in error
    assert "python -m fraud_detection.hardening.recovery" in error
    # Bounded: one retry budget for the request that meets the dead server (the sweep stops
    # there), one for a child being sent, one quick attempt to end the run; not minutes.
    assert failed_after < 120, f"the step took {failed_after:.0f} s to give up"

    with dev_server(tmp_path, port) as restarted:
        client = MlflowClient(restarted.url)
        assert "RUNNING" in {run.info.status for run in all_runs(client)}  # the outage's mark
        env = mlflow_environment(restarted.url, **{STATE_DIR_VARIABLE: str(tmp_path / "state")})
        recovery = run_command([sys.executable, "-m", "fraud_detection.hardening.recovery"], env)
        assert recovery.returncode == 0, recovery.stderr[-3000:]
        statuses = {run.info.run_name: run.info.status for run in all_runs(client)}
    assert "RUNNING" not in statuses.values(), statuses
    assert "FAILED" in statuses.values()


def test_trainings_started_together_on_a_new_experiment_of_a_server(tmp_path):
    with dev_server(tmp_path) as server:
        flags = ["--grid", "none", "--model-kinds", "xgboost", "--n-estimators", "30"]
        with (
            train_step(server.url, tmp_path, *flags) as first,
            train_step(server.url, tmp_path, *flags) as second,
            train_step(server.url, tmp_path, *flags) as third,
        ):
            exit_codes = [step.wait(timeout=STEP_TIMEOUT_S) for step in (first, second, third)]
        client = MlflowClient(server.url)
        runs = all_runs(client)
        experiment = client.get_experiment_by_name(EXPERIMENT)
    logs = "\n".join(path.read_text()[-2000:] for path in tmp_path.glob("train-*.log"))
    assert exit_codes == [0, 0, 0], logs
    trains = [run for run in runs if run.data.tags.get("fraud.step") == "train"]
    assert len(trains) == 3
    # Nothing fell back to the Default experiment: every run is in the one experiment.
    assert {run.info.experiment_id for run in runs} == {experiment.experiment_id}
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_the_same_datasets_logged_by_many_runs_at_once_are_recorded_on_every_run(tmp_path):
    """MLflow's store looks for a dataset, then inserts it: runs logging the same dataset at
    the same moment collide on its unique key (measured here: 14 of 240 plain `log_inputs`
    calls refused, 8 at a time). `log_datasets` must absorb that, as trainings started together
    on the same data need it."""
    frame = pd.DataFrame({"amount": np.arange(200.0), "is_fraud": [0, 1] * 100})
    with dev_server(tmp_path) as server:
        mlflow.set_tracking_uri(server.url)
        client = MlflowClient(server.url)
        experiment_id = client.create_experiment("datasets-at-once")
        errors: list[BaseException] = []
        expected: dict[str, str] = {}
        for round_ in range(30):
            dataset = pandas_dataset(
                frame + round_, "simulator:seed=1", name=f"round-{round_}", label="is_fraud"
            )
            run_ids = [client.create_run(experiment_id).info.run_id for _ in range(8)]
            expected.update(dict.fromkeys(run_ids, dataset.digest))
            start = threading.Barrier(len(run_ids))

            def log(run_id: str, dataset=dataset, start=start) -> None:
                start.wait()
                try:
                    log_datasets(run_id, {"training": dataset})
                except BaseException as error:  # noqa: BLE001 - collected, asserted below
                    errors.append(error)

            threads = [threading.Thread(target=log, args=(run_id,)) for run_id in run_ids]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
        recorded = {
            run_id: [item.dataset.digest for item in client.get_run(run_id).inputs.dataset_inputs]
            for run_id in expected
        }
    assert errors == []
    assert recorded == {run_id: [digest] for run_id, digest in expected.items()}
