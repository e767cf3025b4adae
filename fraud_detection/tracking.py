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
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.entities import Dataset, DatasetInput, InputTag, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema
from mlflow.types.utils import _infer_schema
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from fraud_detection.config import DEFAULT_EXPERIMENT_NAME, ConfigError
from fraud_detection.data import fingerprint
from fraud_detection.errors import LineageError, OutageError, PipelineError, is_absent
from fraud_detection.outages import (
    Outage,
    call_with_store_retry,
    diagnose,
    quick_requests,
    retry_while_stores_down,
)
from fraud_detection.recovery import settle_failed_run
from fraud_detection.spool import remember_unfinished

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT_ID = "0"
FINISHED = RunStatus.to_string(RunStatus.FINISHED)
FAILED = RunStatus.to_string(RunStatus.FAILED)
STEP_TAG = "fraud.step"
LAUNCHER_TAG = "fraud.launcher_run_id"
CONTINUED_IN_TAG = "fraud.continued_in"
ERROR_TAG = "fraud.error"
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
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
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
    step: str,
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
    tags = {STEP_TAG: step}
    if launcher is not None:
        # Once this step has its run, nested runs must not resume the launcher's run through
        # the variable (MLflow only clears it when it resumes a run from it itself).
        os.environ.pop("MLFLOW_RUN_ID", None)
    if launcher is not None and launcher.info.experiment_id == experiment_id:
        run = call_with_store_retry(
            mlflow.start_run,
            run_id=launcher.info.run_id,
            tags=tags,
            log_system_metrics=log_system_metrics,
        )
    else:
        run = _start_run_beside_launcher(
            step, name, experiment_id, tags, launcher, log_system_metrics
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
    step: str,
    experiment_name: str,
    experiment_id: str,
    tags: dict[str, str],
    launcher: Run | None,
    log_system_metrics: bool = False,
) -> mlflow.ActiveRun:
    """A new run of the step in its experiment; under `mlflow run`, the launcher's run (in
    another experiment) points to it."""
    if launcher is not None:
        tags[LAUNCHER_TAG] = launcher.info.run_id
        tags.update(
            (key, value)
            for key, value in launcher.data.tags.items()
            if key.startswith(_LAUNCHER_TAG_PREFIXES) or key == "mlflow.parentRunId"
        )
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    run = call_with_store_retry(
        mlflow.start_run,
        experiment_id=experiment_id,
        run_name=f"{step}-{launcher.info.run_name}" if launcher else None,
        tags=tags,
        log_system_metrics=log_system_metrics,
    )
    if launcher is not None:
        MlflowClient().set_tag(launcher.info.run_id, CONTINUED_IN_TAG, run.info.run_id)
        logger.info(
            "mlflow run put its run %s in the Default experiment; this %s step logs to "
            "experiment %r as run %s (pass --experiment-name to mlflow run to avoid this)",
            launcher.info.run_id,
            step,
            experiment_name,
            run.info.run_id,
        )
    return run


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
                f"reaches the server, or by `python -m fraud_detection.recovery` (noted in {path})"
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


