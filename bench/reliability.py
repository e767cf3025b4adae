"""Reliability report: bad input and injected faults through every entry point; what was left.

Runs, each against its own throwaway tracking store on this machine:

- bad data files and bad parameters through the train, evaluate and register entry points
  (in-process, as ``python train.py ...`` runs them);
- bad scoring requests to ``serve.py api`` and to ``mlflow models serve`` of one registered model;
- faults: a real `mlflow server` killed mid-sweep and restarted; killed and left down (then
  ``python -m fraud_detection.hardening.recovery`` once it is back); two ``register.py`` racing for
  @champion;
- store faults behind the production server (``deploy/production-server.sh``: PostgreSQL, S3
  through a proxy that is cut): PostgreSQL restarted, then down 90 s, under two trainings
  mid-sweep (one rides it out; one, with a 30 s store budget, gives up and is recovered); S3 cut
  45 s mid-upload of train's model; S3 cut during evaluate; S3 cut while register writes;

then counts, in every store, the runs left RUNNING, the model versions left half-registered
(registered by a failed step, or without the promotion decision a finished register records),
the metric points lost (gaps in a metric's steps, missing child runs, curves cut short) and the
register steps that failed while @champion moved; and times what each store fault cost
(``seconds_lost_to_*``: how much longer the step took than without the fault, or, for a step
that fails, how long it took to fail). Steps keep the template's MLflow retry budget (about
31 s per request).
The scenarios and their checks are the test suite's own (``tests/``), run here once to give
figures. Needs the project's dev and integration extras (``pip install -e ".[dev,integration]"``).

    python bench/reliability.py --out bench/results/reliability.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]

logger = logging.getLogger("bench.reliability")

MUST_BE_ZERO = (
    "runs_left_running",
    "half_registered_versions",
    "metric_points_lost",
    "champion_moved_by_failed_step",
)


@contextmanager
def tracking_store(folder: Path) -> Iterator[str]:
    """Point this process at a new SQLite store in ``folder``; yield its URI."""
    import mlflow

    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    saved = {name: os.environ.pop(name, None) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.MlflowClient().create_experiment(
        "fraud-detection", artifact_location=(folder / "artifacts").as_uri()
    )
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(None)
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


class Report:
    def __init__(self) -> None:
        self.figures: dict[str, float] = {
            "bad_inputs_tried": 0,
            "bad_inputs_refused_clearly": 0,
            "faults_injected": 0,
            "faults_survived_or_failed_cleanly": 0,
            "runs_left_running": 0,
            "half_registered_versions": 0,
            "metric_points_lost": 0,
            "champion_moved_by_failed_step": 0,
            "mlflow_scoring_server_answers_repeating_the_request": 0,
        }
        self.notes: list[str] = []

    def add(self, key: str, amount: float = 1) -> None:
        self.figures[key] += amount

    def problem(self, text: str) -> None:
        logger.warning(text)
        self.notes.append(text)

    def audit_store(self, uri: str, registered_by_failed_steps_only: bool = False) -> None:
        """Count RUNNING runs and half-registered versions in the store at ``uri``."""
        from mlflow.entities import ViewType
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        experiments = [e.experiment_id for e in client.search_experiments(ViewType.ALL)]
        running = [r for r in client.search_runs(experiments) if r.info.status == "RUNNING"]
        self.add("runs_left_running", len(running))
        for model in client.search_registered_models():
            if model.name.endswith("--promotion-lock"):
                self.add("half_registered_versions")  # a lock nobody released
                continue
            for version in client.search_model_versions(f"name = '{model.name}'"):
                if registered_by_failed_steps_only or "fraud.decision" not in version.tags:
                    self.add("half_registered_versions")


def bad_data_and_parameters(report: Report, folder: Path) -> None:
    from fraud_detection.cli import (
        EXIT_BAD_PARAMETERS,
        EXIT_FAILED,
        main_with_exit_code,
    )
    from fraud_detection.config import TrainConfig
    from fraud_detection.steps.train import train
    from tests.test_reliability import (
        BAD_DATA,
        BAD_STEP_PARAMETERS,
        BAD_TRAINING_PARAMETERS,
        FAST,
    )

    for index, (case, (make, extra, message)) in enumerate(BAD_DATA.items()):
        store = folder / f"data-{index}"
        with tracking_store(store) as uri, _errors_seen() as errors:
            path = make(store)
            code = main_with_exit_code(
                TrainConfig, train, ["--data", str(path), *extra, *FAST], "train"
            )
            report.add("bad_inputs_tried")
            clear = (
                code == EXIT_FAILED
                and len(errors) == 1
                and message in errors[0]
                and str(path) in errors[0]
            )
            report.add("bad_inputs_refused_clearly", clear)
            if not clear:
                report.problem(f"bad data {case!r}: exit {code}, errors {errors}")
            report.audit_store(uri, registered_by_failed_steps_only=True)
    parameter_cases = [
        (TrainConfig, train, flags, message) for flags, message in BAD_TRAINING_PARAMETERS
    ]
    for index, (config_type, step, flags, message) in enumerate(
        parameter_cases + BAD_STEP_PARAMETERS
    ):
        with tracking_store(folder / f"parameters-{index}") as uri, _errors_seen() as errors:
            code = main_with_exit_code(config_type, step, flags, "")
            report.add("bad_inputs_tried")
            clear = code == EXIT_BAD_PARAMETERS and any(message in error for error in errors)
            report.add("bad_inputs_refused_clearly", clear)
            if not clear:
                report.problem(f"bad parameters {flags}: exit {code}, errors {errors}")
            report.audit_store(uri, registered_by_failed_steps_only=True)


@contextmanager
def _errors_seen() -> Iterator[list[str]]:
    """The ERROR lines logged inside the block (what the user sees)."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect(logging.ERROR)
    logging.getLogger().addHandler(handler)
    try:
        yield seen
    finally:
        logging.getLogger().removeHandler(handler)


