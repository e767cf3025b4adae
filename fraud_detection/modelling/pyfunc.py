"""The one pyfunc model every step logs and serves: feature rows in, probability and decision out.

The logged model is an MLflow "model from code" (``pyfunc_entry.py``): no pickled Python object,
just the package code (``code_paths``), the estimator in its own format
(``estimators.Scorer``) and a small JSON config (feature order, decision threshold, the feature
recipe). It loads anywhere the pinned requirements install.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema

from fraud_detection.config import DEFAULT_DELAY_DAYS, DEFAULT_FEATURE_WINDOWS, FeatureWindows
from fraud_detection.modelling.estimators import (
    Scorer,
    matrix,
)

logger = logging.getLogger(__name__)

PROBABILITY_COLUMN = "fraud_probability"
DECISION_COLUMN = "is_fraud"
ESTIMATOR_ARTIFACT = "estimator"
MODEL_CODE = Path(__file__).with_name("pyfunc_entry.py")
PACKAGE_DIR = Path(__file__).parents[1]
# XGBoost's CPU-only distribution, and the platforms where it is installed instead of `xgboost`
# (the markers of pyproject.toml, python_env.yaml and conda.yaml; tests/test_environments.py).
XGBOOST_CPU = "xgboost-cpu"
XGBOOST_CPU_PLATFORMS = 'sys_platform == "linux" or sys_platform == "win32"'
XGBOOST_OTHER_PLATFORMS = 'sys_platform != "linux" and sys_platform != "win32"'


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
    """Pinned pip requirements of the logged model: the versions that trained it.

    XGBoost is pinned as a pair, the CPU-only build where PyPI has it and ``xgboost``
    elsewhere, both at the trained version, so that a model trained on Linux also installs
    on macOS, and the reverse.
    """
    packages = ["mlflow", "numpy", "pandas", "scikit-learn"]
    if kind != "xgboost":
        packages.append("skops")
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in packages]
    version = xgboost_version()
    return [
        *pins,
        f"{XGBOOST_CPU}=={version}; {XGBOOST_CPU_PLATFORMS}",
        f"xgboost=={version}; {XGBOOST_OTHER_PLATFORMS}",
    ]


def installed_xgboost() -> dict[str, str]:
    """The installed distributions of the ``xgboost`` module, with their versions (one, unless
    an environment was upgraded in place from before xgboost-cpu)."""
    installed = {}
    for name in (XGBOOST_CPU, "xgboost"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            installed[name] = importlib.metadata.version(name)
    return installed


def xgboost_version() -> str:
    """The version of the installed XGBoost, whichever of its two distributions brought it."""
    installed = installed_xgboost()
    if not installed:
        raise importlib.metadata.PackageNotFoundError("xgboost")
    if len(installed) == 1:
        return next(iter(installed.values()))
    # Both: an environment made before the switch to xgboost-cpu, then upgraded in place. The
    # `xgboost` module is the files of whichever was installed last; ask it.
    import xgboost

    logger.warning(
        "both xgboost and %s are installed (%s); they share the xgboost module, which is %s. "
        "Fix: pip uninstall -y xgboost %s nvidia-nccl-cu12, then reinstall the project",
        XGBOOST_CPU,
        ", ".join(f"{name} {version}" for name, version in installed.items()),
        xgboost.__version__,
        XGBOOST_CPU,
    )
    return xgboost.__version__


def model_config(
    kind: str,
    features: Sequence[str],
    threshold: float,
    engineered: bool,
    delay_days: str,
    review_cost: float,
    feature_windows: str,
) -> dict[str, Any]:
    """What the pyfunc and its clients need besides the estimator file.

    Stored in the MLmodel file (MLflow also logs these keys as parameters of the run, so the
    delay and the windows keep the parameters' own text: ``7``, ``36h``). The feature recipe
    (engineered or not, label delay, feature windows) lets batch scoring rebuild the features
    from raw transactions exactly as training did.
    """
    return {
        "model_kind": kind,
        "features": list(features),
        "threshold": float(threshold),
        "engineered_features": bool(engineered),
        "delay_days": str(delay_days),
        "feature_windows": str(feature_windows),
        "review_cost": float(review_cost),
    }


def feature_recipe(settings: Mapping[str, Any]) -> tuple[str, FeatureWindows]:
    """The label delay and feature windows that ``model_config`` stored, with the defaults of
    models logged before they were recorded."""
    delay = str(settings.get("delay_days", DEFAULT_DELAY_DAYS))
    return delay, FeatureWindows.parse(settings.get("feature_windows", DEFAULT_FEATURE_WINDOWS))


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
