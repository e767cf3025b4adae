"""The seam between the steps and the engine that computes their data: pandas or Spark.

Train and evaluate keep one flow (``steps``); what depends on where the rows live goes through
an ``Engine``: preparing the windows, fitting a candidate, scoring and measuring a window,
tuning the threshold, profiling the windows for the monitor, and evaluating the test window
(the candidate and the champion scored and measured where the rows live). ``PandasEngine`` is
the in-process engine every default run uses; ``spark.engine.SparkEngine`` does the same on a
Spark session (``engine_for("spark")``).
Both hand back the same objects (``FittedCandidate``, ``ThresholdChoice``, plain metric
dictionaries), so the logged model, the registry and serving do not know which engine ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd
from mlflow.data.dataset import Dataset

from fraud_detection.config import DataConfig, ModelConfig, SplitConfig, TrainConfig
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.data.split import TimeSplit
from fraud_detection.data.validation import require_both_classes
from fraud_detection.data.windows import evaluation_window, prepare_data, training_windows
from fraud_detection.hardening.datasets import pandas_dataset
from fraud_detection.modelling.estimators import (
    CandidateSpec,
    FittedCandidate,
    Scorer,
    fit_candidate,
    matrix,
)
from fraud_detection.modelling.evaluation import (
    ChampionVersion,
    ModelUnderTest,
    WindowEvaluation,
    evaluate_on_pandas,
    score_reference_on_pandas,
)
from fraud_detection.modelling.metrics import fraud_metrics
from fraud_detection.modelling.threshold import ThresholdChoice, tune_threshold
from fraud_detection.monitoring.profile import ReferenceProfile, build_profile


@dataclass(frozen=True)
class TrainingData:
    """The train step's data, on either engine: its windows' rows are the engine's frames."""

    source: str  # path, table or simulator description, for lineage
    fingerprint: str  # the engine's content digest of the transactions
    split: TimeSplit
    features: tuple[str, ...]
    validation_train: Any  # pandas or Spark DataFrame
    validation: Any  # known-compromised cards removed
    training: Any
    n_transactions: int
    data_metrics: dict[str, float]  # fraud rate and window sizes, logged on the train run


@dataclass(frozen=True)
class TestData:
    """Evaluate's test window, rebuilt from a train run's recipe, as the engine's frame."""

    source: str
    fingerprint: str
    split: TimeSplit
    rows: Any  # pandas or Spark DataFrame: raw columns and features, known-compromised
    # cards removed
    # Every row of the test window (the cards known to be compromised too): what the monitor
    # watches in production, so what its score reference is taken on. None: ``rows``.
    window: Any = None

    @property
    def monitored(self) -> Any:
        return self.rows if self.window is None else self.window


class Engine(Protocol):
    """What the steps ask of an engine (``PandasEngine``, ``spark.engine.SparkEngine``)."""

    name: str
    # Candidates may be fitted in spawned processes (their rows are pickled to them).
    parallel_processes: bool

    def prepare_training(self, config: TrainConfig) -> TrainingData: ...

    def candidate_specs(self, specs: Sequence[CandidateSpec]) -> list[CandidateSpec]: ...

    def fit(
        self,
        spec: CandidateSpec,
        config: ModelConfig,
        features: tuple[str, ...],
        training: Any,
        label: str,
        validation: Any = None,
        rounds: int | None = None,
        callbacks: Sequence[Any] = (),
    ) -> FittedCandidate: ...

    def window_metrics(
        self, fitted: FittedCandidate, frame: Any, features: tuple[str, ...], data: DataConfig
    ) -> dict[str, float]: ...

    def tune_threshold(
        self,
        fitted: FittedCandidate,
        validation: Any,
        features: tuple[str, ...],
        config: TrainConfig,
    ) -> ThresholdChoice: ...

    def reference_profile(
        self, scorer: Scorer, data: TrainingData, threshold: float
    ) -> ReferenceProfile:
        """What the monitor compares windows with (``monitoring.profile``): the features on the
        training window, and ``scorer``'s scores on the validation window, where ``scorer`` is
        the model being logged (scores of another fit, even of the same candidate, sit on
        another scale: their PSI against the served model's was 2 on quiet weeks)."""
        ...

    def example(self, frame: Any, features: Sequence[str]) -> pd.DataFrame: ...

    def datasets(self, data: TrainingData, label: str) -> dict[str, Dataset]: ...

    def test_window(self, data: DataConfig, split: SplitConfig) -> TestData: ...

    def evaluate_window(
        self,
        test: TestData,
        data: DataConfig,
        candidate: ModelUnderTest,
        champion: ChampionVersion | None,
    ) -> WindowEvaluation:
        """Score the test rows with the candidate and the champion, log their ``test_*`` and
        ``champion_test_*`` metrics (linked to each model) and plots, and return them with the
        candidate's score reference on the whole test window (``test.monitored``)."""
        ...