class LoggingLane:
    """Logging calls sent one after another from a background thread, off the critical path.

    A step hands the lane what it can log while it goes on computing (datasets, finished child
    runs, checkpoints, curves) and waits for it only where it must read back what was logged.
    MLflow's own asynchronous logging (``synchronous=False``) queues ``log_batch`` calls only;
    creating runs, datasets and artifacts stay blocking there, hence this lane.

    Calls must name their run (``MlflowClient`` with a run id): MLflow's active run is per
    thread. The first failure is raised on the caller's thread by the next ``check``, ``drain``
    or the end of the ``with`` block, and the calls queued after it are dropped: against a
    server that is gone, each would wait its whole retry budget. When the block itself raises,
    queued calls are dropped and the one under way is waited for.

    A call that fails because a store behind the server is down (not the server itself) is
    repeated until the store is back or the store retry budget is spent
    (``outages.retry_while_stores_down``): every call handed to the lane must be safe to repeat.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logging-lane")
        self._pending: list[Future] = []
        self._failed = threading.Event()
        self._abandoned = threading.Event()  # the step failed: stop waiting out an outage
        self._scratch = contextlib.ExitStack()

    def __enter__(self) -> LoggingLane:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.drain()
            else:
                self._abandoned.set()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._scratch.close()

    def submit(self, call: Callable[..., object], *args: object) -> None:
        """Queue ``call(*args)``; first raise any failure of the calls already finished."""
        self.check()
        self._pending.append(self._pool.submit(self._call, call, args))

    def check(self) -> None:
        """Raise the first failure among the calls finished so far."""
        for future in self._pending:
            if not future.done():  # one worker: the finished calls come first
                return
            future.result()

    def drain(self) -> None:
        """Wait until every queued call is done; raise the first failure."""
        for future in self._pending:
            future.result()
        self._pending.clear()

    def scratch_dir(self) -> Path:
        """A temporary folder that lives as long as the lane: for files a queued call uploads."""
        return Path(self._scratch.enter_context(tempfile.TemporaryDirectory()))

    def _call(self, call: Callable[..., object], args: tuple[object, ...]) -> None:
        if self._failed.is_set():
            return  # dropped: an earlier call failed, and that failure is the one raised
        try:
            retry_while_stores_down(lambda: call(*args), abandon=self._abandoned)
        except BaseException:
            self._failed.set()
            raise


class FastSchemaPandasDataset(PandasDataset):
    """``PandasDataset`` whose schema is inferred in vectorised form: the same schema, sooner.

    MLflow 3.17 decides whether each column is required by testing every value in Python: 3.5 s
    for the default training and validation frames, more than all the rest of the train step's
    tracking put together (``bench/tracking_overhead.py``). Here the types come from a sample
    (MLflow's own inference) and "required" from one vectorised ``isna`` over the whole frame.
    """

    _TYPE_SAMPLE_ROWS = 1_000

    @cached_property
    def schema(self) -> Schema | None:
        try:
            sampled = _infer_schema(self.df.head(self._TYPE_SAMPLE_ROWS))
        except Exception:  # as PandasDataset: no schema rather than no dataset
            logger.debug("Could not infer the schema of dataset %s", self.name, exc_info=True)
            return None
        if not sampled.has_input_names():
            return sampled
        has_missing = self.df.isna().any()
        return Schema(
            [
                ColSpec(spec.type, spec.name, required=not bool(has_missing[spec.name]))
                for spec in sampled.inputs
            ]
        )


def pandas_dataset(
    frame: pd.DataFrame, source: str, name: str, label: str, predictions: str | None = None
) -> PandasDataset:
    """An MLflow dataset for ``frame`` whose digest is our content fingerprint of it.

    File sources resolve to MLflow's own source types (local, s3, http...); simulated data is
    described by its generator parameters.
    """
    if source.startswith("simulator:"):
        settings = dict(item.split("=", 1) for item in source.removeprefix("simulator:").split(","))
        dataset_source = CodeDatasetSource({"generator": "fraud_detection.simulator", **settings})
    else:
        dataset_source = resolve_dataset_source(source)
    return FastSchemaPandasDataset(
        df=frame,
        source=dataset_source,
        targets=label,
        name=name,
        digest=fingerprint(frame),
        predictions=predictions,
    )


def log_datasets(run_id: str, datasets: Mapping[str, PandasDataset]) -> None:
    """Record ``datasets`` (by context: training, validation...) as inputs of run ``run_id``.

    MLflow's SQL store looks for an existing row of each dataset and then inserts the missing
    ones, so trainings that log the same data at the same moment can collide on the datasets
    table's unique key, and the server refuses the loser's request (seen with three trainings
    started together: ``tests/integration/test_server_faults.py``). By then the winner's row is
    committed; asked again, the store finds it and links it to this run.
    """
    inputs = [
        DatasetInput(Dataset(**dataset.to_dict()), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        for context, dataset in datasets.items()
    ]
    client = MlflowClient()
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as error:
        if diagnose(error) is not None:
            raise
        logger.debug("Logging the datasets again after %s", error)
        client.log_inputs(run_id, datasets=inputs)


def find_step_run(experiment_name: str, step: str, run_id: str = "") -> Run:
    """Return run ``run_id`` (checked to be a finished ``step`` run) or the latest such run."""
    client = MlflowClient()
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException as error:
            if not is_absent(error):
                raise
            raise LineageError(f"run {run_id!r} not found ({error.message})") from error
        actual = run.data.tags.get(STEP_TAG)
        if actual != step:
            raise LineageError(
                f"run {run_id} is a {actual or 'non-pipeline'} run, not a {step} run"
            )
        if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
            raise LineageError(f"{step} run {run_id} is {run.info.status}, not FINISHED")
        return run
    launcher = _launcher_run()
    name = resolve_experiment_name(experiment_name, launcher)
    experiment = client.get_experiment_by_name(name)
    runs = (
        client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{STEP_TAG}` = '{step}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if experiment is not None
        else []
    )
    if not runs:
        raise LineageError(
            f"no finished {step} run in experiment {name!r}; run the {step} step first "
            f"or pass --run-id"
        )
    return runs[0]
