"""The train step: data -> features -> time split -> sweep on validation -> one logged model.

1. Every candidate (each XGBoost grid point, the logistic-regression baseline) is fitted on the
   validation-training window in a nested child run, stopping early on the validation window,
   and records its validation metrics and per-round curves there.
2. The parent run asks MLflow for its best child (``search_runs``, ordered by validation
   average precision).
3. The winner is refitted on the training window with the rounds early stopping kept,
   checkpointed every N rounds; its decision threshold is tuned on validation data to save the
   most money (``modelling.threshold``); it is logged as the run's only model, threshold inside.

What evaluate needs later (the data recipe, the model id) is written through ``contract``.
Where the rows live and how a candidate is fitted and measured (pandas in this process, or
Spark with ``engine=spark``) is the engine's part (``fraud_detection.engine``); this flow is
the same for both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.time import get_current_time_millis

from fraud_detection import contract
from fraud_detection.config import ModelConfig, TrainConfig
from fraud_detection.config.fields import flatten
from fraud_detection.contract import Step
from fraud_detection.engine import Engine, TrainingData, engine_for
from fraud_detection.errors import PipelineError
from fraud_detection.hardening.datasets import log_datasets
from fraud_detection.hardening.logging_lane import LoggingLane
from fraud_detection.hardening.outages import call_with_store_retry
from fraud_detection.hardening.recovery import delete_failed_models
from fraud_detection.modelling.estimators import (
    CandidateSpec,
    FittedCandidate,
    Scorer,
    candidate_specs,
)
from fraud_detection.modelling.metrics import RANKING_METRICS
from fraud_detection.modelling.pyfunc import (
    ESTIMATOR_ARTIFACT,
    MODEL_CODE,
    PACKAGE_DIR,
    model_config,
    model_requirements,
    model_signature,
)
from fraud_detection.modelling.threshold import ThresholdChoice
from fraud_detection.monitoring.profile import ReferenceProfile
from fraud_detection.tracking import step_run

logger = logging.getLogger(__name__)

# MLflow accepts at most 1000 metrics per log_batch call.
LOG_BATCH_LIMIT = 1_000


def train(config: TrainConfig) -> str:
    """Run the train step; return a one-paragraph report."""
    experiment = config.tracking.experiment_name
    with (
        step_run(Step.TRAIN, experiment, flatten(config), log_system_metrics=True) as run,
        LoggingLane() as lane,
    ):
        run_id = run.info.run_id
        engine = engine_for(config.engine)
        data = engine.prepare_training(config)
        lane.submit(_log_lineage, run_id, data, config, engine)

        specs = engine.candidate_specs(candidate_specs(config.model))
        best, best_run = _sweep(specs, config, data, run, lane, engine)
        final = _refit(best, config, data, run_id, lane, engine)
        choice = engine.tune_threshold(best, data.validation, data.features, config)
        example = engine.example(data.validation, final.features)
        profile = engine.reference_profile(final, data, choice.threshold)
        model_info = _log_model_riding_outages(
            run_id, final, choice.threshold, example, config, profile
        )

        validation_metrics = _validation_metrics(best_run, choice)
        outcome = _outcome(
            model_info.model_id,
            validation_metrics,
            data.data_metrics,
            {"best_candidate": best.spec.name, "best_rounds": best.best_rounds},
            {
                contract.MODEL_ID_TAG: model_info.model_id,
                contract.BEST_CANDIDATE_RUN_TAG: best_run.info.run_id,
            },
        )
        lane.submit(_log_outcome, run_id, outcome)
        return (
            f"train run {run_id}: best of {len(specs)} candidates {best.spec.name}, "
            f"threshold {choice.threshold:.4f} (validation savings "
            f"{choice.expected_savings:,.0f}), validation average precision "
            f"{validation_metrics[contract.SELECTION_METRIC]:.4f}; model {model_info.model_uri}"
        )


def _sweep(
    specs: Sequence[CandidateSpec],
    config: TrainConfig,
    data: TrainingData,
    run: mlflow.ActiveRun,
    lane: LoggingLane,
    engine: Engine,
) -> tuple[FittedCandidate, Run]:
    """Fit every candidate in a child run; return the best one and its child run."""
    with _autolog(config.model.tracking_mode == "autolog", lane):
        fitted = _run_candidates(specs, config, data, run, lane, engine)
    lane.drain()  # every child run on the server before asking it for the best
    best_run = call_with_store_retry(best_candidate_run, run.info.experiment_id, run.info.run_id)
    best = fitted[contract.candidate_of(best_run)]
    logger.info("Best candidate on validation: %s (run %s)", best.spec.name, best_run.info.run_id)
    return best, best_run


def best_candidate_run(experiment_id: str, parent_run_id: str) -> Run:
    """The finished child run with the best validation average precision (earliest on ties)."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent_run_id}' "
            f"and {contract.step_filter(Step.CANDIDATE)} and attributes.status = 'FINISHED'"
        ),
        order_by=[f"metrics.{contract.SELECTION_METRIC} DESC", "attributes.start_time ASC"],
        max_results=1,
    )
    if not runs:
        raise PipelineError(f"train run {parent_run_id}: no candidate finished")
    return runs[0]


