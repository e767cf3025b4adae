"""Batch scoring with a registered model: a file of transactions in, the same rows scored out.

The model URI is any MLflow model URI: ``models:/fraud-detector@champion`` (the default),
``models:/fraud-detector@challenger``, ``models:/fraud-detector/3`` or ``models:/<model id>``.
Raw transactions get their features from the same code as training, with the label delay the
model was trained with (read from the model itself); a file that already holds the model's
feature columns is scored as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from fraud_detection.config import CHAMPION_ALIAS, DEFAULT_MODEL_NAME, ConfigError, DataConfig
from fraud_detection.data import CSV_SUFFIXES, PARQUET_SUFFIXES, prepare_transactions, read_table
from fraud_detection.errors import DataError, LineageError
from fraud_detection.features import add_features
from fraud_detection.model import DECISION_COLUMN
from fraud_detection.schema import DAY_COLUMN, TransactionColumns

logger = logging.getLogger(__name__)

_ROW = "__row__"


@dataclass(frozen=True)
class BatchConfig:
    model_uri: str = field(
        default=f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}",
        metadata={"help": "Model to score with: models:/<name>@<alias>, models:/<name>/<version>."},
    )
    input: str = field(
        default="", metadata={"help": "CSV or Parquet file of transactions (path or URI)."}
    )
    output: str = field(
        default="", metadata={"help": "Where to write the scored rows (.csv or .parquet)."}
    )
    columns: TransactionColumns = field(default_factory=TransactionColumns)

    def __post_init__(self) -> None:
        if not self.input:
            raise ConfigError("--input is required: the CSV or Parquet file to score")
        if not self.output.lower().endswith(CSV_SUFFIXES + PARQUET_SUFFIXES):
            raise ConfigError(
                f"--output must end with .csv or .parquet, got {self.output or 'nothing'!r}"
            )


def load_model(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    """Load a pyfunc model, turning MLflow's errors into one clear line."""
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except MlflowException as error:
        raise LineageError(f"cannot load model {model_uri}: {error.message}") from error


def model_inputs(
    model: mlflow.pyfunc.PyFuncModel,
    table: pd.DataFrame,
    columns: TransactionColumns,
    source: str,
) -> pd.DataFrame:
    """The model's feature columns for every row of ``table``, in the table's row order."""
    settings = model.model_config
    features = list(settings["features"])
    if set(features) <= set(table.columns):
        return table[features]
    if not settings.get("engineered_features", True):
        missing = sorted(set(features) - set(table.columns))
        raise DataError(f"{source}: missing feature column(s) {', '.join(missing)}")
    raw = table.copy()
    raw[_ROW] = np.arange(len(raw))
    if columns.label_column not in raw.columns:
        # Labels of past transactions feed the terminal fraud rates; without any, those
        # features are 0 and the model scores on customer behaviour alone.
        logger.warning("No %s column: terminal risk features will be 0", columns.label_column)
        raw[columns.label_column] = np.nan
    prepared = prepare_transactions(
        raw, DataConfig(columns=columns), source=source, require_labels=False
    )
    featured = add_features(prepared, columns, delay_days=int(settings["delay_days"]))
    return featured.sort_values(_ROW).reset_index(drop=True)[features]


def score_batch(config: BatchConfig) -> str:
    """Score ``config.input`` with ``config.model_uri`` into ``config.output``."""
    model = load_model(config.model_uri)
    table = read_table(config.input)
    if table.empty:
        raise DataError(f"{config.input}: no rows")
    inputs = model_inputs(model, table, config.columns, config.input)
    predictions = model.predict(inputs)
    scored = pd.concat(
        [table.drop(columns=[DAY_COLUMN], errors="ignore"), predictions.set_index(table.index)],
        axis=1,
    )
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.name.lower().endswith(PARQUET_SUFFIXES):
        scored.to_parquet(output, index=False)
    else:
        scored.to_csv(output, index=False)
    alerts = int(predictions[DECISION_COLUMN].sum())
    return f"scored {len(scored)} transactions with {config.model_uri}: {alerts} alerts -> {output}"