def engine_for(name: str) -> Engine:
    """The engine called ``name`` (``config.ENGINES``); Spark's is imported only when asked."""
    if name == "spark":
        from fraud_detection.spark.engine import SparkEngine

        return SparkEngine()
    return PandasEngine()


def window_metrics(
    frame: pd.DataFrame, scores: np.ndarray, data_config: DataConfig
) -> dict[str, float]:
    """Fraud metrics of ``scores`` on ``frame`` (card precision when cards are known)."""
    columns = data_config.columns
    has_cards = columns.customer_column in frame.columns
    return fraud_metrics(
        frame[columns.label_column],
        scores,
        days=frame[DAY_COLUMN] if has_cards else None,
        customers=frame[columns.customer_column] if has_cards else None,
    )


class PandasEngine:
    """The rows as pandas frames in this process (the default)."""

    name = "pandas"
    parallel_processes = True

    def prepare_training(self, config: TrainConfig) -> TrainingData:
        prepared = prepare_data(config.data, config.split)
        windows = training_windows(prepared, config.data)
        label = config.data.columns.label_column
        return TrainingData(
            source=prepared.transactions.source,
            fingerprint=prepared.transactions.fingerprint,
            split=prepared.split,
            features=prepared.features,
            validation_train=windows.validation_train,
            validation=windows.validation,
            training=windows.training,
            n_transactions=len(prepared.table),
            data_metrics={
                "data_fraud_rate": float(prepared.table[label].mean()),
                "training_rows": len(windows.training),
                "training_fraud_rate": float(windows.training[label].mean()),
                "validation_rows": len(windows.validation),
            },
        )

    def candidate_specs(self, specs: Sequence[CandidateSpec]) -> list[CandidateSpec]:
        return list(specs)

    def fit(
        self,
        spec: CandidateSpec,
        config: ModelConfig,
        features: tuple[str, ...],
        training: pd.DataFrame,
        label: str,
        validation: pd.DataFrame | None = None,
        rounds: int | None = None,
        callbacks: Sequence[Any] = (),
    ) -> FittedCandidate:
        return fit_candidate(
            spec,
            config,
            features,
            training,
            label,
            validation=validation,
            rounds=rounds,
            callbacks=callbacks,
        )

    def window_metrics(
        self,
        fitted: FittedCandidate,
        frame: pd.DataFrame,
        features: tuple[str, ...],
        data: DataConfig,
    ) -> dict[str, float]:
        return window_metrics(frame, fitted.predict_proba(frame, features), data)

    def tune_threshold(
        self,
        fitted: FittedCandidate,
        validation: pd.DataFrame,
        features: tuple[str, ...],
        config: TrainConfig,
    ) -> ThresholdChoice:
        columns = config.data.columns
        return tune_threshold(
            fitted.estimator,
            matrix(validation, features),
            validation[columns.label_column].to_numpy(),
            validation[columns.amount_column].to_numpy(),
            config.cost.review_cost,
        )

    def reference_profile(
        self, scorer: Scorer, data: TrainingData, threshold: float
    ) -> ReferenceProfile:
        scores = scorer.predict_proba(data.validation)
        return build_profile(data.training, data.features, scores, threshold)

    def example(self, frame: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
        return frame.loc[:, list(features)].head(5).astype(np.float64)

    def datasets(self, data: TrainingData, label: str) -> dict[str, Dataset]:
        columns = [*data.features, label]
        frames = {"training": data.training, "validation": data.validation}
        return {
            context: pandas_dataset(
                frame[columns], data.source, name=f"transactions-{context}", label=label
            )
            for context, frame in frames.items()
        }

    def test_window(self, data: DataConfig, split: SplitConfig) -> TestData:
        prepared = prepare_data(data, split)
        rows = evaluation_window(prepared, data, "test")
        source = prepared.transactions.source
        require_both_classes(rows[data.columns.label_column], f"{source}, test window")
        window = prepared.split.test.select(prepared.table, data.columns.timestamp_column)
        return TestData(source, prepared.transactions.fingerprint, prepared.split, rows, window)

    def evaluate_window(
        self,
        test: TestData,
        data: DataConfig,
        candidate: ModelUnderTest,
        champion: ChampionVersion | None,
    ) -> WindowEvaluation:
        """``mlflow.models.evaluate`` of both models' predictions on the rows, and the plots."""
        measured = evaluate_on_pandas(test.rows, test.source, data, candidate, champion)
        reference = score_reference_on_pandas(test.monitored, candidate)
        return replace(measured, score_reference=reference)