def _validation_metrics(best_run: Run, choice: ThresholdChoice) -> dict[str, float]:
    """The winner's validation metrics (from its child run) and the savings at its threshold."""
    metrics = {
        f"validation_{name}": best_run.data.metrics[f"validation_{name}"]
        for name in RANKING_METRICS
        if f"validation_{name}" in best_run.data.metrics
    }
    metrics[contract.EXPECTED_SAVINGS_METRIC] = choice.expected_savings
    return metrics


@contextlib.contextmanager
def _autolog(enabled: bool, lane: LoggingLane) -> Iterator[None]:
    """MLflow's autologging for the candidates' fits, switched off again afterwards.

    ``mlflow.autolog()`` imports modules while holding the lock that MLflow's import hook takes
    inside every import: another thread importing at that moment deadlocks with it (MLflow
    3.17). So the lane is drained first; it gets no work in the block, where the candidates log
    in-process or in processes of their own.
    """
    if not enabled:
        yield
        return
    lane.drain()
    # Models and datasets stay ours: one pyfunc model per train run, datasets with lineage.
    mlflow.autolog(log_models=False, log_datasets=False, silent=True)
    try:
        yield
    finally:
        mlflow.autolog(disable=True)


def _run_candidates(
    specs: Sequence[CandidateSpec],
    config: TrainConfig,
    data: TrainingData,
    parent: mlflow.ActiveRun,
    lane: LoggingLane,
    engine: Engine,
) -> dict[str, FittedCandidate]:
    """Fit every candidate in its own nested run, in turn or in parallel processes.

    Fitted in turn, each finished candidate's child run is sent through ``lane`` while the next
    one trains; the caller drains the lane before reading the child runs back. An engine whose
    rows cannot be pickled (Spark's) fits in turn: it spreads each fit over its executors.
    """
    jobs = [
        _CandidateJob(
            spec=spec,
            config=config,
            engine=engine,
            features=data.features,
            validation_train=data.validation_train,
            validation=data.validation,
            experiment_id=parent.info.experiment_id,
            parent_run_id=parent.info.run_id,
            tracking_uri=mlflow.get_tracking_uri(),
        )
        for spec in specs
    ]
    workers = min(config.model.parallel_candidates, len(jobs)) if engine.parallel_processes else 1
    if workers == 1 and config.model.tracking_mode == "manual":
        results = _fit_in_turn_log_behind(jobs, lane)
    elif workers == 1:  # autologging logs during the fit: the child run must be active then
        results = [job.run(in_process=True) for job in jobs]
    else:
        # Spawned processes: no state inherited by fork (MLflow's active-run stack, threads).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results = list(pool.map(_CandidateJob.run, jobs))
    return {result.spec.name: result for result in results}


def _fit_in_turn_log_behind(
    jobs: Sequence[_CandidateJob], lane: LoggingLane
) -> list[FittedCandidate]:
    """Fit the candidates one after another; queue each finished one's child run on ``lane``.

    Each child run costs a few round trips to the tracking server; sent while the next
    candidate trains, they are off the step's critical path (``bench/tracking_overhead.py``).
    The child runs get the times their fits really took. A logging failure stops the sweep
    before the next fit (``LoggingLane.submit`` raises it).
    """
    results: list[FittedCandidate] = []
    for job in jobs:
        lane.check()
        started = get_current_time_millis()
        fitted, metrics = job.fit(job.config.model)
        ended = get_current_time_millis()
        lane.submit(job.log_child_run, fitted, metrics, started, ended)
        results.append(fitted)
    return results