def bad_requests(report: Report, folder: Path) -> None:
    from mlflow.tracking import MlflowClient

    from fraud_detection.data.features import (
        FEATURE_COLUMNS,
        add_features,
    )
    from tests.serving.test_api_process import (
        SECRET,
        _mlflow_models_serve,
        _request,
        _serve_api,
        running,
    )
    from tests.serving.test_api_process import bad_requests as bad_request_bodies
    from tests.support.pipeline import evaluate_and_register, tiny_simulation, train_small

    with tracking_store(folder) as uri:
        evaluate_and_register(train_small())
        version = MlflowClient().search_model_versions("name = 'fraud-detector'")[0].version
    rows = add_features(tiny_simulation(seed=5, n_days=35))[list(FEATURE_COLUMNS)].tail(20)
    good = json.dumps({"dataframe_records": rows.head(2).to_dict(orient="records")}).encode()
    model_uri = f"models:/fraud-detector/{version}"
    for name, command in (
        ("serve.py api", _serve_api(model_uri)),
        ("mlflow models serve", _mlflow_models_serve(model_uri)),
    ):
        with running(command, uri, folder) as (base, _):
            connection = http.client.HTTPConnection(base, timeout=60)
            oversized = b'{"inputs": [' + b" " * (17 * 1024 * 1024) + b"]}"
            bodies = {**bad_request_bodies(rows), "oversized body (17 MiB)": oversized}
            for case, body in bodies.items():
                status, _, content = _request(connection, body)
                report.add("bad_inputs_tried")
                repeats = SECRET.encode() in content or b"Traceback" in content
                if name == "mlflow models serve":
                    report.add("mlflow_scoring_server_answers_repeating_the_request", repeats)
                    clear = 400 <= status < 500
                else:
                    clear = 400 <= status < 500 and not repeats
                report.add("bad_inputs_refused_clearly", clear)
                if not clear:
                    report.problem(f"{name}, {case}: {status}")
                if case.startswith("oversized"):
                    connection.close()  # the server may close it after refusing the body
                    connection = http.client.HTTPConnection(base, timeout=60)
            if _request(connection, good)[0] != 200:
                report.problem(f"{name} stopped answering good requests after bad ones")
            connection.close()
    report.audit_store(uri)


def server_faults(report: Report, folder: Path) -> None:
    from mlflow.tracking import MlflowClient

    from fraud_detection.hardening.spool import STATE_DIR_VARIABLE
    from tests.integration.test_server_faults import killed_mid_sweep
    from tests.support.faults import all_runs, lost_metric_points
    from tests.support.processes import mlflow_environment, run_command
    from tests.support.services import dev_server

    # 1. Killed mid-sweep, restarted three seconds later: the step must finish, losing nothing.
    restart = folder / "restart"
    restart.mkdir(parents=True)
    with killed_mid_sweep(restart) as (step, port):
        report.add("faults_injected")
        time.sleep(3)
        with dev_server(restart, port) as restarted:
            code = step.wait(timeout=600)
            client = MlflowClient(restarted.url)
            runs = all_runs(client)
            children = [r for r in runs if r.data.tags.get("fraud.step") == "candidate"]
            lost = lost_metric_points(client, runs)
            report.add("metric_points_lost", len(lost) + max(0, 5 - len(children)))
            report.add("faults_survived_or_failed_cleanly", code == 0 and not lost)
            if code != 0 or lost:
                report.problem(f"restart: exit {code}, {lost}")
            report.audit_store(restarted.url)

    # 2. Killed and left down: the step must give up in bounded time; recovery marks its runs.
    down = folder / "down"
    down.mkdir(parents=True)
    with killed_mid_sweep(down) as (step, port):
        report.add("faults_injected")
        killed = time.monotonic()
        code = step.wait(timeout=900)
        report.figures["seconds_to_fail_with_the_server_down"] = round(time.monotonic() - killed, 1)
    with dev_server(down, port) as restarted:
        env = mlflow_environment(restarted.url, **{STATE_DIR_VARIABLE: str(down / "state")})
        recovery = run_command([sys.executable, "-m", "fraud_detection.hardening.recovery"], env)
        report.add("faults_survived_or_failed_cleanly", code != 0 and recovery.returncode == 0)
        report.audit_store(restarted.url)


