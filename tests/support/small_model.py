"""A small XGBoost model logged by the train step's own code, and rows for it to score (the
Spark engine's scoring tests: how the model was trained does not matter there)."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import pandas as pd

from fraud_detection.config import ModelConfig, SplitConfig, TrainConfig
from fraud_detection.data.windows import evaluation_window, prepare_data, training_windows
from fraud_detection.engine import PandasEngine
from fraud_detection.modelling.estimators import (
    CandidateSpec,
    FittedCandidate,
    Scorer,
    fit_candidate,
)
from fraud_detection.steps.train import _log_model
from tests.support.pipeline import SMALL_DATA

# Low enough that the model raises alerts on the test window.
THRESHOLD = 0.2


@dataclass(frozen=True)
class SmallModel:
    fitted: FittedCandidate  # what the train step tunes the threshold of
    scorer: Scorer
    validation: pd.DataFrame  # rows the model saw in training's validation window
    test: pd.DataFrame  # the test window: raw columns and features

    @property
    def features(self) -> list[str]:
        return list(self.scorer.features)

    def log(self) -> str:
        """Log the model as the train step does (in the current tracking store); its URI."""
        with mlflow.start_run():
            example = PandasEngine().example(self.validation, self.scorer.features)
            info = _log_model(self.scorer, THRESHOLD, example, TrainConfig(data=SMALL_DATA))
        return info.model_uri


def small_model() -> SmallModel:
    """Thirty rounds of XGBoost on SMALL_DATA's training window (a second or two)."""
    prepared = prepare_data(SMALL_DATA, SplitConfig())
    windows = training_windows(prepared, SMALL_DATA)
    fitted = fit_candidate(
        CandidateSpec("xgboost"),
        ModelConfig(grid="none", n_estimators=30, n_jobs=1),
        prepared.features,
        windows.training,
        SMALL_DATA.columns.label_column,
    )
    return SmallModel(
        fitted,
        Scorer.from_fitted(fitted, prepared.features),
        windows.validation,
        evaluation_window(prepared, SMALL_DATA, "test"),
    )