@dataclass
class _CandidateJob:
    """One candidate's fit and its child run; picklable, so it can run in another process."""

    spec: CandidateSpec
    config: TrainConfig
    engine: Engine
    features: tuple[str, ...]
    validation_train: Any  # the engine's frames
    validation: Any
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    child_run_id: str | None = None  # set once the child run exists (``log_child_run``)

    def run(self, in_process: bool = False) -> FittedCandidate:
        if not in_process:
            mlflow.set_tracking_uri(self.tracking_uri)
            if self.config.model.tracking_mode == "autolog":
                mlflow.autolog(log_models=False, log_datasets=False, silent=True)
        model_config = self.config.model
        if not in_process and model_config.n_jobs == 0:
            # Share the cores between the parallel processes instead of oversubscribing them.
            threads = max(1, multiprocessing.cpu_count() // model_config.parallel_candidates)
            model_config = replace(model_config, n_jobs=threads)
        # By experiment id, with the parent named: MLflow's "active experiment" is never set by
        # this package (see tracking.py), and a spawned process has no active parent run.
        with mlflow.start_run(
            experiment_id=self.experiment_id,
            parent_run_id=self.parent_run_id,
            nested=True,
            run_name=self.spec.name,
            tags=self._tags,
        ) as child:
            fitted, metrics = self.fit(model_config)
            manual = self.config.model.tracking_mode == "manual"
            _log_candidate(child.info.run_id, fitted, metrics, include_fit_details=manual)
        return fitted

    @property
    def _tags(self) -> dict[str, str]:
        return contract.candidate_tags(self.spec.name)

    def fit(self, model_config: ModelConfig) -> tuple[FittedCandidate, dict[str, float]]:
        """Fit on the validation-training window; score the validation window."""
        label = self.config.data.columns.label_column
        fitted = self.engine.fit(
            self.spec,
            model_config,
            self.features,
            self.validation_train,
            label,
            validation=self.validation,
        )
        metrics = self.engine.window_metrics(
            fitted, self.validation, self.features, self.config.data
        )
        return fitted, metrics

    def log_child_run(
        self, fitted: FittedCandidate, metrics: dict[str, float], started: int, ended: int
    ) -> None:
        """Record a finished fit as a child run, by run id (safe from any thread).

        Safe to repeat after a failure (the logging lane repeats it while a store is down):
        the child run is created once, and its values carry fixed timestamps, which MLflow's
        store does not record twice.
        """
        client = MlflowClient()
        if self.child_run_id is None:
            # The tags mlflow.start_run would add too: user, source, git commit.
            tags = resolve_tags({**self._tags, MLFLOW_PARENT_RUN_ID: self.parent_run_id})
            child = client.create_run(
                self.experiment_id, start_time=started, tags=tags, run_name=self.spec.name
            )
            self.child_run_id = child.info.run_id
        values, params = _candidate_values(fitted, metrics, ended, include_fit_details=True)
        _log_in_batches(self.child_run_id, values, params)
        client.set_terminated(self.child_run_id, end_time=ended)


def _log_candidate(
    run_id: str, fitted: FittedCandidate, metrics: dict[str, float], include_fit_details: bool
) -> None:
    """Log a candidate's results in as few requests as possible (one per 1000 values)."""
    values, params = _candidate_values(
        fitted, metrics, get_current_time_millis(), include_fit_details
    )
    _log_in_batches(run_id, values, params)


def _candidate_values(
    fitted: FittedCandidate, metrics: dict[str, float], timestamp: int, include_fit_details: bool
) -> tuple[list[Metric], list[Param]]:
    """A candidate's metrics and parameters.

    With autologging on, MLflow has already logged the hyperparameters and the per-round
    curves; the validation metrics the parent selects on are logged in both modes.
    """
    values = [Metric(f"validation_{key}", value, timestamp, 0) for key, value in metrics.items()]
    params = [Param("model_kind", fitted.spec.kind)]
    if fitted.best_rounds is not None:
        params.append(Param("best_rounds", str(fitted.best_rounds)))
    if include_fit_details:
        params += [Param(key, str(value)) for key, value in fitted.params.items()]
        values += _curve_metrics(fitted.curves, timestamp)
    return values, params


def _log_in_batches(run_id: str, metrics: Sequence[Metric], params: Sequence[Param] = ()) -> None:
    """Log ``metrics`` (and ``params``) with as few requests as MLflow allows."""
    client = MlflowClient()
    for start in range(0, max(len(metrics), 1), LOG_BATCH_LIMIT):
        client.log_batch(
            run_id,
            metrics=metrics[start : start + LOG_BATCH_LIMIT],
            params=list(params) if start == 0 else [],
        )


def _curve_metrics(curves: dict[str, list[float]], timestamp: int) -> list[Metric]:
    return [
        Metric(name, value, timestamp, step)
        for name, values in curves.items()
        for step, value in enumerate(values, start=1)
    ]


def _refit(
    best: FittedCandidate,
    config: TrainConfig,
    data: TrainingData,
    run_id: str,
    lane: LoggingLane,
    engine: Engine,
) -> Scorer:
    """Refit the winner on the training window; queue its checkpoints and training curve."""
    callbacks = []
    every = config.model.checkpoint_every
    checkpoints = lane.scratch_dir()
    if best.spec.kind == "xgboost" and every:
        from xgboost.callback import TrainingCheckPoint

        callbacks.append(TrainingCheckPoint(str(checkpoints), name="booster", interval=every))
    final = engine.fit(
        best.spec,
        config.model,
        data.features,
        data.training,
        config.data.columns.label_column,
        rounds=best.best_rounds,
        callbacks=callbacks,
    )
    if any(checkpoints.iterdir()):
        directory = contract.CHECKPOINTS_ARTIFACT_DIR
        lane.submit(MlflowClient().log_artifacts, run_id, str(checkpoints), directory)
    curves = {name: values for name, values in final.curves.items() if name.startswith("train_")}
    if curves:
        lane.submit(_log_in_batches, run_id, _curve_metrics(curves, get_current_time_millis()))
    return Scorer.from_fitted(final, data.features)


def _outcome(
    model_id: str,
    model_metrics: dict[str, float],
    data_metrics: dict[str, float],
    params: dict[str, object],
    tags: dict[str, str],
) -> dict[str, list]:
    """The train run's results, as one ``log_batch`` (built once: repeating it is harmless).

    The data metrics come after the model on purpose: they describe the data, not the model,
    and ``log_model`` links every metric the run has at that time to the model (fetching each
    one's history to do so).
    """
    now = get_current_time_millis()
    return {
        "metrics": [
            *(
                Metric(key, value, now, 0, model_id=model_id)
                for key, value in model_metrics.items()
            ),
            *(Metric(key, float(value), now, 0) for key, value in data_metrics.items()),
        ],
        "params": [Param(key, str(value)) for key, value in params.items()],
        "tags": [RunTag(key, value) for key, value in tags.items()],
    }


def _log_outcome(run_id: str, outcome: dict[str, list]) -> None:
    MlflowClient().log_batch(run_id, **outcome)


def _log_lineage(run_id: str, data: TrainingData, config: TrainConfig, engine: Engine) -> None:
    """Record what the model was trained on: the recipe to rebuild it, dates, digests, datasets.

    Logged by run id, from the step's logging lane (repeating it is harmless).
    """
    split = data.split
    contract.write_data_recipe(run_id, config.data, config.split)
    params = {
        contract.DATA_SOURCE_PARAM: data.source,
        contract.DATA_FINGERPRINT_PARAM: data.fingerprint,
        contract.RESOLVED_TRAIN_START_PARAM: split.text(split.train.start),
        "n_transactions": data.n_transactions,
        **split.describe(),
    }
    MlflowClient().log_batch(
        run_id, params=[Param(key, str(value)) for key, value in params.items()]
    )
    datasets = engine.datasets(data, config.data.columns.label_column)
    if datasets:
        log_datasets(run_id, datasets)


def _log_model_riding_outages(
    run_id: str,
    scorer: Scorer,
    threshold: float,
    example: pd.DataFrame,
    config: TrainConfig,
    profile: ReferenceProfile | None = None,
) -> ModelInfo:
    """``_log_model``, repeated while a store is down; the attempts that failed are deleted.

    An attempt cut off by an outage leaves a logged model that never became READY (and maybe
    part of its files): once an attempt succeeds, those are removed (``delete_failed_models``).
    """
    attempts = 0

    def attempt() -> ModelInfo:
        nonlocal attempts
        attempts += 1
        return _log_model(scorer, threshold, example, config, profile)

    info = call_with_store_retry(attempt)
    if attempts > 1:
        client = MlflowClient()
        call_with_store_retry(delete_failed_models, client, client.get_run(run_id))
    return info


def _log_model(
    scorer: Scorer,
    threshold: float,
    example: pd.DataFrame,
    config: TrainConfig,
    profile: ReferenceProfile | None = None,
) -> ModelInfo:
    """Log ``scorer`` as the run's pyfunc model, ``threshold`` inside; ``example``: a few
    validation rows of its features, as doubles; ``profile``: the monitor's reference, saved
    among the model's artifacts so that it travels with every registered version."""
    with tempfile.TemporaryDirectory() as scratch:
        estimator_path = scorer.save(Path(scratch))
        artifacts = {ESTIMATOR_ARTIFACT: str(estimator_path)}
        if profile is not None:
            profile_path = Path(scratch) / contract.REFERENCE_PROFILE_FILE
            profile_path.write_text(json.dumps(profile.to_dict()))
            artifacts[contract.REFERENCE_PROFILE_ARTIFACT] = str(profile_path)
        return mlflow.pyfunc.log_model(
            name=contract.MODEL_NAME_IN_RUN,
            python_model=str(MODEL_CODE),
            artifacts=artifacts,
            code_paths=[str(PACKAGE_DIR)],
            model_config=model_config(
                scorer.kind,
                scorer.features,
                threshold,
                engineered=config.data.engineered_features,
                delay_days=config.split.delay_days,
                feature_windows=config.data.feature_windows,
                review_cost=config.cost.review_cost,
            ),
            signature=model_signature(scorer.features),
            input_example=example,
            # Explicit pins: inferring requirements costs seconds and can miss xgboost.
            pip_requirements=model_requirements(scorer.kind),
        )
