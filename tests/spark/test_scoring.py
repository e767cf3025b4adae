"""Scoring on Spark (``spark_udf``) gives the pyfunc model's own scores on the same rows."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark", reason='the Spark engine needs PySpark: pip install -e ".[spark]"')

from fraud_detection.errors import DataError
from fraud_detection.modelling.pyfunc import DECISION_COLUMN, PROBABILITY_COLUMN
from fraud_detection.spark.scoring import score_frame, score_with_scorer
from tests.support.pipeline import SMALL_DATA
from tests.support.small_model import SmallModel, small_model

COLUMNS = SMALL_DATA.columns


@pytest.fixture(scope="module")
def model() -> SmallModel:
    return small_model()


@pytest.fixture
def model_uri(model) -> str:
    """The model, logged in this test's store."""
    return model.log()


def test_spark_scores_are_the_pyfunc_models_scores(spark, model_uri, model):
    features = model.features
    rows = model.test[[COLUMNS.id_column, COLUMNS.label_column, *features]]
    expected = mlflow.pyfunc.load_model(model_uri).predict(rows[features])

    scored = score_frame(spark.createDataFrame(rows), model_uri, features).toPandas()

    scored = scored.set_index(COLUMNS.id_column).loc[rows[COLUMNS.id_column]]
    assert np.array_equal(scored[PROBABILITY_COLUMN].to_numpy(), expected[PROBABILITY_COLUMN])
    assert np.array_equal(scored[DECISION_COLUMN].to_numpy(), expected[DECISION_COLUMN])
    assert scored[DECISION_COLUMN].sum() > 0  # the threshold is applied, not always 0


def test_the_output_columns_are_named_by_the_caller_and_the_input_kept(spark, model_uri, model):
    features = model.features
    # The feature columns as the pandas engine made them: some are integers, cast to double
    # for the model's signature.
    rows = model.test[[COLUMNS.id_column, *features]].head(200)
    assert any(pd.api.types.is_integer_dtype(rows[name]) for name in features)

    scored = score_frame(
        spark.createDataFrame(rows), model_uri, features, "__probability__", "__decision__"
    )

    assert scored.columns == [*rows.columns, "__probability__", "__decision__"]
    assert dict(scored.dtypes)["__decision__"] == "bigint"
    result = scored.toPandas().set_index(COLUMNS.id_column).loc[rows[COLUMNS.id_column]]
    np.testing.assert_array_equal(result["__probability__"], model.scorer.predict_proba(rows))


def test_rows_without_a_feature_are_refused_by_name(spark, model_uri, model):
    features = model.features
    rows = spark.createDataFrame(model.test[features[1:]].head(5))

    with pytest.raises(DataError, match=f"no column\\(s\\) {features[0]}"):
        score_frame(rows, model_uri, features)


def test_a_model_not_logged_yet_scores_as_its_scorer(spark, model):
    rows = model.test[[COLUMNS.id_column, *model.features]]

    scored = score_with_scorer(spark.createDataFrame(rows), model.scorer, "p").toPandas()

    scored = scored.set_index(COLUMNS.id_column).loc[rows[COLUMNS.id_column]]
    assert np.array_equal(scored["p"].to_numpy(), model.scorer.predict_proba(rows))
