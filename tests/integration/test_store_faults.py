"""The steps on the production stack while a store behind the server fails: PostgreSQL stopped
and started again (a fast restart, a 90-second outage, an outage past the store retry budget),
S3 cut mid-upload and restored, during train, evaluate, register and under `mlflow run`.

One stack for the module (tests/support/store_faults.py): deploy/production-server.sh (basic
auth; PostgreSQL for runs, the registry and the users; artifacts proxied to S3) on a PostgreSQL
cluster of the module's own, which the tests stop and start, reaching the moto S3 server
through a `TcpProxy` that the tests cut and restore. The scenarios share the server and build on
each other's runs: two trainings meet the same database outage (one rides it out, one has a
short budget and gives up), and the models that survived the outages are the champion and the
candidate of the register scenario.

A step meant to fail gets a short MLflow retry budget (``FAST_FAILURE``: about 6 s per request
instead of the template's 31 s) and a short store budget (15 s instead of 180 s); the train step
that rides out the database outage keeps the template's. The scenarios' outcomes come from
module fixtures and each test only checks one: `bench/reliability.py` runs the same scenarios
with the template's budgets and counts what these tests find.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.entities import LoggedModelStatus

from tests.support.faults import EXPERIMENT, check_the_sweep_is_whole, sweep_runs
from tests.support.requirements import require, require_modules
from tests.support.services import S3, postgres_bindir
from tests.support.store_faults import (
    ARTIFACT_STORE_DOWN,
    DATABASE_DOWN,
    FAST_FAILURE,
    MODEL,
    Outcome,
    Registry,
    Stack,
    champion_and_challenger,
    database_outage_mid_sweep,
    mlflow_run_with_the_database_down,
    s3_cut_during_evaluate,
    s3_cut_during_register,
    s3_cut_mid_upload,
    store_fault_stack,
)

pytestmark = [pytest.mark.slow, pytest.mark.minutes]


def _said(outcome: Outcome) -> list[str]:
    """The output's lines without MLflow's links to the UI."""
    return [line for line in outcome.lines if not line.startswith(("🏃", "🧪"))]


def _error_line(outcome: Outcome) -> str:
    """The step's one-line error (what follows the logger's name)."""
    errors = [line for line in outcome.lines if " ERROR fraud_detection.cli: " in line]
    assert len(errors) == 1, errors
    return errors[0].split(" ERROR fraud_detection.cli: ", 1)[1]


@pytest.fixture(scope="module")
def stack(s3: S3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require(postgres_bindir() is not None, "PostgreSQL", "apt-get install postgresql")
    require_modules("psycopg")
    with store_fault_stack(tmp_path_factory.mktemp("store-faults"), s3) as started:
        yield started


@pytest.fixture(scope="module")
def database_outage(stack: Stack) -> tuple[Outcome, Outcome]:
    return database_outage_mid_sweep(stack, outage_s=90, short_budget=FAST_FAILURE)


@pytest.fixture(scope="module")
def survived_s3_cut(stack: Stack) -> Outcome:
    # MLflow's short budget makes log_model fail while S3 is cut (the template's 31 s would
    # absorb a 10 s cut inside one upload): the step must log its model again, and delete
    # the attempts that failed. The cut is shorter than the store budget (15 s).
    return s3_cut_mid_upload(stack, cut_s=10, **FAST_FAILURE)


def test_train_rides_out_a_fast_restart_and_a_90_s_outage_of_postgres(
    stack: Stack, database_outage: tuple[Outcome, Outcome]
) -> None:
    outcome, _ = database_outage
    assert outcome.exit_code == 0, outcome.tail()
    assert outcome.notes["still running when PostgreSQL came back"]  # it waited, it did not end
    check_the_sweep_is_whole(stack.client, outcome.run_id("train"))
    # One line when the database went down (none for the fast restart), one when it is back.
    down = [line for line in outcome.lines if DATABASE_DOWN in line]
    assert len(down) == 1, down
    assert " WARNING fraud_detection.hardening.outages: " in down[0]
    assert "is unavailable" in down[0] and "retrying for up to 180 s" in down[0]
    back = [line for line in outcome.lines if "answer again" in line]
    assert len(back) == 1, back
    assert "Traceback" not in outcome.output


def test_train_past_the_store_budget_fails_in_one_line_then_recovery_settles_its_runs(
    stack: Stack, database_outage: tuple[Outcome, Outcome]
) -> None:
    _, outcome = database_outage
    assert outcome.exit_code == 1, outcome.tail()
    train_run_id = outcome.run_id("train")
    assert _said(outcome)[-1].endswith(_error_line(outcome))  # its last word
    error = _error_line(outcome)
    assert error.startswith(DATABASE_DOWN) and "still unavailable after" in error
    assert "Traceback" not in outcome.output
    # The store budget, the request in flight then, and a quick attempt to end the run.
    assert outcome.fault_to_exit < outcome.notes["may take"], outcome.fault_to_exit

    # What the step could not write was noted, each repair once, and recovery did it all.
    noted = [json.loads(line) for line in outcome.notes["spooled before recovery"]]
    assert {(item["kind"], item.get("run_id")) for item in noted} == {("run", train_run_id)}
    assert len(noted) == 1, noted
    assert outcome.recovery is not None and outcome.recovery.returncode == 0
    assert f"repaired: run (run_id {train_run_id})" in outcome.recovery.stdout
    assert outcome.notes["spooled after recovery"] == []
    runs = sweep_runs(stack.client, train_run_id)
    assert "RUNNING" not in {run.info.status for run in runs}
    failed = [run for run in runs if run.info.status == "FAILED"]
    assert train_run_id in {run.info.run_id for run in failed}
    for run in failed:
        assert DATABASE_DOWN in run.data.tags["fraud.error"], run.data.tags["fraud.error"]
    experiment = stack.client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert not stack.client.search_logged_models(
        [experiment], filter_string=f"source_run_id = '{train_run_id}'"
    )


def test_train_rides_out_s3_cut_mid_upload_and_keeps_one_ready_model(
    stack: Stack, survived_s3_cut: Outcome
) -> None:
    outcome = survived_s3_cut
    assert outcome.exit_code == 0, outcome.tail()
    run_id = outcome.run_id("train")
    check_the_sweep_is_whole(stack.client, run_id)
    experiment = stack.client.get_experiment_by_name(EXPERIMENT).experiment_id
    models = stack.client.search_logged_models(
        [experiment], filter_string=f"source_run_id = '{run_id}'"
    )
    assert [model.status for model in models] == [LoggedModelStatus.READY]
    assert models[0].model_id == stack.client.get_run(run_id).data.tags["fraud.model_id"]
    files = {item.path for item in stack.client.list_logged_model_artifacts(models[0].model_id)}
    assert {"MLmodel", "artifacts"} <= files, files  # the upload was completed
    down = [line for line in outcome.lines if ARTIFACT_STORE_DOWN in line]
    assert len(down) == 1 and " WARNING " in down[0], down
    # The attempts the cut failed were deleted, each said in one line.
    deleted = [line for line in outcome.lines if "Deleted logged model" in line]
    assert deleted and all(line.endswith(f"(FAILED) of run {run_id}") for line in deleted)


@pytest.fixture(scope="module")
def evaluate_without_s3(stack: Stack, survived_s3_cut: Outcome) -> Outcome:
    return s3_cut_during_evaluate(stack, survived_s3_cut.run_id("train"), **FAST_FAILURE)


def test_evaluate_with_s3_cut_names_the_artifact_store(
    stack: Stack, evaluate_without_s3: Outcome
) -> None:
    outcome = evaluate_without_s3
    assert outcome.exit_code == 1, outcome.tail()
    error = _error_line(outcome)
    assert _said(outcome)[-1].endswith(error)
    assert error.startswith(ARTIFACT_STORE_DOWN), error
    assert "has no data_recipe.json" not in error and "runs:/" not in error
    assert "Traceback" not in outcome.output
    run = stack.client.get_run(outcome.run_id("evaluate"))
    assert run.info.status == "FAILED"
    assert run.data.tags["fraud.error"] == error


@pytest.fixture(scope="module")
def champion_and_candidate(
    stack: Stack, database_outage: tuple[Outcome, Outcome], survived_s3_cut: Outcome
) -> str:
    """@champion: the model that rode out the database outage; evaluated against it, the one
    that rode out the S3 cut. Returns the candidate's evaluate run id."""
    return champion_and_challenger(
        stack, database_outage[0].run_id("train"), survived_s3_cut.run_id("train")
    )