def racing_registers(report: Report, folder: Path) -> None:
    """Two register processes racing for @champion: one promotion, the other told."""
    from mlflow.tracking import MlflowClient

    from fraud_detection.config import EvaluateConfig
    from fraud_detection.steps.evaluate import evaluate
    from tests.support.pipeline import LENIENT_GATE, latest_run, train_small
    from tests.support.processes import mlflow_environment

    with tracking_store(folder) as uri:
        evaluations = []
        for _ in range(2):
            evaluate(EvaluateConfig(run_id=train_small(), gate=LENIENT_GATE))
            evaluations.append(latest_run("evaluate").info.run_id)
    env = mlflow_environment(uri)
    processes = [
        subprocess.Popen(
            [sys.executable, str(PROJECT_DIR / "register.py"), "--run-id", run_id],
            env=env,
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for run_id in evaluations
    ]
    report.add("faults_injected")
    codes = [process.wait(timeout=300) for process in processes]
    client = MlflowClient(uri)
    versions = client.search_model_versions("name = 'fraud-detector'")
    decisions = sorted(v.tags.get("fraud.decision", "") for v in versions)
    report.add("faults_survived_or_failed_cleanly", decisions == ["not promoted", "promoted"])
    if decisions != ["not promoted", "promoted"]:
        report.problem(f"racing registers: decisions {decisions}, exits {codes}")
    failed = {run_id for run_id, code in zip(evaluations, codes, strict=True) if code != 0}
    if failed and _champion_evaluation(client) in failed:
        report.add("champion_moved_by_failed_step")
    report.audit_store(uri)


def _champion_evaluation(client) -> str | None:
    """The evaluate run of the version @champion points at (None: no champion)."""
    from mlflow.exceptions import MlflowException

    from fraud_detection.contract import EVALUATE_RUN_TAG

    try:
        version = client.get_model_version_by_alias("fraud-detector", "champion")
    except MlflowException:
        return None
    return version.tags.get(EVALUATE_RUN_TAG)


def store_faults(report: Report, folder: Path) -> None:
    """PostgreSQL and S3 failing behind the production server: the scenarios and the checks of
    tests/integration/test_store_faults.py, with the template's budgets."""
    from tests.support.services import moto_s3
    from tests.support.store_faults import store_fault_stack

    folder.mkdir(parents=True)
    with moto_s3(folder) as s3, store_fault_stack(folder, s3) as stack:
        alone, together = _clean_trainings(stack, 1), _clean_trainings(stack, 2)
        champion_train = _database_faults(report, stack, together)
        _s3_faults(report, stack, alone, champion_train)
        report.audit_store(stack.server.url)


def _clean_trainings(stack, count: int) -> float:
    """Seconds the first of ``count`` trainings started together takes, without a fault."""
    from contextlib import ExitStack

    from tests.support.faults import train_step

    started = time.monotonic()
    with ExitStack() as steps:
        processes = [
            steps.enter_context(
                train_step(
                    stack.server.url,
                    stack.folder(f"clean-{count}-{index}"),
                    **stack.server.client_environment,
                )
            )
            for index in range(count)
        ]
        processes[0].wait(timeout=600)
        seconds = time.monotonic() - started
        for process in processes:
            process.wait(timeout=600)
    return seconds


def _checked(report: Report, fault: str, check, *args) -> None:
    """Count the fault, and whether the test suite's ``check`` of its outcome holds."""
    report.add("faults_injected")
    try:
        check(*args)
    except AssertionError as error:
        report.problem(f"{fault}: {str(error).splitlines()[0][:300]}")
    else:
        report.add("faults_survived_or_failed_cleanly")


def _lost_points(report: Report, stack, train_run_id: str) -> None:
    from tests.support.faults import lost_metric_points, sweep_runs

    runs = sweep_runs(stack.client, train_run_id)
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == train_run_id]
    lost = lost_metric_points(stack.client, runs)
    report.add("metric_points_lost", len(lost) + max(0, 5 - len(children)))


