"""The monitor's reference profile built by Spark is the pandas engine's, on the same rows.

Both engines profile the same pandas rows (the Spark frames are made from them), so what is
compared is the profiling alone: the features' equality across engines is
tests/spark/test_features.py's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark", reason='the Spark engine needs PySpark: pip install -e ".[spark]"')

from fraud_detection.config import ModelConfig, SplitConfig
from fraud_detection.data.windows import prepare_data, training_windows
from fraud_detection.engine import PandasEngine, TrainingData
from fraud_detection.errors import DataError
from fraud_detection.modelling.estimators import CandidateSpec, Scorer, fit_candidate
from fraud_detection.monitoring.drift import (
    BinnedDistribution,
    bin_shares,
    binned,
    population_stability_index,
)
from fraud_detection.monitoring.profile import ReferenceProfile
from fraud_detection.spark.engine import SparkEngine
from fraud_detection.spark.profile import QUANTILE_ACCURACY, binned_columns
from tests.support.pipeline import SMALL_DATA
from tests.support.quantiles import within_rank_error

LABEL = SMALL_DATA.columns.label_column
# Three weeks of training, about 20,000 rows: more than the quantile sketch keeps exactly at
# its default accuracy, so some Spark edges differ from the exact ones and the bounds below
# are exercised (a test checks that they are).
SPLIT = SplitConfig(train_days="21")
RANK_ERROR = 1 / QUANTILE_ACCURACY


@dataclass(frozen=True)
class Profiles:
    pandas: ReferenceProfile
    spark: ReferenceProfile
    training: pd.DataFrame
    scores: np.ndarray  # the model's scores of the validation rows

    def pairs(self) -> dict[str, tuple[BinnedDistribution, BinnedDistribution, np.ndarray]]:
        """Per distribution: the pandas one, the Spark one, the values binned."""
        pairs = {
            name: (bins, self.spark.features[name], self.training[name].to_numpy(np.float64))
            for name, bins in self.pandas.features.items()
        }
        pairs["score"] = (self.pandas.score, self.spark.score, self.scores)
        return pairs


@pytest.fixture(scope="module")
def profiles(spark) -> Profiles:
    prepared = prepare_data(SMALL_DATA, SPLIT)
    windows = training_windows(prepared, SMALL_DATA)
    features = prepared.features
    fitted = fit_candidate(
        CandidateSpec("xgboost"),
        ModelConfig(grid="none", n_estimators=30, n_jobs=1),
        features,
        windows.training,
        LABEL,
    )
    scorer = Scorer.from_fitted(fitted, features)
    scores = scorer.predict_proba(windows.validation)
    # A score that rows have exactly: both engines must count them as alerts (score >= it).
    threshold = float(np.sort(scores)[-50])

    def data(training, validation) -> TrainingData:
        return TrainingData(
            "simulated", "", prepared.split, features, None, validation, training, 0, {}
        )

    on_pandas = PandasEngine().reference_profile(
        scorer, data(windows.training, windows.validation), threshold
    )
    columns = list(features)
    on_spark = SparkEngine(spark).reference_profile(
        scorer,
        data(
            spark.createDataFrame(windows.training[columns]),
            spark.createDataFrame(windows.validation[columns]),
        ),
        threshold,
    )
    return Profiles(on_pandas, on_spark, windows.training, scores)


def test_counts_threshold_and_alert_rate_are_exact(profiles):
    pandas_profile, spark_profile = profiles.pandas, profiles.spark
    assert spark_profile.training_rows == pandas_profile.training_rows == len(profiles.training)
    assert spark_profile.validation_rows == pandas_profile.validation_rows == profiles.scores.size
    assert spark_profile.threshold == pandas_profile.threshold
    alerts = np.count_nonzero(profiles.scores >= pandas_profile.threshold)
    assert alerts > 50  # the 50th highest score is shared: ties at the threshold alert
    assert spark_profile.alert_rate == pandas_profile.alert_rate == alerts / profiles.scores.size
    assert list(spark_profile.features) == list(pandas_profile.features)
    assert spark_profile.to_dict().keys() == pandas_profile.to_dict().keys()


def test_each_edge_is_an_observed_value_within_the_sketchs_rank_error(profiles):
    """Spark's ``percentile_approx`` promises, for a level q over n values, a value x of the
    column with floor((q - e) n) <= rank(x) <= ceil((q + e) n), e = 1 / accuracy (a value
    repeated holds every rank of its run). Each Spark edge must keep that promise for one of
    the levels the pandas engine cuts at, and there must be as many edges as pandas makes."""
    differing = 0
    for name, (expected, actual, values) in profiles.pairs().items():
        finite = np.sort(values[np.isfinite(values)])
        assert len(actual.edges) == len(expected.edges), name
        for edge in actual.edges:
            assert edge in finite, f"{name}: edge {edge} is no value of the column"
            assert within_rank_error(edge, finite, RANK_ERROR), f"{name}: edge {edge}"
        differing += actual.edges != expected.edges
    # The sketch was approximate somewhere, or this test would prove nothing about the bound.
    assert differing > 0


def test_shares_are_exact_counts_at_the_edges_and_near_the_pandas_shares(profiles):
    """The rows per bin are counted exactly at Spark's own edges. Where an edge differs, a bin's
    share moves by the rows between the two edges: at most the rank error (e + 1/n) for a
    continuous feature, but a count feature's edge may step to the next integer within the
    rank error and carry that integer's rows with it (1.7% of them for one terminal count
    here). The monitor bins every window on the profile's own edges, so that changes the bins,
    not the PSI's meaning: the pandas and Spark distributions are all but the same (PSI)."""
    for name, (expected, actual, values) in profiles.pairs().items():
        assert actual.shares == pytest.approx(bin_shares(values, actual.edges), abs=1e-15), name
        continuous = 2 * (RANK_ERROR + 1 / values.size)
        moved = max(abs(a - b) for a, b in zip(actual.shares, expected.shares, strict=True))
        assert moved <= (continuous if "AMOUNT" in name or name == "score" else 0.02), name
        assert population_stability_index(expected.shares, actual.shares) < 0.01, name


