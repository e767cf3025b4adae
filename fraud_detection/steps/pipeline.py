"""The ``main`` entry point: train, evaluate and register as three MLflow project runs.

Each step is launched with ``mlflow.projects.run`` so that it is a reproducible project run of
its own (parameters, git commit, environment), nested under the pipeline run. Steps hand over
through run ids only: train's run id goes to evaluate, evaluate's to register.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import ExecutionException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_ENV

from fraud_detection import contract
from fraud_detection.config import EvaluateConfig, PipelineConfig, RegisterConfig, TrainConfig
from fraud_detection.config.fields import flatten, leaves
from fraud_detection.contract import Step
from fraud_detection.errors import PipelineError
from fraud_detection.tracking import step_run

logger = logging.getLogger(__name__)

LOCAL_ENV_MANAGER = "local"


def launcher_env_manager() -> str:
    """The env manager ``mlflow run`` used for this process, so that steps use the same one.

    MLflow tags the run it launched with ``mlflow.project.env`` for virtualenv, uv and conda,
    and sets no tag for ``local``. Outside ``mlflow run`` the current environment is used.
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return LOCAL_ENV_MANAGER
    return MlflowClient().get_run(run_id).data.tags.get(MLFLOW_PROJECT_ENV, LOCAL_ENV_MANAGER)


def step_parameters(step_config: type, values: dict[str, Any]) -> dict[str, str]:
    """The subset of ``values`` that ``step_config`` accepts, as MLproject strings."""
    return {
        leaf.name: str(values[leaf.name]) for leaf in leaves(step_config) if leaf.name in values
    }


def run_pipeline(config: PipelineConfig, project_dir: Path) -> str:
    """Run train, evaluate and register in turn; return a one-paragraph report."""
    env_manager = launcher_env_manager()
    with step_run(Step.MAIN, config.tracking.experiment_name, flatten(config)) as run:
        experiment_id = run.info.experiment_id
        experiment_name = MlflowClient().get_experiment(experiment_id).name
        values = {**flatten(config), "experiment_name": experiment_name}

        def launch(entry_point: str, step_config: type, **extra: str) -> str:
            parameters = {**step_parameters(step_config, values), **extra}
            logger.info("Launching %s (env manager %s)", entry_point, env_manager)
            try:
                submitted = mlflow.projects.run(
                    str(project_dir),
                    entry_point=entry_point,
                    parameters=parameters,
                    experiment_id=experiment_id,
                    env_manager=env_manager,
                    synchronous=True,
                )
            except ExecutionException as error:
                raise PipelineError(f"the {entry_point} step failed: {error}") from error
            return submitted.run_id

        train_run_id = launch("train", TrainConfig)
        evaluate_run_id = launch("evaluate", EvaluateConfig, run_id=train_run_id)
        register_run_id = launch("register", RegisterConfig, run_id=evaluate_run_id)

        decision, reason = contract.decision_of(MlflowClient().get_run(register_run_id))
        mlflow.set_tags(
            contract.pipeline_tags(train_run_id, evaluate_run_id, register_run_id, decision)
        )
        return (
            f"pipeline run {run.info.run_id}: train {train_run_id}, evaluate {evaluate_run_id}, "
            f"register {register_run_id}: {decision} ({reason})"
        )
