"""The one pyfunc model every step logs and serves: feature rows in, probability and decision out.

The logged model is an MLflow "model from code" (``pyfunc_entry.py``): no pickled Python object,
just the package code (``code_paths``), the estimator in its own format
(``estimators.Scorer``) and a small JSON config (feature order, decision threshold, the feature
recipe). It loads anywhere the pinned requirements install.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema

from fraud_detection.modelling.estimators import (
    Scorer,
    matrix,
)

PROBABILITY_COLUMN = "fraud_probability"
DECISION_COLUMN = "is_fraud"
ESTIMATOR_ARTIFACT = "estimator"
MODEL_CODE = Path(__file__).with_name("pyfunc_entry.py")
PACKAGE_DIR = Path(__file__).parents[1]


def predictions_columns(probabilities: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The model's output columns: fraud probability and the 0/1 decision at ``threshold``."""
    return {
        PROBABILITY_COLUMN: probabilities.astype(np.float64),
        DECISION_COLUMN: (probabilities >= threshold).astype(np.int64),
    }


def predictions_frame(probabilities: np.ndarray, threshold: float) -> pd.DataFrame:
    """The model's output as a DataFrame (what the pyfunc returns)."""
    return pd.DataFrame(predictions_columns(probabilities, threshold))


def model_signature(features: Sequence[str]) -> ModelSignature:
    """Input: one double per feature, all required. Output: probability and 0/1 decision."""
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.double, name) for name in features]),
        outputs=Schema(
            [ColSpec(DataType.double, PROBABILITY_COLUMN), ColSpec(DataType.long, DECISION_COLUMN)]
        ),
    )


def model_requirements(kind: str) -> list[str]:
    """Pinned pip requirements of the logged model: the versions that trained it."""
    packages = ["mlflow", "numpy", "pandas", "scikit-learn", "xgboost"]
    if kind != "xgboost":
        packages.append("skops")
    return [f"{name}=={importlib.metadata.version(name)}" for name in packages]


def model_config(
    kind: str,
    features: Sequence[str],
    threshold: float,
    engineered: bool,
    delay_days: int,
    review_cost: float,
) -> dict[str, Any]:
    """What the pyfunc and its clients need besides the estimator file.

    Stored in the MLmodel file (MLflow also logs these keys as parameters of the run). The
    feature recipe (engineered or not, label delay) lets batch scoring rebuild the features
    from raw transactions exactly as training did.
    """
    return {
        "model_kind": kind,
        "features": list(features),
        "threshold": float(threshold),
        "engineered_features": bool(engineered),
        "delay_days": int(delay_days),
        "review_cost": float(review_cost),
    }


def _require_finite(values: np.ndarray, features: Sequence[str]) -> None:
    """Refuse missing or infinite feature values: the model never saw any in training.

    XGBoost would score a NaN silently down its "missing" branch, and logistic regression
    would fail with a stack trace; either way the caller's bug would be hidden or unclear.
    """
    finite = np.isfinite(values)
    if finite.all():
        return
    row, column = (int(index[0]) for index in np.nonzero(~finite))
    raise MlflowException(
        f"column {features[column]}: row {row} is missing (NaN) or infinite; "
        "the model needs a finite value for every feature",
        error_code=INVALID_PARAMETER_VALUE,
    )


class FraudDetector(PythonModel):
    """The served model: feature rows in, fraud probability and decision out.

    ``context.model_config`` carries the estimator kind, the feature order and the threshold
    tuned on validation data, so the decision travels with the model.
    """

    def load_context(self, context: Any) -> None:
        config = context.model_config
        self.threshold = float(config["threshold"])
        self.scorer = Scorer.load(
            Path(context.artifacts[ESTIMATOR_ARTIFACT]), config["model_kind"], config["features"]
        )

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        values = matrix(model_input, self.scorer.features)
        _require_finite(values, self.scorer.features)
        probabilities = self.scorer.predict_proba_values(values)
        return predictions_frame(probabilities, self.threshold)

    def predict_values(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """``predict`` without pandas, for callers that checked the input themselves.

        ``values`` holds one row per transaction and one column per feature, in the order of
        ``self.scorer.features`` (the signature's order). Scoring services use this to skip the
        DataFrame round trip, which costs more than the model itself on a single row.
        """
        return predictions_columns(self.scorer.predict_proba_values(values), self.threshold)
