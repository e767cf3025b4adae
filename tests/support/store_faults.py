"""Store-fault scenarios on the production stack, shared by
tests/integration/test_store_faults.py (which asserts on what they left) and
bench/reliability.py (which counts it and times it).

The stack: deploy/production-server.sh (basic auth; PostgreSQL for runs, the registry and the
users; artifacts proxied to S3) on a PostgreSQL cluster of its own, which a scenario stops and
starts, reaching S3 through a `TcpProxy` that a scenario cuts and restores. Steps run as a user
runs them (`python train.py ...`, `mlflow run`), each scenario in a folder of its own (the
steps' output, their spool of repairs). Each scenario returns an `Outcome`: exit code, output,
how long the step ran and how long after the fault it ended.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fraud_detection.hardening.outages import DEFAULT_STORE_RETRY_SECONDS, STORE_RETRY_VARIABLE
from fraud_detection.hardening.registry_change import LOCK_SUFFIX
from fraud_detection.hardening.spool import SPOOL_NAME, STATE_DIR_VARIABLE
from tests.support import PROJECT_DIR
from tests.support.faults import (
    EXPERIMENT,
    STEP_TIMEOUT_S,
    SWEEP_FLAGS,
    LoggedProcess,
    step_process,
    step_run_id,
    train_step,
    wait_for_first_candidate,
)
from tests.support.processes import copy_project, mlflow_environment, run_command
from tests.support.services import (
    S3,
    Postgres,
    TrackingServer,
    postgres_cluster,
    production_server,
)
from tests.support.tcp_proxy import TcpProxy, tcp_proxy

MODEL = "fraud-detector"
# MLflow's client gives up on a request after about 6 s (0, 2, 4 s between 4 attempts) instead
# of the template's 31 s, and the step gives up on a store after 15 s instead of 180 s.
FAST_FAILURE = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    STORE_RETRY_VARIABLE: "15",
}
LENIENT_GATE = ["--min-roc-auc", "0.5", "--min-average-precision", "0.01"]
DATABASE_DOWN = "the database behind the tracking server"
ARTIFACT_STORE_DOWN = "the artifact store of the tracking server"


@dataclass
class Stack:
    postgres: Postgres
    proxy: TcpProxy  # between the server and S3
    server: TrackingServer
    workdir: Path

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.server.url)

    def folder(self, name: str) -> Path:
        """A new folder for one scenario: its steps' output and their spool of repairs."""
        folder = self.workdir / name
        folder.mkdir()
        return folder

    def environment(self, folder: Path, **variables: str) -> dict[str, str]:
        return mlflow_environment(
            self.server.url,
            **{STATE_DIR_VARIABLE: str(folder / "state")},
            **self.server.client_environment,
            **variables,
        )


@contextmanager
def store_fault_stack(workdir: Path, s3: S3) -> Iterator[Stack]:
    """The production stack whose stores a test can stop: PostgreSQL and the link to S3.

    This process signs in as the server's user too (``MLflowClient`` reads the variables).
    """
    s3_port = int(s3.endpoint_url.rsplit(":", 1)[1])
    with (
        postgres_cluster() as postgres,
        tcp_proxy(s3_port) as proxy,
        production_server(
            workdir, postgres, s3, "storefaults", proxied=True, s3_endpoint_for_server=proxy.url
        ) as server,
        pytest.MonkeyPatch.context() as patch,
    ):
        for name, value in server.client_environment.items():
            patch.setenv(name, value)
        yield Stack(postgres, proxy, server, workdir)


@dataclass
class Outcome:
    """What a step did: its exit code and output, how long it ran, and what the fault cost."""

    exit_code: int
    output: str
    seconds: float
    fault_to_exit: float = 0.0  # from the fault to the step's exit
    recovery: subprocess.CompletedProcess | None = None
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.strip()]

    def run_id(self, step: str) -> str:
        match = re.search(rf"\b{step} run ([0-9a-f]{{32}}) in experiment", self.output)
        assert match, f"no {step} run in:\n{self.output[-3000:]}"
        return match.group(1)

    def tail(self) -> str:
        return self.output[-4000:]