@pytest.fixture(scope="module")
def register_without_s3(stack: Stack, champion_and_candidate: str) -> Outcome:
    return s3_cut_during_register(stack, champion_and_candidate, **FAST_FAILURE)


def test_register_with_s3_cut_changes_nothing_and_a_rerun_promotes(
    stack: Stack, register_without_s3: Outcome
) -> None:
    outcome = register_without_s3
    before, after = outcome.notes["before"], outcome.notes["after"]
    assert set(before.aliases) == {"champion", "challenger"} and not before.locked, before
    assert outcome.exit_code == 1, outcome.tail()
    error = _error_line(outcome)
    assert error.startswith(ARTIFACT_STORE_DOWN) and "/decision.json" in error, error
    assert "Traceback" not in outcome.output
    # Not done: the aliases where they were, no version left, no lock, the run FAILED.
    assert after == before
    run = stack.client.get_run(outcome.run_id("register"))
    assert run.info.status == "FAILED"
    assert run.data.tags["fraud.error"] == error

    rerun = outcome.notes["rerun"]
    assert rerun.exit_code == 0, rerun.tail()
    match = re.search(r"fraud-detector version (\d+) promoted", rerun.lines[-1])
    assert match, rerun.lines[-1]
    version = match.group(1)
    # Done and recorded: the aliases moved, the decision on the version and in the run.
    assert outcome.notes["after rerun"] == Registry(
        {"champion": version, "challenger": version}, (*before.versions, version), locked=False
    )
    assert stack.client.get_model_version(MODEL, version).tags["fraud.decision"] == "promoted"
    rerun_run = rerun.run_id("register")
    assert stack.client.get_run(rerun_run).info.status == "FINISHED"
    with tempfile.TemporaryDirectory() as scratch:
        decision = stack.client.download_artifacts(rerun_run, "decision.json", scratch)
        assert json.loads(Path(decision).read_text())["version"] == version


def test_mlflow_run_with_the_database_down_ends_in_one_line_each(stack: Stack) -> None:
    # PostgreSQL comes back 2 s after the step's error, within the launcher's own MLflow retry
    # budget (the same variables: about 6 s), which it spends asking for its run's status.
    outcome = mlflow_run_with_the_database_down(stack, back_after_s=2, **FAST_FAILURE)
    assert outcome.exit_code == 1, outcome.tail()
    said = _said(outcome)
    run_id = outcome.run_id("train")
    error = _error_line(outcome)
    assert error.startswith(DATABASE_DOWN) and "still unavailable after" in error
    assert "Traceback" not in outcome.output
    # The step's last word is its error; the launcher's, MLflow's one line.
    assert said[-2].endswith(error)
    assert said[-1].endswith(f"ERROR mlflow.cli: === Run (ID '{run_id}') failed ===")
    assert outcome.recovery is not None and outcome.recovery.returncode == 0
    run = stack.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["fraud.error"].startswith(DATABASE_DOWN)
