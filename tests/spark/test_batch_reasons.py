"""``serve.py batch --engine spark --reasons k``: the reason codes of the pandas scorer, passed
to the pyfunc by ``spark_udf(params=...)``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark", reason='the Spark engine needs PySpark: pip install -e ".[spark]"')

from fraud_detection.config import BatchConfig
from fraud_detection.modelling.pyfunc import reason_column_names
from fraud_detection.serving.batch import score_file
from fraud_detection.serving.follower import ServedModel, load_served_model
from fraud_detection.spark.batch import score_parquet
from tests.support.pipeline import SMALL_DATA
from tests.support.small_model import SmallModel, small_model

ID = SMALL_DATA.columns.id_column


@pytest.fixture(scope="module")
def model() -> SmallModel:
    return small_model()


@pytest.fixture
def served(model: SmallModel) -> Iterator[ServedModel]:
    loaded = load_served_model(model.log())
    yield loaded
    shutil.rmtree(loaded.directory, ignore_errors=True)


def test_spark_writes_the_pandas_scorers_reasons(spark, model, served, tmp_path):
    source = tmp_path / "featured.parquet"
    rows = model.test
    # An input column named like a reason column: kept, the reason renamed beside it.
    rows.assign(reason_bias=1.0).to_parquet(source, index=False)
    pandas_output, spark_output = tmp_path / "pandas.parquet", tmp_path / "spark.parquet"
    config = BatchConfig(
        model_uri=served.uri, input=str(source), output=str(pandas_output), reasons=3
    )
    score_file(served, config)
    score_parquet(spark, served, str(source), str(spark_output), reasons=3)
    expected, actual = pd.read_parquet(pandas_output), pd.read_parquet(spark_output)
    renamed = [
        f"predicted_{name}" if name == "reason_bias" else name for name in reason_column_names(3)
    ]
    assert list(actual.columns) == list(expected.columns)
    assert list(actual.columns[-len(renamed) :]) == renamed
    actual = actual.set_index(ID).loc[expected[ID]].reset_index()
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False)  # timestamps: us vs ns
    assert actual["reason_1_contribution"].dtype == np.float64
