"""Runs an outage left RUNNING: remembered, then marked FAILED with their cut-short children."""

from mlflow.tracking import MlflowClient

from fraud_detection.recovery import (
    STATE_DIR_VARIABLE,
    fail_remembered_runs,
    remember_unfinished,
    unfinished_runs_file,
)


def test_remembered_runs_and_their_running_children_are_failed(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path / "state"))
    client = MlflowClient()
    parent = client.create_run(experiment).info.run_id
    child = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    finished_child = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    client.set_terminated(finished_child)
    unrelated = client.create_run(experiment).info.run_id

    remember_unfinished([parent], "tracking server unreachable: connection refused")
    assert sorted(fail_remembered_runs()) == sorted([parent, child])

    status = {run_id: client.get_run(run_id).info.status for run_id in (parent, child)}
    assert status == {parent: "FAILED", child: "FAILED"}
    assert client.get_run(child).data.tags["fraud.error"].startswith("tracking server unreachable")
    assert client.get_run(finished_child).info.status == "FINISHED"
    assert client.get_run(unrelated).info.status == "RUNNING"  # not ours to end
    assert unfinished_runs_file().read_text() == ""  # done: nothing left to retry
    client.set_terminated(unrelated)  # a test must not leave a run open