def _database_faults(report: Report, stack, clean_seconds: float) -> str:
    """PostgreSQL restarted, then down 90 s, under two trainings; returns the train run id of
    the one that rode it out."""
    from fraud_detection.hardening.outages import STORE_RETRY_VARIABLE
    from tests.integration import test_store_faults as checks
    from tests.support.store_faults import database_outage_mid_sweep

    outcomes = database_outage_mid_sweep(stack, 90, {STORE_RETRY_VARIABLE: "30"})
    rider, quitter = outcomes
    lost = rider.seconds - clean_seconds
    report.figures["seconds_lost_to_postgres_down_90s_mid_sweep"] = round(lost, 1)
    report.figures["seconds_lost_to_postgres_down_past_a_30s_budget"] = round(
        quitter.fault_to_exit, 1
    )
    _checked(
        report,
        "PostgreSQL down 90 s mid-sweep",
        checks.test_train_rides_out_a_fast_restart_and_a_90_s_outage_of_postgres,
        stack,
        outcomes,
    )
    _checked(
        report,
        "PostgreSQL down past the store budget",
        checks.test_train_past_the_store_budget_fails_in_one_line_then_recovery_settles_its_runs,
        stack,
        outcomes,
    )
    _lost_points(report, stack, rider.run_id("train"))
    return rider.run_id("train")


def _s3_faults(report: Report, stack, clean_seconds: float, champion_train: str) -> None:
    """S3 cut mid-upload (train), then during evaluate, then while register writes."""
    from tests.integration import test_store_faults as checks
    from tests.support import store_faults as scenarios

    # Longer than MLflow's budget for one request (31 s): log_model fails and is repeated.
    survived = scenarios.s3_cut_mid_upload(stack, cut_s=45)
    figures = report.figures
    figures["seconds_lost_to_s3_cut_45s_mid_upload"] = round(survived.seconds - clean_seconds, 1)
    _checked(
        report,
        "S3 cut 45 s mid-upload",
        checks.test_train_rides_out_s3_cut_mid_upload_and_keeps_one_ready_model,
        stack,
        survived,
    )
    _lost_points(report, stack, survived.run_id("train"))
    evaluated = scenarios.s3_cut_during_evaluate(stack, survived.run_id("train"))
    figures["seconds_lost_to_s3_cut_during_evaluate"] = round(evaluated.seconds, 1)
    check = checks.test_evaluate_with_s3_cut_names_the_artifact_store
    _checked(report, "S3 cut during evaluate", check, stack, evaluated)
    candidate = scenarios.champion_and_challenger(stack, champion_train, survived.run_id("train"))
    registered = scenarios.s3_cut_during_register(stack, candidate)
    figures["seconds_lost_to_s3_cut_during_register"] = round(registered.seconds, 1)
    champions = {registered.notes[key].aliases.get("champion") for key in ("before", "after")}
    moved = registered.exit_code != 0 and len(champions) > 1
    report.add("champion_moved_by_failed_step", moved)
    check = checks.test_register_with_s3_cut_changes_nothing_and_a_rerun_promotes
    _checked(report, "S3 cut while register writes", check, stack, registered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # MLflow 3 reports usage to its telemetry host: this bench talks to 127.0.0.1 only (the
    # variables reach every server and step it starts).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    # MLflow's and scikit-learn's hints about the tiny data sets used here are not findings.
    warnings.filterwarnings("ignore", category=UserWarning)
    sys.path.insert(0, str(PROJECT_DIR))  # the scenarios are the test suite's
    report = Report()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reliability-") as scratch:
        os.environ["FRAUD_DETECTION_STATE_DIR"] = str(Path(scratch) / "state")
        bad_data_and_parameters(report, Path(scratch) / "inputs")
        bad_requests(report, Path(scratch) / "serving")
        server_faults(report, Path(scratch) / "faults")
        racing_registers(report, Path(scratch) / "race")
        store_faults(report, Path(scratch) / "stores")
    report.figures["wall_seconds"] = round(time.perf_counter() - started, 1)

    width = max(map(len, report.figures))
    for key, value in report.figures.items():
        goal = "  (must be 0)" if key in MUST_BE_ZERO else ""
        print(f"{key:<{width}}  {value:g}{goal}")
    for note in report.notes:
        print(f"problem: {note}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report.figures, indent=2) + "\n")
    failed = [key for key in MUST_BE_ZERO if report.figures[key]] + (
        ["bad inputs not refused clearly"]
        if report.figures["bad_inputs_refused_clearly"] != report.figures["bad_inputs_tried"]
        else []
    )
    if failed:
        print(f"NOT RELIABLE: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
