"""Batch scoring on Spark writes what the pandas batch scorer writes: same rows, same columns,
same scores."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark", reason='the Spark engine needs PySpark: pip install -e ".[spark]"')

from pyspark.sql import DataFrame

from fraud_detection.config import BatchConfig, TransactionColumns
from fraud_detection.data.features import add_features
from fraud_detection.errors import DataError
from fraud_detection.modelling.pyfunc import DECISION_COLUMN, PROBABILITY_COLUMN
from fraud_detection.serving.batch import score_file
from fraud_detection.serving.follower import ServedModel, load_served_model
from fraud_detection.spark.batch import score_batch, score_parquet
from tests.support.pipeline import MODEL_NAME, SMALL_DATA, tiny_simulation
from tests.support.small_model import SmallModel, small_model

ID = SMALL_DATA.columns.id_column


@pytest.fixture(scope="module")
def model() -> SmallModel:
    return small_model()


@pytest.fixture
def served(model) -> Iterator[ServedModel]:
    """The model, logged in this test's store and loaded as the batch scorers load it."""
    loaded = load_served_model(model.log())
    yield loaded
    shutil.rmtree(loaded.directory, ignore_errors=True)


def test_a_featured_dataset_gets_the_pandas_scorers_columns_and_scores(
    spark, served, model, tmp_path
):
    source = tmp_path / "featured.parquet"
    # A label column named like the model's decision: kept, the decision renamed beside it.
    rows = model.test.assign(**{DECISION_COLUMN: model.test[SMALL_DATA.columns.label_column]})
    rows.to_parquet(source, index=False)

    pandas_output, spark_output = tmp_path / "pandas.parquet", tmp_path / "spark.parquet"
    pandas_report = score_file(
        served, BatchConfig(model_uri=served.uri, input=str(source), output=str(pandas_output))
    )
    spark_report = score_parquet(spark, served, str(source), str(spark_output))

    assert spark_output.is_dir()  # a Parquet dataset, written by the executors
    expected, actual = pd.read_parquet(pandas_output), pd.read_parquet(spark_output)
    assert list(actual.columns) == list(expected.columns)
    assert list(actual.columns[-2:]) == [PROBABILITY_COLUMN, f"predicted_{DECISION_COLUMN}"]
    actual = actual.set_index(ID).loc[expected[ID]].reset_index()
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False)  # timestamps: us vs ns
    assert actual[PROBABILITY_COLUMN].dtype == np.float64
    assert actual[f"predicted_{DECISION_COLUMN}"].dtype == np.int64
    assert (spark_report.rows, spark_report.alerts) == (pandas_report.rows, pandas_report.alerts)
    assert spark_report.alerts > 0


def pandas_features_on_spark(
    frame: DataFrame, columns: TransactionColumns, settings: dict
) -> DataFrame:
    """A ``RawFeatures`` hook for the test: the pandas engine's features, on the driver. The
    integrator connects the Spark features instead; this checks what the hook is given and
    what is done with its result."""
    table = frame.toPandas().sort_values([columns.timestamp_column, columns.id_column])
    featured = add_features(table, columns, delay_days=int(settings["delay_days"]))
    return frame.sparkSession.createDataFrame(featured)


def test_raw_transactions_are_scored_through_the_features_hook(spark, served, tmp_path):
    source = tmp_path / "raw.parquet"
    raw = tiny_simulation(seed=8, n_days=40).drop(columns="TX_FRAUD_SCENARIO")
    raw.to_parquet(source, index=False)

    with pytest.raises(DataError, match="does not compute features from raw transactions yet"):
        score_parquet(spark, served, str(source), str(tmp_path / "refused.parquet"))

    pandas_output = tmp_path / "pandas.parquet"
    config = BatchConfig(model_uri=served.uri, input=str(source), output=str(pandas_output))
    score_file(served, config)
    expected = pd.read_parquet(pandas_output)
    report = score_parquet(
        spark,
        served,
        str(source),
        str(tmp_path / "spark.parquet"),
        raw_features=pandas_features_on_spark,
    )
    actual = pd.read_parquet(tmp_path / "spark.parquet")

    assert list(actual.columns) == [*raw.columns, PROBABILITY_COLUMN, DECISION_COLUMN]
    actual = actual.set_index(ID).loc[expected[ID]].reset_index()
    np.testing.assert_allclose(
        actual[PROBABILITY_COLUMN], expected[PROBABILITY_COLUMN], rtol=1e-5, atol=1e-9
    )
    assert report.rows == len(raw)


def test_score_batch_scores_with_the_version_the_alias_names(spark, model, tmp_path):
    version = mlflow.register_model(model.log(), MODEL_NAME).version
    mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", version)
    source = tmp_path / "featured.parquet"
    model.test.head(300).to_parquet(source, index=False)
    output = tmp_path / "scored.parquet"

    summary = score_batch(
        BatchConfig(
            model_uri=f"models:/{MODEL_NAME}@champion", input=str(source), output=str(output)
        ),
        spark,
    )

    assert f"scored 300 transactions with models:/{MODEL_NAME}@champion (version {version})" in (
        summary
    )
    assert len(pd.read_parquet(output)) == 300


def test_bad_datasets_are_refused_with_the_column_and_the_problem(spark, served, model, tmp_path):
    features = model.features
    rows = model.test.head(50)
    cases = {
        "text": (rows.assign(**{features[0]: "x"}), f"column {features[0]} must be numeric"),
        "missing": (
            rows.assign(**{features[1]: np.where(np.arange(50) < 3, np.nan, 1.0)}),
            f"column {features[1]} has 3 missing value",
        ),
        "empty": (rows.head(0), "no rows"),
    }
    for name, (frame, message) in cases.items():
        source = tmp_path / f"{name}.parquet"
        frame.to_parquet(source, index=False)
        with pytest.raises(DataError, match=message):
            score_parquet(spark, served, str(source), str(tmp_path / f"{name}-scored.parquet"))
    with pytest.raises(DataError, match=r"nowhere\.parquet: no such file or directory"):
        score_parquet(spark, served, str(tmp_path / "nowhere.parquet"), str(tmp_path / "o"))
    with pytest.raises(DataError, match="the Spark engine writes Parquet"):
        score_batch(BatchConfig(input="any.parquet", output=str(tmp_path / "out.csv")), spark)
