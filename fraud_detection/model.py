"""Candidate estimators, how they are saved, and the one pyfunc model that serves them.

The logged model is an MLflow "model from code" (``pyfunc_entry.py``): no pickled Python object,
just the package code (``code_paths``), the estimator in its own format and a small JSON config
(feature order, decision threshold). It loads anywhere the pinned requirements install.

- XGBoost boosters are saved in XGBoost's own UBJSON format and scored with ``inplace_predict``
  (no DMatrix copy; the fastest path for small requests).
- scikit-learn estimators (the logistic-regression and random-forest baselines) are saved with
  skops, the safe format MLflow's own sklearn flavor uses, instead of pickle.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema

from fraud_detection.config import ModelConfig

logger = logging.getLogger(__name__)

PROBABILITY_COLUMN = "fraud_probability"
DECISION_COLUMN = "is_fraud"
ESTIMATOR_ARTIFACT = "estimator"
XGBOOST_FILE = "booster.ubj"
SKLEARN_FILE = "estimator.skops"
MODEL_CODE = Path(__file__).with_name("pyfunc_entry.py")
PACKAGE_DIR = Path(__file__).parent


def build_estimator(kind: str, config: ModelConfig, labels: pd.Series) -> Any:
    """Return an unfitted estimator of ``kind`` (one of ``config.MODEL_KINDS``).

    XGBoost takes its hyperparameters from ``config``; the two baselines use the settings of
    the book's chapter 3.4 (scikit-learn's defaults of its time).
    """
    n_jobs = config.n_jobs or os.cpu_count() or 1
    if kind == "xgboost":
        from xgboost import XGBClassifier

        positives = int(labels.sum())
        # 0 asks for the classic "balanced" weight. The default (1) leaves the loss unweighted:
        # the decision threshold, tuned on validation data, is where imbalance is handled.
        weight = config.scale_pos_weight or (len(labels) - positives) / max(positives, 1)
        return XGBClassifier(
            n_estimators=config.n_estimators,
            max_depth=config.max_depth,
            learning_rate=config.learning_rate,
            scale_pos_weight=weight,
            tree_method="hist",
            max_bin=config.max_bin,
            n_jobs=n_jobs,
            random_state=0,
            eval_metric="aucpr",
        )
    if kind == "logistic_regression":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1_000))
    if kind == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=100, n_jobs=n_jobs, random_state=0)
    raise ValueError(f"unknown model kind {kind!r}")


def estimator_params(kind: str, estimator: Any) -> dict[str, Any]:
    """The hyperparameters worth recording for ``estimator`` (scalars only)."""
    if kind == "xgboost":
        params = estimator.get_xgb_params()
        params["n_estimators"] = estimator.n_estimators
    else:
        # A pipeline's own parameters are its steps; the steps' settings are "step__name".
        nested = hasattr(estimator, "steps")
        params = {
            key: value
            for key, value in estimator.get_params().items()
            if ("__" in key or not nested) and isinstance(value, (int, float, str, bool))
        }
    return {key: value for key, value in params.items() if value is not None}


@dataclass
class Scorer:
    """A fitted estimator behind one method: fraud probabilities for a feature frame."""

    kind: str
    estimator: Any
    features: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)  # hyperparameters, for the record

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        values = frame.loc[:, list(self.features)].to_numpy(dtype=np.float32)
        if self.kind == "xgboost":
            return np.asarray(self.estimator.inplace_predict(values), dtype=np.float64)
        return self.estimator.predict_proba(values)[:, 1]

    def save(self, directory: Path) -> Path:
        """Write the estimator in its native format under ``directory``; return the file."""
        directory.mkdir(parents=True, exist_ok=True)
        if self.kind == "xgboost":
            path = directory / XGBOOST_FILE
            self.estimator.save_model(path)
        else:
            import skops.io

            path = directory / SKLEARN_FILE
            skops.io.dump(self.estimator, path)
        return path

    @classmethod
    def load(cls, path: Path, kind: str, features: Sequence[str]) -> Scorer:
        if kind == "xgboost":
            from xgboost import Booster

            booster = Booster()
            booster.load_model(path)
            # One thread per call: a served model answers many small requests at once, and
            # XGBoost's thread pool costs more than it saves on a handful of rows.
            booster.set_param({"nthread": 1})
            return cls(kind, booster, tuple(features))
        import skops.io

        # The file was written by ``save`` above and read back from our own registry; trust
        # exactly the types it contains (scikit-learn and NumPy types).
        untrusted = skops.io.get_untrusted_types(file=path)
        return cls(kind, skops.io.load(path, trusted=untrusted), tuple(features))


def fit_scorer(
    kind: str, config: ModelConfig, features: Sequence[str], frame: pd.DataFrame, label: str
) -> Scorer:
    """Fit an estimator of ``kind`` on ``frame`` and wrap it as a ``Scorer``."""
    X = frame.loc[:, list(features)].to_numpy(dtype=np.float32)
    y = frame[label].to_numpy()
    estimator = build_estimator(kind, config, frame[label])
    estimator.fit(X, y)
    # Keep the booster, not the sklearn wrapper: it is what is saved and served.
    fitted = estimator.get_booster() if kind == "xgboost" else estimator
    return Scorer(kind, fitted, tuple(features), estimator_params(kind, estimator))


def predictions_frame(probabilities: np.ndarray, threshold: float) -> pd.DataFrame:
    """The model's output: fraud probability and the 0/1 decision at ``threshold``."""
    return pd.DataFrame(
        {
            PROBABILITY_COLUMN: probabilities.astype(np.float64),
            DECISION_COLUMN: (probabilities >= threshold).astype(np.int64),
        }
    )


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
    kind: str, features: Sequence[str], threshold: float, engineered: bool, delay_days: int
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
    }


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
        probabilities = self.scorer.predict_proba(model_input)
        return predictions_frame(probabilities, self.threshold)
