"""How steps open their MLflow runs and find each other's: experiment choice, params, lineage.

The experiment rule, in one place (the README explains it to users):

- An experiment chosen through MLflow itself wins: ``mlflow run --experiment-name/-id``, or the
  ``MLFLOW_EXPERIMENT_NAME``/``MLFLOW_EXPERIMENT_ID`` variables. The ``experiment_name``
  parameter only fills in when nothing was chosen; setting it to a *different* non-default name
  at the same time is refused as ambiguous.
- ``mlflow run`` creates its run before our code starts. When it was given no experiment it puts
  that run in ``Default``; the step then works in a new run of the chosen experiment and tags the
  launcher's run with a pointer to it (``fraud.continued_in``), since MLflow cannot move a run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import mlflow
from mlflow.entities import Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fraud_detection import contract
from fraud_detection.config import DEFAULT_EXPERIMENT_NAME, ConfigError
from fraud_detection.contract import Step
from fraud_detection.errors import LineageError, OutageError, PipelineError, is_absent
from fraud_detection.hardening.outages import (
    Outage,
    call_with_store_retry,
    diagnose,
    quick_requests,
)
from fraud_detection.hardening.recovery import settle_failed_run
from fraud_detection.hardening.spool import remember_unfinished

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT_ID = "0"
FINISHED = RunStatus.to_string(RunStatus.FINISHED)
FAILED = RunStatus.to_string(RunStatus.FAILED)
# MLflow 3's UI opens an experiment without a kind on its GenAI traces view; this kind opens it
# on its training runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
EXPERIMENT_DESCRIPTION = (
    "Credit-card fraud detection (the fraud-detection MLflow Project template): each `pipeline` "
    "run holds its `train` (with one child run per candidate of the sweep), `evaluate` and "
    "`register` runs. The registered model's @champion alias is the version that serves."
)
# What each step's run is called in the UI.
RUN_NAMES = {Step.MAIN: "pipeline"}
# Tags the launcher sets that describe the code of the run; copied when a step leaves it.
_LAUNCHER_TAG_PREFIXES = ("mlflow.source.", "mlflow.project.", "mlflow.gitRepoURL", "mlflow.user")


def get_or_create_experiment(name: str) -> str:
    """Return the id of experiment ``name``, creating it once even when processes race."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise ConfigError(
                f"experiment {name!r} is deleted; restore it (mlflow experiments restore) "
                "or choose another experiment_name"
            )
        if not set(EXPERIMENT_KIND) <= set(experiment.tags):  # made by `mlflow run`, say
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    try:
        return client.create_experiment(
            name, tags={**EXPERIMENT_KIND, "mlflow.note.content": EXPERIMENT_DESCRIPTION}
        )
    except MlflowException as error:
        # Another process created it between our lookup and our create: use theirs.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        logger.debug("Experiment %s was created concurrently (%s)", name, error.error_code)
        return experiment.experiment_id


def _launcher_run() -> Run | None:
    run_id = os.environ.get("MLFLOW_RUN_ID")
    return MlflowClient().get_run(run_id) if run_id else None


def resolve_experiment_name(requested: str, launcher: Run | None) -> str:
    """Apply the experiment rule of this module's docstring; return the experiment name."""
    client = MlflowClient()
    chosen: str | None = None
    if launcher is not None:
        if launcher.info.experiment_id != DEFAULT_EXPERIMENT_ID:
            chosen = client.get_experiment(launcher.info.experiment_id).name
    elif os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        chosen = os.environ["MLFLOW_EXPERIMENT_NAME"]
    elif os.environ.get("MLFLOW_EXPERIMENT_ID"):
        chosen = client.get_experiment(os.environ["MLFLOW_EXPERIMENT_ID"]).name
    if chosen is None or chosen == requested:
        return requested
    if requested == DEFAULT_EXPERIMENT_NAME:
        return chosen
    raise ConfigError(
        f"experiment_name is {requested!r} but MLflow was told to use experiment {chosen!r} "
        "(mlflow run --experiment-name, or MLFLOW_EXPERIMENT_NAME/ID); use one of the two"
    )