def request_budget_s(variables: dict[str, str]) -> float:
    """How long MLflow's client tries one request with these variables (MLflow's defaults, or
    the template's where unset): no pause before the first retry, then factor * 2^(n-1) s, up
    to 1 s of jitter each."""
    from fraud_detection.hardening.client_setup import CLIENT_RETRY_DEFAULTS

    settings = {**CLIENT_RETRY_DEFAULTS, **variables}
    retries = int(settings["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor = float(settings["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    return factor * (2**retries - 2) + retries


def give_up_bound_s(variables: dict[str, str]) -> float:
    """The longest a step may take to give up on a store that stays down: the store budget, the
    request in flight when it runs out and one more (each a whole MLflow budget), 15 s to spare."""
    budget = float(variables.get(STORE_RETRY_VARIABLE, DEFAULT_STORE_RETRY_SECONDS))
    return budget + 2 * request_budget_s(variables) + 15


def _finish(process: LoggedProcess, started: float, fault: float | None = None) -> Outcome:
    code = process.wait(timeout=STEP_TIMEOUT_S)
    now = time.monotonic()
    return Outcome(code, process.output(), now - started, now - fault if fault else 0.0)


def run_step(stack: Stack, folder: Path, script: str, *args: str, **variables: str) -> Outcome:
    """``python <script> <args>`` against the stack, to its end."""
    command = [sys.executable, str(PROJECT_DIR / script), *args]
    log = folder / f"{Path(script).stem}-{time.monotonic_ns()}.log"
    started = time.monotonic()
    with step_process(command, stack.environment(folder, **variables), log) as process:
        return _finish(process, started)


def recover(stack: Stack, folder: Path) -> subprocess.CompletedProcess:
    """`python -m fraud_detection.hardening.recovery` with the scenario's spool."""
    command = [sys.executable, "-m", "fraud_detection.hardening.recovery"]
    return run_command(command, stack.environment(folder))


def spooled_repairs(folder: Path) -> list[str]:
    spool = folder / "state" / SPOOL_NAME
    return [line for line in spool.read_text().splitlines() if line] if spool.exists() else []


# --- the scenarios (bench/reliability.py runs them too) -----------------------------------------


def database_outage_mid_sweep(
    stack: Stack, outage_s: float, short_budget: dict[str, str]
) -> tuple[Outcome, Outcome]:
    """Two trainings mid-sweep meet a fast PostgreSQL restart, then an outage of ``outage_s``:
    one with the template's budgets (it must ride both out), one with ``short_budget`` (the
    outage outlasts it: it must give up, and recovery settle its runs once PostgreSQL is back).
    """
    riding, giving_up = stack.folder("rides-out"), stack.folder("gives-up")
    started = time.monotonic()
    with (
        train_step(stack.server.url, riding, **stack.server.client_environment) as rider,
        train_step(
            stack.server.url, giving_up, **stack.server.client_environment, **short_budget
        ) as quitter,
    ):
        for step in (rider, quitter):
            wait_for_first_candidate(stack.client, step, step_run_id(step))
        stack.postgres.stop()  # a fast restart: MLflow's own retries must absorb it
        stack.postgres.start()
        with stack.postgres.outage():
            fault = time.monotonic()
            quitter.wait(timeout=outage_s + STEP_TIMEOUT_S)
            gave_up = _finish(quitter, started, fault)
            time.sleep(max(0.0, outage_s - (time.monotonic() - fault)))
            waiting = rider.poll() is None
        rode_out = _finish(rider, started, fault)
    rode_out.notes["still running when PostgreSQL came back"] = waiting
    gave_up.notes["may take"] = give_up_bound_s(short_budget)
    gave_up.notes["spooled before recovery"] = spooled_repairs(giving_up)
    gave_up.recovery = recover(stack, giving_up)
    gave_up.notes["spooled after recovery"] = spooled_repairs(giving_up)
    return rode_out, gave_up


def _logged_models(client: MlflowClient) -> set[str]:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return set()
    return {model.model_id for model in client.search_logged_models([experiment.experiment_id])}


def _new_logged_model(client: MlflowClient, step: LoggedProcess, known: set[str]) -> str:
    """Wait until the step has created a logged model not in ``known`` (``log_model`` begins:
    its files are uploaded next); return its id."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert step.poll() is None, f"the step ended first:\n{step.output()[-3000:]}"
        if new := _logged_models(client) - known:
            return new.pop()
        time.sleep(0.05)
    raise AssertionError("the step logged no model")


def s3_cut_mid_upload(stack: Stack, cut_s: float, **variables: str) -> Outcome:
    """Train; S3 cut 20 kB into the upload of the step's model, restored ``cut_s`` later."""
    folder = stack.folder("s3-mid-upload")
    known = _logged_models(stack.client)
    started = time.monotonic()
    env = {**stack.server.client_environment, **variables}
    with train_step(stack.server.url, folder, **env) as step:
        _new_logged_model(stack.client, step, known)
        try:
            cut = stack.proxy.cut_after(20_000)
            assert cut.wait(timeout=120), "the model's upload ended before the cut"
            fault = time.monotonic()
            time.sleep(cut_s)
        finally:
            stack.proxy.restore()  # also disarms a cut that never came
        outcome = _finish(step, started, fault)
    outcome.notes["cut for"] = cut_s
    return outcome


def s3_cut_during_evaluate(stack: Stack, train_run_id: str, **variables: str) -> Outcome:
    """Evaluate a finished train run while the server cannot reach S3."""
    folder = stack.folder("s3-evaluate")
    with stack.proxy.outage():
        return run_step(
            stack, folder, "evaluate.py", "--run-id", train_run_id, *LENIENT_GATE, **variables
        )


def champion_and_challenger(stack: Stack, champion_train: str, candidate_train: str) -> str:
    """Promote ``champion_train``'s model to @champion, then evaluate ``candidate_train``'s
    against it (the gate passes: equal metrics do); return that evaluate run's id."""
    folder = stack.folder("champion")
    args = ["--run-id", champion_train, *LENIENT_GATE]
    first = run_step(stack, folder, "evaluate.py", *args)
    assert first.exit_code == 0, first.tail()
    promoted = run_step(stack, folder, "register.py", "--run-id", first.run_id("evaluate"))
    assert promoted.exit_code == 0 and " promoted " in promoted.lines[-1], promoted.tail()
    second = run_step(stack, folder, "evaluate.py", "--run-id", candidate_train, *LENIENT_GATE)
    assert second.exit_code == 0 and "gate passed" in second.lines[-1], second.tail()
    return second.run_id("evaluate")


@dataclass(frozen=True)
class Registry:
    """The registered model as a user sees it: aliases, versions, a promotion lock."""

    aliases: dict[str, str]
    versions: tuple[str, ...]
    locked: bool

    @classmethod
    def now(cls, client: MlflowClient) -> Registry:
        try:
            aliases = dict(client.get_registered_model(MODEL).aliases)
        except MlflowException:
            aliases = {}
        versions = tuple(
            sorted(
                (str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")), key=int
            )
        )
        locked = bool(client.search_registered_models(f"name = '{MODEL}{LOCK_SUFFIX}'"))
        return cls({k: str(v) for k, v in aliases.items()}, versions, locked)


def s3_cut_during_register(stack: Stack, evaluate_run_id: str, **variables: str) -> Outcome:
    """Register an evaluation while the server cannot reach S3 (its decision.json cannot be
    written), then again once S3 is back; the registry before, after and after the re-run are
    in ``notes``."""
    folder = stack.folder("s3-register")
    notes: dict[str, object] = {"before": Registry.now(stack.client)}
    with stack.proxy.outage():
        outcome = run_step(stack, folder, "register.py", "--run-id", evaluate_run_id, **variables)
    notes["after"] = Registry.now(stack.client)
    notes["rerun"] = run_step(stack, folder, "register.py", "--run-id", evaluate_run_id)
    notes["after rerun"] = Registry.now(stack.client)
    outcome.notes.update(notes)
    return outcome


def _wait_for_line(process: LoggedProcess, text: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while text not in process.output():
        assert process.poll() is None, f"ended without {text!r}:\n{process.output()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} after {STEP_TIMEOUT_S} s"
        time.sleep(0.1)


def _launcher_command(project: Path) -> list[str]:
    command = [sys.executable, "-m", "mlflow", "run", str(project), "-e", "train"]
    command += ["--env-manager", "local", "--experiment-name", EXPERIMENT]
    for flag, value in zip(SWEEP_FLAGS[::2], SWEEP_FLAGS[1::2], strict=True):
        command += ["-P", f"{flag.removeprefix('--').replace('-', '_')}={value}"]
    return command


def mlflow_run_with_the_database_down(
    stack: Stack, back_after_s: float | None, **variables: str
) -> Outcome:
    """`mlflow run <copy of the project> -e train` whose database goes down mid-sweep and stays
    down past the step's store budget; PostgreSQL is back ``back_after_s`` after the step's
    error line (None: only once the launcher has exited). ``notes``: seconds from the fault to
    the step's error line, and from that line to the launcher's end."""
    folder = stack.folder("mlflow-run")
    project = copy_project(folder / "project")
    env = stack.environment(folder, TMPDIR=str(folder), **variables)
    started = time.monotonic()
    with step_process(_launcher_command(project), env, folder / "mlflow-run.log") as launcher:
        run_id = step_run_id(launcher)
        wait_for_first_candidate(stack.client, launcher, run_id)
        stack.postgres.stop()
        fault = time.monotonic()
        try:
            _wait_for_line(launcher, "ERROR fraud_detection.cli")
            step_failed = time.monotonic()
            if back_after_s is not None:
                time.sleep(back_after_s)
                stack.postgres.start()
            code = launcher.wait(timeout=STEP_TIMEOUT_S)
        finally:
            stack.postgres.start()
        ended = time.monotonic()
    outcome = Outcome(code, launcher.output(), ended - started, ended - fault)
    outcome.notes.update(step_failed=step_failed - fault, launcher_ended=ended - step_failed)
    outcome.recovery = recover(stack, folder)
    return outcome
