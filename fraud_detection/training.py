"""The train step: data -> features -> time split -> candidates on validation -> one logged model.

Each candidate is fitted on the validation-training window and scored on the validation window in
a nested child run; the best by average precision is refitted on the training window and logged
as the run's only model, with the decision threshold tuned on validation data inside it.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models.model import ModelInfo

from fraud_detection.cli import flatten
from fraud_detection.config import DataConfig, SplitConfig, TrainConfig
from fraud_detection.data import Transactions, load_transactions, require_both_classes
from fraud_detection.features import add_features
from fraud_detection.metrics import best_f1_threshold, fraud_metrics
from fraud_detection.model import (
    ESTIMATOR_ARTIFACT,
    MODEL_CODE,
    PACKAGE_DIR,
    Scorer,
    fit_scorer,
    model_config,
    model_requirements,
    model_signature,
)
from fraud_detection.schema import DAY_COLUMN
from fraud_detection.split import TimeSplit, evaluation_rows, plan_split
from fraud_detection.tracking import STEP_TAG, pandas_dataset, step_run

logger = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "model"
MODEL_ID_TAG = "fraud.model_id"
DATA_FINGERPRINT_PARAM = "data_fingerprint"
RESOLVED_TRAIN_START_PARAM = "resolved_train_start"
DATA_RECIPE_ARTIFACT = "data_recipe.json"
SELECTION_METRIC = "average_precision"


@dataclass(frozen=True)
class PreparedData:
    """Everything the train and evaluate steps derive from the raw transactions."""

    transactions: Transactions
    table: pd.DataFrame  # raw columns + model features, sorted by time
    split: TimeSplit
    features: tuple[str, ...]


def prepare_data(data_config: DataConfig, split_config: SplitConfig) -> PreparedData:
    """Load, check and featurise the transactions, and place the time split on them."""
    transactions = load_transactions(data_config)
    columns = data_config.columns
    table = transactions.table
    if data_config.engineered_features:
        table = add_features(table, columns, delay_days=split_config.delay_days)
    split = plan_split(table, columns.timestamp_column, split_config)
    return PreparedData(transactions, table, split, data_config.model_features)


def evaluation_window(prepared: PreparedData, data_config: DataConfig, name: str) -> pd.DataFrame:
    """Rows of the ``validation`` or ``test`` window, known-compromised cards removed."""
    split = prepared.split
    window, history_start = {
        "validation": (split.validation, split.validation_train.start),
        "test": (split.test, split.train.start),
    }[name]
    customer = data_config.columns.customer_column
    return evaluation_rows(
        prepared.table,
        window,
        history_start,
        split.delay_days,
        customer if customer in prepared.table.columns else None,
        data_config.columns.label_column,
    )


def window_metrics(
    frame: pd.DataFrame, scores: np.ndarray, data_config: DataConfig
) -> dict[str, float]:
    """Fraud metrics of ``scores`` on ``frame`` (card precision when cards are known)."""
    has_cards = data_config.columns.customer_column in frame.columns
    return fraud_metrics(
        frame[data_config.columns.label_column],
        scores,
        days=frame[DAY_COLUMN] if has_cards else None,
        customers=frame[data_config.columns.customer_column] if has_cards else None,
    )


def train(config: TrainConfig) -> str:
    """Run the train step; return a one-paragraph report."""
    with step_run("train", config.tracking.experiment_name, flatten(config), True) as run:
        prepared = prepare_data(config.data, config.split)
        label = config.data.columns.label_column
        validation_train = prepared.split.validation_train.select(prepared.table)
        validation = evaluation_window(prepared, config.data, "validation")
        training = prepared.split.train.select(prepared.table)
        for name, frame in (
            ("validation training window", validation_train),
            ("validation window", validation),
            ("training window", training),
        ):
            require_both_classes(frame[label], f"{prepared.transactions.source}, {name}")
        _log_lineage(prepared, config.data, config.split, training, validation)

        candidates = {
            kind: _fit_candidate(kind, config, prepared.features, validation_train, validation)
            for kind in config.model.kinds
        }
        best_kind = max(candidates, key=lambda kind: candidates[kind][1][SELECTION_METRIC])
        validation_scores, validation_metrics = candidates[best_kind]
        threshold = best_f1_threshold(validation[label], validation_scores)
        logger.info("Best candidate on validation: %s %s", best_kind, validation_metrics)

        final = fit_scorer(best_kind, config.model, prepared.features, training, label)
        model_info = _log_model(final, threshold, validation, config)
        mlflow.log_metrics(
            {f"validation_{key}": value for key, value in validation_metrics.items()},
            model_id=model_info.model_id,
        )
        mlflow.set_tag(MODEL_ID_TAG, model_info.model_id)
        return (
            f"train run {run.info.run_id}: {best_kind} (threshold {threshold:.4f}), validation "
            + ", ".join(f"{key} {value:.4f}" for key, value in validation_metrics.items())
            + f"; model {model_info.model_uri}"
        )


def _log_lineage(
    prepared: PreparedData,
    data_config: DataConfig,
    split_config: SplitConfig,
    training: pd.DataFrame,
    validation: pd.DataFrame,
) -> None:
    """Record what the model was trained on: the recipe to rebuild it, dates, digests, datasets.

    ``data_recipe.json`` holds the exact typed values; the run's parameters are for people
    (``mlflow run`` logs its own as shell-quoted strings, ``''`` for an empty value).
    """
    split = prepared.split
    table = prepared.table
    label = data_config.columns.label_column
    mlflow.log_dict(flatten(data_config) | flatten(split_config), DATA_RECIPE_ARTIFACT)
    mlflow.log_params(
        {
            "data_source": prepared.transactions.source,
            DATA_FINGERPRINT_PARAM: prepared.transactions.fingerprint,
            RESOLVED_TRAIN_START_PARAM: split.date(split.train.start),
            "n_transactions": len(table),
            **split.describe(),
        }
    )
    mlflow.log_metrics(
        {
            "data_fraud_rate": float(table[label].mean()),
            "training_rows": len(training),
            "training_fraud_rate": float(training[label].mean()),
            "validation_rows": len(validation),
        }
    )
    columns = [*prepared.features, label]
    for context, frame in (("training", training), ("validation", validation)):
        dataset = pandas_dataset(
            frame[columns],
            prepared.transactions.source,
            name=f"transactions-{context}",
            label=label,
        )
        mlflow.log_input(dataset, context=context)


def _fit_candidate(
    kind: str,
    config: TrainConfig,
    features: tuple[str, ...],
    validation_train: pd.DataFrame,
    validation: pd.DataFrame,
) -> tuple[np.ndarray, dict[str, float]]:
    """Fit one candidate in a nested run; return its validation scores and metrics."""
    label = config.data.columns.label_column
    parent = mlflow.active_run()
    # By experiment id: without it MLflow would use its "active experiment", which this
    # process never sets (see tracking.py), and the child would land in Default.
    with mlflow.start_run(
        run_name=kind,
        nested=True,
        experiment_id=parent.info.experiment_id,
        tags={STEP_TAG: "candidate"},
    ):
        scorer = fit_scorer(kind, config.model, features, validation_train, label)
        scores = scorer.predict_proba(validation)
        metrics = window_metrics(validation, scores, config.data)
        mlflow.log_params({"model_kind": kind, **scorer.params})
        mlflow.log_metrics({f"validation_{key}": value for key, value in metrics.items()})
    return scores, metrics


def _log_model(
    scorer: Scorer, threshold: float, validation: pd.DataFrame, config: TrainConfig
) -> ModelInfo:
    example = validation.loc[:, list(scorer.features)].head(5).astype(np.float64)
    with tempfile.TemporaryDirectory() as scratch:
        estimator_path = scorer.save(Path(scratch))
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=str(MODEL_CODE),
            artifacts={ESTIMATOR_ARTIFACT: str(estimator_path)},
            code_paths=[str(PACKAGE_DIR)],
            model_config=model_config(
                scorer.kind,
                scorer.features,
                threshold,
                engineered=config.data.engineered_features,
                delay_days=config.split.delay_days,
            ),
            signature=model_signature(scorer.features),
            input_example=example,
            # Explicit pins: inferring requirements costs seconds and can miss xgboost.
            pip_requirements=model_requirements(scorer.kind),
        )
