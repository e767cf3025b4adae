"""The transactions of a step, featured and cut into its time windows.

Train and evaluate both start here, from the same data recipe, so both see the same rows: the
train step its validation-training, validation and training windows, evaluate its test window.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from fraud_detection.config import (
    DataConfig,
    SplitConfig,
)
from fraud_detection.data.features import (
    add_features,
    model_features,
)
from fraud_detection.data.split import (
    TimeSplit,
    evaluation_rows,
    plan_split,
)
from fraud_detection.data.transactions import (
    Transactions,
    load_transactions,
)
from fraud_detection.data.validation import require_both_classes
from fraud_detection.errors import DataError


@dataclass(frozen=True)
class PreparedData:
    """Everything the train and evaluate steps derive from the raw transactions."""

    transactions: Transactions
    table: pd.DataFrame  # raw columns + model features, sorted by time
    split: TimeSplit  # [start, end) timestamps of each window
    features: tuple[str, ...]


@dataclass(frozen=True)
class Windows:
    """The rows of each window the train step uses."""

    validation_train: pd.DataFrame
    validation: pd.DataFrame  # known-compromised cards removed
    training: pd.DataFrame


def prepare_data(data_config: DataConfig, split_config: SplitConfig) -> PreparedData:
    """Load, check and featurise the transactions, and place the time split on them."""
    transactions = load_transactions(data_config)
    columns = data_config.columns
    table = transactions.table
    warm_up = None
    if data_config.engineered_features:
        windows, delay = data_config.windows, split_config.delay_duration
        table = add_features(table, columns, delay_days=delay, windows=windows)
        warm_up = windows.longest + delay
    try:
        split = plan_split(table, columns.timestamp_column, split_config, warm_up)
    except DataError as error:
        raise DataError(f"{transactions.source}: {error}") from error
    return PreparedData(transactions, table, split, model_features(data_config))


def evaluation_window(prepared: PreparedData, data_config: DataConfig, name: str) -> pd.DataFrame:
    """Rows of the ``validation`` or ``test`` window, known-compromised cards removed."""
    return evaluation_rows(prepared.table, prepared.split, name, data_config.columns)


def training_windows(prepared: PreparedData, data_config: DataConfig) -> Windows:
    """The validation-training, validation and training rows, each checked for both classes."""
    time_column = data_config.columns.timestamp_column
    windows = Windows(
        validation_train=prepared.split.validation_train.select(prepared.table, time_column),
        validation=evaluation_window(prepared, data_config, "validation"),
        training=prepared.split.train.select(prepared.table, time_column),
    )
    for name, frame in vars(windows).items():
        where = f"{prepared.transactions.source}, {name.replace('_', ' ')} window"
        require_both_classes(frame[data_config.columns.label_column], where)
    return windows
