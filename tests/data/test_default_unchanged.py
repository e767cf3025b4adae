"""The default data gives exactly the features, names and split it gave before windows became
durations: the model's signature and every published figure depend on them.

The digests below were taken from the code before durations (commit 8e5d547) on the default
run's data (``DataConfig()``: 5,000 cards, 10,000 terminals, 90 days, seed 42; 879,618
transactions), and pin every bit of every feature value and the rows of every window. If one
changes on purpose, the default run's figures (bench/results/default_run.json) change with it.
"""

from __future__ import annotations

import pytest

from fraud_detection.config import DataConfig, SplitConfig
from fraud_detection.data.features import FEATURE_COLUMNS, model_features
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.data.windows import (
    PreparedData,
    evaluation_window,
    prepare_data,
    training_windows,
)
from tests.support.digest import frame_digest

# The model's input columns, in order, as every registered model of the template has them.
DEFAULT_FEATURE_NAMES = (
    "TX_AMOUNT",
    "TX_DURING_WEEKEND",
    "TX_DURING_NIGHT",
    "CUSTOMER_ID_NB_TX_1DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_7DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_30DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW",
    "TERMINAL_ID_NB_TX_1DAY_WINDOW",
    "TERMINAL_ID_RISK_1DAY_WINDOW",
    "TERMINAL_ID_NB_TX_7DAY_WINDOW",
    "TERMINAL_ID_RISK_7DAY_WINDOW",
    "TERMINAL_ID_NB_TX_30DAY_WINDOW",
    "TERMINAL_ID_RISK_30DAY_WINDOW",
    "CUSTOMER_ID_AMOUNT_RATIO_1DAY_WINDOW",
    "CUSTOMER_ID_AMOUNT_RATIO_7DAY_WINDOW",
    "CUSTOMER_ID_AMOUNT_RATIO_30DAY_WINDOW",
)
DEFAULT_WINDOWS = {
    "validation_train_first_day": "2018-05-26",
    "validation_train_last_day": "2018-06-01",
    "validation_first_day": "2018-06-09",
    "validation_last_day": "2018-06-15",
    "train_first_day": "2018-06-09",
    "train_last_day": "2018-06-15",
    "test_first_day": "2018-06-23",
    "test_last_day": "2018-06-29",
}
# (rows, digest) of the transaction ids of each window (evaluated windows: with their days).
DEFAULT_ROWS = {
    "validation_train": (68_440, "2f01e43c0e1c468c"),
    "training": (68_192, "d057baf77a7ac5d8"),
    "validation": (58_945, "a1460ae48a6d579e"),
    "test": (58_432, "c1c6fed9edf6bed9"),
}
DEFAULT_FEATURES_DIGEST = "5ebe7fc72fdeead7"  # TRANSACTION_ID and the 18 features, every row


@pytest.fixture(scope="module")
def default_data() -> PreparedData:
    return prepare_data(DataConfig(), SplitConfig())


def test_the_default_feature_names_are_those_of_every_model():
    assert FEATURE_COLUMNS == DEFAULT_FEATURE_NAMES
    assert model_features(DataConfig()) == DEFAULT_FEATURE_NAMES


def test_the_default_features_are_bit_for_bit_those_of_before(default_data):
    assert len(default_data.table) == 879_618
    table = default_data.table[["TRANSACTION_ID", *FEATURE_COLUMNS]]
    assert frame_digest(table) == DEFAULT_FEATURES_DIGEST


def test_the_default_split_is_the_one_of_before(default_data):
    assert default_data.split.describe() == DEFAULT_WINDOWS
    data = DataConfig()
    windows = training_windows(default_data, data)
    found = {
        "validation_train": windows.validation_train[["TRANSACTION_ID"]],
        "training": windows.training[["TRANSACTION_ID"]],
        **{
            name: evaluation_window(default_data, data, name)[["TRANSACTION_ID", DAY_COLUMN]]
            for name in ("validation", "test")
        },
    }
    assert {name: (len(rows), frame_digest(rows)) for name, rows in found.items()} == DEFAULT_ROWS
