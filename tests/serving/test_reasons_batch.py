"""``serve.py batch --reasons k`` writes the reason codes the logged pyfunc answers."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from fraud_detection.cli import EXIT_BAD_PARAMETERS, main_with_commands
from fraud_detection.data.features import FEATURE_COLUMNS, add_features
from fraud_detection.modelling.pyfunc import (
    DECISION_COLUMN,
    PROBABILITY_COLUMN,
    reason_column_names,
)
from serve import COMMANDS
from tests.support.pipeline import MODEL_NAME, tiny_simulation


def _serve(*args: str) -> int:
    return main_with_commands(COMMANDS, ["batch", *args], "serve")


@pytest.fixture(scope="module")
def featured() -> pd.DataFrame:
    rows = add_features(tiny_simulation(seed=8, n_days=35))
    return rows[["TRANSACTION_ID", *FEATURE_COLUMNS]].tail(300).reset_index(drop=True)


@pytest.mark.parametrize("version", ["1", "2"])  # logistic regression, XGBoost
@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_batch_writes_the_pyfuncs_reasons(version, suffix, registry, featured, tmp_path):
    source, output = tmp_path / "featured.parquet", tmp_path / f"scored.{suffix}"
    featured.to_parquet(source, index=False)
    uri = f"models:/{MODEL_NAME}/{version}"
    arguments = ["--model-uri", uri, "--input", str(source), "--output", str(output)]
    assert _serve(*arguments, "--reasons", "3", "--chunk-rows", "120") == 0
    scored = pd.read_csv(output) if suffix == "csv" else pd.read_parquet(output)
    outputs = [PROBABILITY_COLUMN, DECISION_COLUMN, *reason_column_names(3)]
    assert list(scored.columns) == [*featured.columns, *outputs]
    expected = mlflow.pyfunc.load_model(uri).predict(
        featured[list(FEATURE_COLUMNS)], params={"reasons": 3}
    )
    for name in outputs:
        if expected[name].dtype.kind in "fi":
            # CSV writes floats with repr: the same doubles read back.
            np.testing.assert_allclose(scored[name], expected[name], rtol=1e-12, atol=0)
        else:
            assert scored[name].tolist() == expected[name].tolist()


def test_more_reasons_than_features_is_refused_before_scoring(registry, featured, tmp_path):
    source, output = tmp_path / "featured.parquet", tmp_path / "scored.csv"
    featured.to_parquet(source, index=False)
    too_many = str(len(FEATURE_COLUMNS) + 1)
    status = _serve("--input", str(source), "--output", str(output), "--reasons", too_many)
    assert status == EXIT_BAD_PARAMETERS
    assert not output.exists()


def test_negative_reasons_are_refused(tmp_path, caplog):
    status = _serve("--input", "x.csv", "--output", str(tmp_path / "o.csv"), "--reasons", "-1")
    assert status == EXIT_BAD_PARAMETERS
    assert "--reasons must be 0 or more, got -1" in caplog.text
