"""MLflow datasets of the step's frames: MLflow's schema, sooner."""

import numpy as np
import pandas as pd
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.pandas_dataset import PandasDataset

from fraud_detection.hardening.datasets import FastSchemaPandasDataset


def test_datasets_get_mlflows_schema_without_its_per_value_loop():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "amount": rng.random(3_000),
            "count": rng.integers(0, 5, 3_000),
            "flag": rng.integers(0, 2, 3_000).astype(bool),
            "ratio": rng.random(3_000).astype(np.float32),
            "gap": rng.random(3_000),
        }
    )
    frame.loc[2_500, "gap"] = np.nan  # beyond the type sample: still found optional
    source = CodeDatasetSource({"generator": "test"})
    ours = FastSchemaPandasDataset(frame, source, name="t", digest="d").schema
    assert ours == PandasDataset(frame, source, name="t", digest="d").schema
    assert [spec.required for spec in ours.inputs] == [True, True, True, True, False]
