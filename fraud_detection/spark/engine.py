"""The Spark engine behind the steps' ``engine.Engine`` seam (``engine=spark``).

Train's rows stay in Spark: read (``reading``), featured (``features``), split with the
known-compromised cards removed (``split``); the XGBoost candidates fit with
``SparkXGBClassifier`` (``training``); every window is scored and measured by Spark
(``scoring``, ``metrics``) and the threshold tuned from aggregates (``threshold``: exact, the
pandas engine's 400 quantile candidates, no sampling); the monitor's reference profile is
binned by aggregates too (``profile``: approximate quantiles as edges, exact counts). Only
aggregates reach the driver, and five rows as the logged model's input example.

Evaluate's test window is built by Spark from the train run's recipe and stays there
(``evaluation``): the candidate and the current champion score it through ``spark_udf``, the
scored columns are persisted once, and the metrics the pandas engine logs (ROC AUC, average
precision, recall at 1% FPR, card precision@100, savings and the classifier metrics at the
decision) come from aggregates, under the same names. Its one plot is the feature importance;
the curves are drawn on the pandas engine.

Not on Spark: the logistic-regression and random-forest candidates (skipped, with one warning),
XGBoost checkpoints of the refit (none are written), the MLflow datasets of the training,
validation and test windows (the lineage parameters are logged as on pandas), parallel
candidate processes (each fit already spreads over the executors), and evaluate's curves and
confusion matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from mlflow.data.dataset import Dataset
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf

from fraud_detection.config import ConfigError, DataConfig, ModelConfig, SplitConfig, TrainConfig
from fraud_detection.data.features import model_features
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.engine import TestData, TrainingData
from fraud_detection.modelling.estimators import CandidateSpec, FittedCandidate, Scorer
from fraud_detection.modelling.evaluation import ChampionVersion, ModelUnderTest, WindowEvaluation
from fraud_detection.modelling.threshold import ThresholdChoice
from fraud_detection.monitoring.profile import ReferenceProfile
from fraud_detection.spark import features as spark_features
from fraud_detection.spark import split as spark_split
from fraud_detection.spark.evaluation import evaluate_on_spark, window_score_reference
from fraud_detection.spark.metrics import fraud_metrics
from fraud_detection.spark.profile import spark_profile
from fraud_detection.spark.reading import load_transactions
from fraud_detection.spark.scoring import score_with_scorer
from fraud_detection.spark.session import spark_session
from fraud_detection.spark.threshold import tune_threshold
from fraud_detection.spark.training import fit_spark_candidate
from fraud_detection.spark.validation import require_both_classes

logger = logging.getLogger(__name__)

SPARK_KINDS = ("xgboost",)
# The candidate's fraud probability, added to a window's rows while it is measured.
_SCORE = "__candidate_fraud_probability__"


class SparkEngine:
    """The rows as Spark DataFrames of the active session (or a new one: ``spark_session``)."""

    name = "spark"
    parallel_processes = False

    def __init__(self, spark: SparkSession | None = None) -> None:
        self._spark = spark

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:
            self._spark = spark_session()
        return self._spark

    def prepare_training(self, config: TrainConfig) -> TrainingData:
        columns = config.data.columns
        loaded = load_transactions(self.spark, config.data)
        frame, warm_up = featured(loaded.frame, config)
        # Every window, and every candidate's fit and metrics, reads these rows again.
        frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
        split = spark_split.plan_split(frame, columns.timestamp_column, config.split, warm_up)
        windows = spark_split.training_windows(frame, split, columns, loaded.source)
        label = columns.label_column
        rows, fraud_rate = _size_and_rate(frame, label)
        training_rows, training_rate = _size_and_rate(windows.training, label)
        return TrainingData(
            source=loaded.source,
            fingerprint=loaded.fingerprint,
            split=split,
            features=model_features(config.data),
            validation_train=windows.validation_train,
            validation=windows.validation,
            training=windows.training,
            n_transactions=rows,
            data_metrics={
                "data_fraud_rate": fraud_rate,
                "training_rows": training_rows,
                "training_fraud_rate": training_rate,
                "validation_rows": windows.validation.count(),
            },
        )

    def candidate_specs(self, specs: Sequence[CandidateSpec]) -> list[CandidateSpec]:
        """The XGBoost candidates; the others are skipped with one warning naming them."""
        kept = [spec for spec in specs if spec.kind in SPARK_KINDS]
        skipped = sorted({spec.kind for spec in specs if spec.kind not in SPARK_KINDS})
        if not kept:
            raise ConfigError(
                f"engine=spark trains {', '.join(SPARK_KINDS)} only; model_kinds names "
                f"{', '.join(skipped)}: add xgboost or use engine=pandas"
            )
        if skipped:
            logger.warning(
                "engine=spark: skipping model kinds without a Spark implementation: %s",
                ", ".join(skipped),
            )
        return kept

    def fit(
        self,
        spec: CandidateSpec,
        config: ModelConfig,
        features: tuple[str, ...],
        training: DataFrame,
        label: str,
        validation: DataFrame | None = None,
        rounds: int | None = None,
        callbacks: Sequence[Any] = (),
    ) -> FittedCandidate:
        if callbacks:
            logger.info("engine=spark: the refit writes no XGBoost checkpoints")
        return fit_spark_candidate(
            spec, config, features, training, label, validation=validation, rounds=rounds
        )

    def window_metrics(
        self, fitted: FittedCandidate, frame: DataFrame, features: tuple[str, ...], data: DataConfig
    ) -> dict[str, float]:
        """``engine.window_metrics`` computed by Spark on the candidate's scores."""
        columns = data.columns
        scored = score_with_scorer(frame, Scorer.from_fitted(fitted, features), _SCORE)
        has_cards = columns.customer_column in frame.columns
        return fraud_metrics(
            scored,
            columns.label_column,
            _SCORE,
            day=DAY_COLUMN if has_cards else None,
            card=columns.customer_column if has_cards else None,
        )

    def tune_threshold(
        self,
        fitted: FittedCandidate,
        validation: DataFrame,
        features: tuple[str, ...],
        config: TrainConfig,
    ) -> ThresholdChoice:
        """The pandas engine's choice, from aggregates of the scored validation rows."""
        columns = config.data.columns
        scored = score_with_scorer(validation, Scorer.from_fitted(fitted, features), _SCORE)
        return tune_threshold(
            scored, columns.label_column, _SCORE, columns.amount_column, config.cost.review_cost
        )

    def reference_profile(
        self, scorer: Scorer, data: TrainingData, threshold: float
    ) -> ReferenceProfile:
        """``build_profile``'s bins from Spark aggregates (``spark.profile``), the validation
        rows scored in the executors as for the threshold."""
        scored = score_with_scorer(data.validation, scorer, _SCORE)
        return spark_profile(data.training, data.features, scored, _SCORE, threshold)

    def example(self, frame: DataFrame, features: Sequence[str]) -> pd.DataFrame:
        return frame.select(*features).limit(5).toPandas().astype(np.float64)

    def datasets(self, data: TrainingData, label: str) -> dict[str, Dataset]:
        return {}

    def test_window(self, data: DataConfig, split: SplitConfig) -> TestData:
        """The test window built by Spark, as a Spark DataFrame (nothing collected)."""
        config = TrainConfig(data=data, split=split)
        columns = data.columns
        loaded = load_transactions(self.spark, data)
        frame, warm_up = featured(loaded.frame, config)
        # The evaluation rows and the whole window (the score reference) both read it.
        frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
        planned = spark_split.plan_split(frame, columns.timestamp_column, split, warm_up)
        rows = spark_split.evaluation_rows(frame, planned, "test", columns)
        require_both_classes(rows, columns.label_column, f"{loaded.source}, test window")
        wanted = [
            *model_features(data),
            columns.label_column,
            columns.amount_column,
            columns.timestamp_column,
            DAY_COLUMN,
            columns.customer_column,
            columns.id_column,
        ]
        kept = [name for name in dict.fromkeys(wanted) if name in rows.columns]
        window = spark_split.select_window(frame, planned.test, columns.timestamp_column)
        features = model_features(data)
        return TestData(
            loaded.source, loaded.fingerprint, planned, rows.select(*kept), window.select(*features)
        )

    def evaluate_window(
        self,
        test: TestData,
        data: DataConfig,
        candidate: ModelUnderTest,
        champion: ChampionVersion | None,
    ) -> WindowEvaluation:
        """Both models scored by ``spark_udf`` on the rows, measured by Spark aggregates."""
        measured = evaluate_on_spark(test.rows, data, candidate, champion)
        reference = window_score_reference(test.monitored, candidate)
        return replace(measured, score_reference=reference)


def featured(frame: DataFrame, config: TrainConfig) -> tuple[DataFrame, pd.Timedelta | None]:
    """``frame`` with the engineered features (when the data config asks for them), and the
    warm-up the split must leave before training starts (``data.windows.prepare_data``)."""
    data = config.data
    if not data.engineered_features:
        return frame, None
    windows, delay = data.windows, config.split.delay_duration
    featured_frame = spark_features.add_features(
        frame, data.columns, delay_days=delay, windows=windows
    )
    return featured_frame, windows.longest + delay


def _size_and_rate(frame: DataFrame, label: str) -> tuple[int, float]:
    """Rows of ``frame`` and the mean of its label (one aggregate)."""
    row = frame.agg(sf.count("*").alias("rows"), sf.avg(sf.col(label).cast("double"))).first()
    return int(row["rows"]), float(row[1] or 0.0)