def test_binned_columns_bins_what_binned_bins_on_awkward_values(spark):
    """Few values, so the sketch is exact and every edge and share must be equal: a constant,
    an integer column, missing values (a null or NaN, in the last bin as NumPy sorts them) and
    infinities (binned, not cut at), and a column with no finite value (one bin)."""
    rng = np.random.default_rng(3)
    n = 200
    integer = rng.integers(0, 4, n).astype(np.float64)
    awkward = rng.normal(size=n)
    awkward[:6] = [np.nan, np.nan, np.nan, np.inf, -np.inf, np.inf]
    columns = {
        "constant": np.full(n, 2.5),
        "integer": integer,
        "awkward": awkward,
        "missing": np.full(n, np.nan),
    }
    # Built from Python rows, not pandas: Spark keeps a NaN as NaN and None as null.
    rows = [
        (float(columns["constant"][i]), float(integer[i]), float(awkward[i]), None)
        for i in range(n)
    ]
    rows[1] = (rows[1][0], rows[1][1], None, None)  # a null where pandas has its NaN
    frame = spark.createDataFrame(
        rows, "constant double, integer double, awkward double, missing double"
    )

    found, count = binned_columns(frame, list(columns))

    assert count == n
    for name, values in columns.items():
        assert found[name] == binned(values), name
    assert found["constant"].shares == (1.0,) and found["missing"].shares == (1.0,)
    assert len(found["integer"].edges) == 3  # cut between 0, 1, 2 and 3


def test_no_rows_is_a_clear_error(spark):
    empty = spark.createDataFrame([], "amount double")
    with pytest.raises(DataError, match="no rows to build the reference profile from"):
        binned_columns(empty, ["amount"])
