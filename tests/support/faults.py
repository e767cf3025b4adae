"""A train step run as a user runs it (`python train.py`) against a tracking server that a test
breaks, and the checks of what it left: runs whole, every metric point there.

Shared by tests/integration/test_server_faults.py (the server itself killed),
tests/integration/test_store_faults.py (its database or artifact store down) and
bench/reliability.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from fraud_detection.hardening.spool import STATE_DIR_VARIABLE
from tests.support import PROJECT_DIR
from tests.support.processes import mlflow_environment

EXPERIMENT = "fraud-detection"
# Five candidates (four grid points and the baseline), each a child run with two per-round
# curves: plenty of logging left to do when a fault hits after the first child.
SWEEP_FLAGS = [
    "--n-customers", "500", "--n-terminals", "1000", "--n-days", "60", "--seed", "1",
    "--grid", "small", "--n-estimators", "200", "--n-jobs", "1",
]  # fmt: skip
STEP_TIMEOUT_S = 600


class LoggedProcess(subprocess.Popen):
    """A process in a session of its own whose output (stdout and stderr) goes to ``log_path``."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("w") as log:
            super().__init__(
                command,
                env=env,
                cwd=log_path.parent,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def step_process(
    command: list[str], env: dict[str, str], log_path: Path
) -> Iterator[LoggedProcess]:
    """``command`` in the background (its session killed on exit if still running)."""
    process = LoggedProcess(command, env, log_path)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
        process.wait()


@contextmanager
def train_step(url: str, workdir: Path, *flags: str, **variables: str) -> Iterator[LoggedProcess]:
    """`python train.py` against ``url`` in the background; its output in workdir/train-*.log,
    its spool of repairs in workdir/state."""
    env = mlflow_environment(url, **{STATE_DIR_VARIABLE: str(workdir / "state")}, **variables)
    command = [sys.executable, str(PROJECT_DIR / "train.py"), *SWEEP_FLAGS, *flags]
    with step_process(command, env, workdir / f"train-{time.monotonic_ns()}.log") as process:
        yield process


def step_run_id(process: LoggedProcess, step: str = "train") -> str:
    """The id of the run the step announced ("train run <id> in experiment ..."), once it has."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    pattern = re.compile(rf"\b{step} run ([0-9a-f]{{32}}) in experiment")
    while time.monotonic() < deadline:
        running = process.poll() is None
        if match := pattern.search(process.output()):
            return match.group(1)
        assert running, f"the step ended without a run:\n{process.output()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"the step announced no {step} run")


def wait_for_first_candidate(
    client: MlflowClient, process: subprocess.Popen, parent_run_id: str | None = None
) -> None:
    """Return once the step has logged a candidate's child run (it is then mid-sweep); with
    ``parent_run_id``, a child of that train run (the server may hold other steps' runs)."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    query = "tags.`fraud.step` = 'candidate'"
    if parent_run_id is not None:
        query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    while time.monotonic() < deadline:
        assert process.poll() is None, "the step ended before the fault could be injected"
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None and client.search_runs(
            [experiment.experiment_id], query, max_results=1
        ):
            return
        time.sleep(0.2)
    raise AssertionError("no candidate run appeared")


def all_runs(client: MlflowClient) -> list[Run]:
    experiments = client.search_experiments(view_type=ViewType.ALL)
    return client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)


def sweep_runs(client: MlflowClient, train_run_id: str) -> list[Run]:
    """A train run and its candidate runs."""
    return [
        run
        for run in all_runs(client)
        if train_run_id in (run.info.run_id, run.data.tags.get("mlflow.parentRunId"))
    ]


def lost_metric_points(client: MlflowClient, runs: list[Run]) -> list[str]:
    """Every metric history must be whole: steps without a gap, both curves of a fit alike."""
    problems = []
    for run in runs:
        lengths = {}
        for key in run.data.metrics:
            if key.startswith("system/"):
                continue  # sampled by MLflow's monitor thread, not by the step
            steps = sorted(point.step for point in client.get_metric_history(run.info.run_id, key))
            if steps != list(range(steps[0], steps[0] + len(steps))):
                problems.append(f"{run.info.run_name} {key}: steps {steps[:3]}... have a gap")
            lengths[key] = len(steps)
        curves = {key: n for key, n in lengths.items() if key.endswith("_logloss")}
        if len(set(curves.values())) > 1:
            problems.append(f"{run.info.run_name}: curves of unequal length {curves}")
    return problems


def check_the_sweep_is_whole(client: MlflowClient, train_run_id: str | None = None) -> None:
    """The train run (``train_run_id``, or the server's only one) and its five candidates all
    FINISHED, each candidate with its validation metrics and whole curves."""
    runs = all_runs(client) if train_run_id is None else sweep_runs(client, train_run_id)
    parent = next(run for run in runs if run.data.tags.get("fraud.step") == "train")
    children = [run for run in runs if run.data.tags.get("fraud.step") == "candidate"]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert len(children) == 5
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in children)
    for child in children:
        assert "validation_average_precision" in child.data.metrics
        rounds = len(client.get_metric_history(child.info.run_id, "validation_logloss"))
        if child.data.params["model_kind"] == "xgboost":
            assert rounds >= int(child.data.params["best_rounds"])
    assert lost_metric_points(client, runs) == []