@contextmanager
def step_run(
    step: Step,
    experiment_name: str,
    params: Mapping[str, Any],
    log_system_metrics: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Open the run of a pipeline step and log its parameters; FAILED if the body raises.

    Under ``mlflow run`` this is the launcher's run whenever it is in the right experiment. The
    run ends FINISHED when the body returns, unless the body ended it itself
    (``end_step_run``). When the body raises, the run ends FAILED with the reason in its
    ``fraud.error`` tag; if the server cannot take that now, the run is noted for ``recovery``.
    An outage is raised as ``OutageError``, whose one line names the part that failed.
    """
    launcher = _launcher_run()
    name = resolve_experiment_name(experiment_name, launcher)
    experiment_id = get_or_create_experiment(name)
    tags = contract.step_tags(step)
    run_name = RUN_NAMES.get(step, step.value)
    if launcher is not None:
        # Once this step has its run, nested runs must not resume the launcher's run through
        # the variable (MLflow only clears it when it resumes a run from it itself).
        os.environ.pop("MLFLOW_RUN_ID", None)
    if launcher is not None and launcher.info.experiment_id == experiment_id:
        run = call_with_store_retry(
            mlflow.start_run,
            run_id=launcher.info.run_id,
            run_name=run_name,
            tags=tags,
            log_system_metrics=log_system_metrics,
        )
    else:
        run = _start_run_beside_launcher(
            run_name, name, experiment_id, tags, launcher, log_system_metrics
        )
    # The runs a failure must end: this step's, and the launcher's when it is another one
    # (in Default: the `mlflow run` process ends it, unless the server is down by then).
    run_ids = list(dict.fromkeys([run.info.run_id, *([launcher.info.run_id] if launcher else [])]))
    try:
        call_with_store_retry(log_params_once, run.info.run_id, params)
        logger.info("%s run %s in experiment %r", step, run.info.run_id, name)
        yield run
    except BaseException as error:
        raise _fail(run.info.run_id, run_ids, error) from error
    if _is_active(run.info.run_id):
        end_step_run(run)


def _start_run_beside_launcher(
    run_name: str,
    experiment_name: str,
    experiment_id: str,
    tags: dict[str, str],
    launcher: Run | None,
    log_system_metrics: bool = False,
) -> mlflow.ActiveRun:
    """A new run of the step in its experiment; under `mlflow run`, the launcher's run (in
    another experiment) points to it."""
    if launcher is not None:
        tags[contract.LAUNCHER_TAG] = launcher.info.run_id
        tags.update(
            (key, value)
            for key, value in launcher.data.tags.items()
            if key.startswith(_LAUNCHER_TAG_PREFIXES) or key == "mlflow.parentRunId"
        )
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    run = call_with_store_retry(
        mlflow.start_run,
        experiment_id=experiment_id,
        run_name=run_name,
        tags=tags,
        log_system_metrics=log_system_metrics,
    )
    if launcher is not None:
        _point_launcher_to(launcher, run, experiment_name)
    return run


def _point_launcher_to(launcher: Run, run: mlflow.ActiveRun, experiment_name: str) -> None:
    """Make the launcher's run in Default say where the step's run is (MLflow cannot move it)."""
    MlflowClient().log_batch(
        launcher.info.run_id,
        tags=[
            RunTag(contract.CONTINUED_IN_TAG, run.info.run_id),
            RunTag("mlflow.runName", f"launcher (see {experiment_name})"),
            RunTag(
                "mlflow.note.content",
                f"`mlflow run` was given no experiment, so it put this run in Default. The "
                f"{run.info.run_name} run it launched is {run.info.run_id} in experiment "
                f"{experiment_name!r}. Pass --experiment-name to `mlflow run` to avoid this.",
            ),
        ],
    )
    logger.info(
        "mlflow run put its run %s in the Default experiment; this step logs to experiment %r "
        "as run %s (pass --experiment-name to mlflow run to avoid this)",
        launcher.info.run_id,
        experiment_name,
        run.info.run_id,
    )


def _is_active(run_id: str) -> bool:
    active = mlflow.active_run()
    return active is not None and active.info.run_id == run_id


def end_step_run(run: mlflow.ActiveRun) -> None:
    """End the step's run FINISHED now, riding out a store outage (``call_with_store_retry``).

    ``step_run`` does this when its block ends; a step whose last action must happen while
    something is still held (a promotion under its lock) calls it itself.
    """
    run_id = run.info.run_id
    if _is_active(run_id):
        try:
            mlflow.end_run(FINISHED)  # leaves MLflow's active-run stack, stops system metrics
            return
        except Exception as error:
            if diagnose(error) is None:
                raise
            # MLflow left the run's stack before its request failed: retry by id below.
    call_with_store_retry(MlflowClient().set_terminated, run_id, FINISHED)


def _fail(run_id: str, run_ids: list[str], error: BaseException) -> BaseException:
    """End the step's run after ``error``; return the exception the step raises.

    An outage gets one quick attempt (no retries, short timeout) instead of another budget:
    the step fails in one budget, not two. What cannot be written now is noted for recovery.
    """
    outage = diagnose(error)
    reason = _reason(error, outage)
    status = "KILLED" if isinstance(error, KeyboardInterrupt) else FAILED
    noted = ""
    with quick_requests() if outage is not None else contextlib.nullcontext():
        try:
            if _is_active(run_id):
                try:
                    mlflow.end_run(status)
                except Exception as end_error:
                    if diagnose(end_error) is None:
                        raise
            settle_failed_run(MlflowClient(), run_id, reason, status)
        except Exception as settle_error:
            if diagnose(settle_error) is None:
                raise
            path = remember_unfinished(run_ids, reason)
            noted = (
                f"; run(s) {', '.join(run_ids)} will be marked FAILED by the next step that "
                "reaches the server, or by `python -m fraud_detection.hardening.recovery` "
                f"(noted in {path})"
            )
    if outage is not None:
        return OutageError(outage, f"{reason}{noted}")
    if noted:
        logger.error("The tracking server could not record the failure%s", noted)
    return error


def _reason(error: BaseException, outage: Outage | None) -> str:
    """The failure in one line, as the user reads it and as ``fraud.error`` keeps it."""
    if outage is not None:
        return str(error) if isinstance(error, OutageError) else outage.describe()
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    if isinstance(error, PipelineError):
        return str(error)
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def log_params_once(run_id: str, params: Mapping[str, Any]) -> None:
    """Log ``params`` except those the run already has (``mlflow run`` logs its own as strings;
    logging the same key with another spelling, 0.5 vs 0.50, would raise)."""
    existing = MlflowClient().get_run(run_id).data.params
    missing = {key: value for key, value in params.items() if key not in existing}
    if missing:
        mlflow.log_params(missing, run_id=run_id)


def find_step_run(experiment_name: str, step: Step, run_id: str = "") -> Run:
    """Return run ``run_id`` (checked to be a finished ``step`` run) or the latest such run."""
    client = MlflowClient()
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException as error:
            if not is_absent(error):
                raise
            raise LineageError(f"run {run_id!r} not found ({error.message})") from error
        actual = contract.step_of(run)
        if actual != step:
            raise LineageError(
                f"run {run_id} is a {actual or 'non-pipeline'} run, not a {step.value} run"
            )
        if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
            raise LineageError(f"{step.value} run {run_id} is {run.info.status}, not FINISHED")
        return run
    launcher = _launcher_run()
    name = resolve_experiment_name(experiment_name, launcher)
    experiment = client.get_experiment_by_name(name)
    runs = (
        client.search_runs(
            [experiment.experiment_id],
            filter_string=f"{contract.step_filter(step)} and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if experiment is not None
        else []
    )
    if not runs:
        raise LineageError(
            f"no finished {step.value} run in experiment {name!r}; run the {step.value} step "
            "first or pass --run-id"
        )
    return runs[0]
