"""What an outage left, repaired: runs left RUNNING, registry changes not undone, failed models."""

from mlflow.tracking import MlflowClient

from fraud_detection.hardening.recovery import repair_remembered
from fraud_detection.hardening.spool import (
    STATE_DIR_VARIABLE,
    remember,
    remember_unfinished,
    spool_file,
)


def test_remembered_runs_and_their_running_children_are_failed(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path / "state"))
    client = MlflowClient()
    parent = client.create_run(experiment).info.run_id
    child = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    finished_child = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    client.set_terminated(finished_child)
    unrelated = client.create_run(experiment).info.run_id

    remember_unfinished([parent], "the tracking server did not answer (connection refused)")
    done = repair_remembered()
    assert [record["run_id"] for record in done] == [parent]

    status = {run_id: client.get_run(run_id).info.status for run_id in (parent, child)}
    assert status == {parent: "FAILED", child: "FAILED"}
    assert client.get_run(parent).data.tags["fraud.error"].startswith("the tracking server")
    assert client.get_run(child).data.tags["fraud.error"].startswith("its parent run failed")
    assert client.get_run(finished_child).info.status == "FINISHED"
    assert client.get_run(unrelated).info.status == "RUNNING"  # not ours to end
    assert spool_file().read_text() == ""  # done: nothing left to retry
    client.set_terminated(unrelated)  # a test must not leave a run open


def test_a_run_that_ended_failed_without_a_reason_gets_one(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path / "state"))
    client = MlflowClient()
    run_id = client.create_run(experiment).info.run_id
    client.set_terminated(run_id, "FAILED")
    remember_unfinished([run_id], "the database behind the tracking server is unavailable")
    repair_remembered()
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["fraud.error"].startswith("the database behind")


def test_each_repair_is_spooled_once(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path / "state"))
    remember_unfinished(["abc", "abc", "def"], "first outage")
    remember_unfinished(["abc"], "the same run again, later")
    remember(
        [{"kind": "alias", "model": "m", "alias": "champion", "version": "2", "before": "1"}], "x"
    )
    remember(
        [{"kind": "alias", "model": "m", "alias": "champion", "version": "2", "before": "1"}], "y"
    )
    lines = spool_file().read_text().splitlines()
    assert len(lines) == 3


def test_records_of_another_server_are_kept(experiment, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path / "state"))
    remember_unfinished(["elsewhere"], "outage")
    original = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        assert repair_remembered() == []
    finally:
        mlflow.set_tracking_uri(original)
    assert "elsewhere" in spool_file().read_text()
