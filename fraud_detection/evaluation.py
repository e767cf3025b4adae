"""The evaluate step: rebuild the test period of a train run, score it, compare with @champion.

The train run's logged parameters are the recipe: the same data source (checked against its
fingerprint), the same features and split. The current champion is scored on exactly the same
rows, so that ``register`` compares like with like.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fraud_detection.cli import build_config, flatten
from fraud_detection.config import CHAMPION_ALIAS, DataConfig, EvaluateConfig, SplitConfig
from fraud_detection.data import require_both_classes
from fraud_detection.errors import LineageError
from fraud_detection.model import DECISION_COLUMN, PROBABILITY_COLUMN
from fraud_detection.tracking import find_step_run, pandas_dataset, step_run
from fraud_detection.training import (
    DATA_FINGERPRINT_PARAM,
    DATA_RECIPE_ARTIFACT,
    MODEL_ID_TAG,
    RESOLVED_TRAIN_START_PARAM,
    evaluation_window,
    prepare_data,
    window_metrics,
)

logger = logging.getLogger(__name__)

TRAIN_RUN_TAG = "fraud.train_run_id"
CHAMPION_VERSION_TAG = "fraud.champion_version"
CHAMPION_COMPARISON_TAG = "fraud.champion_comparison"
TEST_PREFIX = "test_"
CHAMPION_PREFIX = "champion_test_"


@dataclass(frozen=True)
class Scored:
    """A model's output on the test rows and its metrics."""

    probabilities: np.ndarray
    metrics: dict[str, float]


def train_run_configs(train_run: Run) -> tuple[DataConfig, SplitConfig]:
    """The data and split a train run used, from its ``data_recipe.json`` artifact."""
    try:
        recipe = mlflow.artifacts.load_dict(f"runs:/{train_run.info.run_id}/{DATA_RECIPE_ARTIFACT}")
    except MlflowException as error:
        raise LineageError(
            f"train run {train_run.info.run_id} has no {DATA_RECIPE_ARTIFACT} ({error.message})"
        ) from error
    # Pin the start the train step resolved, in case it was chosen from the data ("latest").
    recipe["train_start"] = train_run.data.params[RESOLVED_TRAIN_START_PARAM]
    return build_config(DataConfig, recipe), build_config(SplitConfig, recipe)


def evaluate(config: EvaluateConfig) -> str:
    """Run the evaluate step; return a one-paragraph report."""
    with step_run("evaluate", config.tracking.experiment_name, flatten(config)) as run:
        train_run = find_step_run(config.tracking.experiment_name, "train", config.run_id)
        model_id = train_run.data.tags.get(MODEL_ID_TAG)
        if not model_id:
            raise LineageError(f"train run {train_run.info.run_id} has no {MODEL_ID_TAG} tag")
        mlflow.set_tags({TRAIN_RUN_TAG: train_run.info.run_id, MODEL_ID_TAG: model_id})

        data_config, split_config = train_run_configs(train_run)
        prepared = prepare_data(data_config, split_config)
        expected = train_run.data.params.get(DATA_FINGERPRINT_PARAM)
        if expected != prepared.transactions.fingerprint:
            raise LineageError(
                f"{prepared.transactions.source}: the data changed since train run "
                f"{train_run.info.run_id} (fingerprint {prepared.transactions.fingerprint}, "
                f"trained on {expected}); evaluate needs the same data"
            )
        test = evaluation_window(prepared, data_config, "test")
        label = data_config.columns.label_column
        require_both_classes(test[label], f"{prepared.transactions.source}, test window")
        dataset = pandas_dataset(
            test[[*prepared.features, label]],
            prepared.transactions.source,
            name="transactions-test",
            label=label,
        )
        mlflow.log_input(dataset, context="test")

        candidate = _score(f"models:/{model_id}", test, data_config)
        mlflow.log_metrics(
            {TEST_PREFIX + key: value for key, value in candidate.metrics.items()},
            model_id=model_id,
            dataset=dataset,
        )
        champion = _score_champion(config.model_name, test, data_config)
        _log_curves(test[label].to_numpy(), candidate, champion)
        return (
            f"evaluate run {run.info.run_id} of train run {train_run.info.run_id}: "
            + ", ".join(f"{key} {value:.4f}" for key, value in candidate.metrics.items())
            + (f"; champion {champion[0]}" if champion else "; no champion yet")
        )


def _score(model_uri: str, test: pd.DataFrame, data_config: DataConfig) -> Scored:
    model = mlflow.pyfunc.load_model(model_uri)
    output = model.predict(test)
    probabilities = output[PROBABILITY_COLUMN].to_numpy()
    metrics = window_metrics(test, probabilities, data_config)
    labels = test[data_config.columns.label_column].to_numpy()
    decisions = output[DECISION_COLUMN].to_numpy()
    true_alerts = int(((decisions == 1) & (labels == 1)).sum())
    alerts = int(decisions.sum())
    metrics["precision_at_threshold"] = true_alerts / alerts if alerts else 0.0
    metrics["recall_at_threshold"] = true_alerts / max(int(labels.sum()), 1)
    metrics["alert_rate"] = alerts / len(labels)
    return Scored(probabilities, metrics)


def _score_champion(
    model_name: str, test: pd.DataFrame, data_config: DataConfig
) -> tuple[str, Scored] | None:
    """Score the current @champion on the same rows; record why when it cannot be done."""
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException:
        mlflow.set_tag(CHAMPION_COMPARISON_TAG, "no champion")
        logger.info("No %s@%s yet: nothing to compare with", model_name, CHAMPION_ALIAS)
        return None
    try:
        scored = _score(f"models:/{model_name}/{version.version}", test, data_config)
    except MlflowException as error:
        # The champion may expect other features than this data has: no comparison is
        # possible, and register will refuse to promote on a missing comparison.
        mlflow.set_tags(
            {
                CHAMPION_VERSION_TAG: str(version.version),
                CHAMPION_COMPARISON_TAG: f"unavailable: {error.message[:400]}",
            }
        )
        logger.warning("Champion version %s cannot score these rows: %s", version.version, error)
        return None
    mlflow.set_tags({CHAMPION_VERSION_TAG: str(version.version), CHAMPION_COMPARISON_TAG: "scored"})
    mlflow.log_metrics({CHAMPION_PREFIX + key: value for key, value in scored.metrics.items()})
    return f"version {version.version}", scored


def _log_curves(labels: np.ndarray, candidate: Scored, champion: tuple[str, Scored] | None) -> None:
    """Log precision-recall and ROC curves, the champion's beside the candidate's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    curves = [("candidate", candidate)]
    if champion is not None:
        curves.append((f"champion ({champion[0]})", champion[1]))
    for display, file_name in (
        (PrecisionRecallDisplay, "precision_recall_curve.png"),
        (RocCurveDisplay, "roc_curve.png"),
    ):
        figure, axes = plt.subplots(figsize=(6, 5))
        for name, scored in curves:
            display.from_predictions(labels, scored.probabilities, name=name, ax=axes)
        axes.set_title(f"Test period: {file_name.removesuffix('.png').replace('_', ' ')}")
        mlflow.log_figure(figure, f"plots/{file_name}")
        plt.close(figure)
