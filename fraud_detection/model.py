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

import contextlib
import importlib.metadata
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
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
# XGBoost's CPU-only distribution, and the platforms where it is installed instead of `xgboost`
# (the markers of pyproject.toml, python_env.yaml and conda.yaml; tests/test_environments.py).
XGBOOST_CPU = "xgboost-cpu"
XGBOOST_CPU_PLATFORMS = 'sys_platform == "linux" or sys_platform == "win32"'
XGBOOST_OTHER_PLATFORMS = 'sys_platform != "linux" and sys_platform != "win32"'


# The hyperparameter grids of the sweep: each point overrides ModelConfig's max_depth and
# learning_rate (and, in "large", two regularisers). Points are nested runs of the train run.
GRIDS: dict[str, tuple[dict[str, Any], ...]] = {
    "none": ({},),
    "small": tuple(
        {"max_depth": depth, "learning_rate": rate} for depth in (3, 5) for rate in (0.05, 0.1)
    ),
    "large": tuple(
        {"max_depth": depth, "learning_rate": rate, "min_child_weight": weight, "subsample": rows}
        for depth in (3, 4, 6, 8)
        for rate in (0.03, 0.1)
        for weight in (1, 5)
        for rows in (0.8, 1.0)
    ),
}


@dataclass(frozen=True)
class CandidateSpec:
    """One candidate of the sweep: a model family and the hyperparameters it overrides."""

    kind: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        settings = ",".join(f"{key}={value}" for key, value in self.overrides)
        return f"{self.kind}({settings})" if settings else self.kind


def candidate_specs(config: ModelConfig) -> list[CandidateSpec]:
    """The candidates ``config`` asks for: one per grid point for XGBoost, one baseline."""
    specs = []
    for kind in config.kinds:
        if kind == "xgboost":
            specs += [CandidateSpec(kind, tuple(point.items())) for point in GRIDS[config.grid]]
        else:
            specs.append(CandidateSpec(kind))
    return specs


def build_estimator(
    kind: str,
    config: ModelConfig,
    labels: pd.Series,
    overrides: dict[str, Any] | None = None,
    early_stopping: bool = False,
) -> Any:
    """Return an unfitted estimator of ``kind`` (one of ``config.MODEL_KINDS``).

    XGBoost takes its hyperparameters from ``config`` and ``overrides``; the two baselines use
    the settings of the book's chapter 3.4 (scikit-learn's defaults of its time).

    Args:
        kind: Model family.
        config: Hyperparameters (XGBoost) and thread count.
        labels: Training labels (for the "balanced" class weight, when asked for).
        overrides: Grid-point values replacing ``config``'s (XGBoost only).
        early_stopping: Stop when the last evaluation set's log loss stops improving.
    """
    n_jobs = config.n_jobs or os.cpu_count() or 1
    if kind == "xgboost":
        from xgboost import XGBClassifier

        positives = int(labels.sum())
        # 0 asks for the classic "balanced" weight. The default (1) leaves the loss unweighted:
        # the decision threshold, tuned on validation data, is where imbalance is handled.
        weight = config.scale_pos_weight or (len(labels) - positives) / max(positives, 1)
        params: dict[str, Any] = {
            "n_estimators": config.n_estimators,
            "max_depth": config.max_depth,
            "learning_rate": config.learning_rate,
            "scale_pos_weight": weight,
            "max_bin": config.max_bin,
            **(overrides or {}),
        }
        stop = config.early_stopping_rounds if early_stopping else 0
        return XGBClassifier(
            **params,
            tree_method="hist",
            n_jobs=n_jobs,
            random_state=0,
            # Log loss (the training objective) for the per-round curves and early stopping:
            # cheap on every round, where ranking metrics like aucpr sort all rows each time
            # (measured: twice the fit time). Candidates are then ranked by average precision.
            eval_metric="logloss",
            early_stopping_rounds=stop or None,
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
class FittedCandidate:
    """A fitted candidate: the estimator (scikit-learn API) and what training recorded."""

    spec: CandidateSpec
    estimator: Any
    params: dict[str, Any]
    # Boosting rounds kept by early stopping (None: not a boosted model, or no stopping).
    best_rounds: int | None = None
    # Per-round metrics, e.g. {"train_aucpr": [...], "validation_aucpr": [...]}.
    curves: dict[str, list[float]] = field(default_factory=dict)

    def predict_proba(self, frame: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
        """Fraud probabilities (XGBoost uses the rounds early stopping kept)."""
        return self.estimator.predict_proba(_matrix(frame, features))[:, 1]


def _matrix(frame: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    return frame.loc[:, list(features)].to_numpy(dtype=np.float32)


def fit_candidate(
    spec: CandidateSpec,
    config: ModelConfig,
    features: Sequence[str],
    training: pd.DataFrame,
    label: str,
    validation: pd.DataFrame | None = None,
    rounds: int | None = None,
    callbacks: Sequence[Any] = (),
) -> FittedCandidate:
    """Fit ``spec`` on ``training``; with ``validation``, stop early on it and record curves.

    Args:
        spec: The candidate.
        config: Shared hyperparameters.
        features: Feature columns, in model order.
        training: Rows to fit on.
        label: Label column.
        validation: Rows to watch (and stop early on) while boosting.
        rounds: Boosting rounds to use instead of ``config.n_estimators`` (a refit).
        callbacks: XGBoost training callbacks (checkpoints).
    """
    X, y = _matrix(training, features), training[label].to_numpy()
    overrides = dict(spec.overrides)
    if rounds is not None:
        overrides["n_estimators"] = rounds
    estimator = build_estimator(
        spec.kind, config, training[label], overrides, early_stopping=validation is not None
    )
    if spec.kind != "xgboost":
        estimator.fit(X, y)
        return FittedCandidate(spec, estimator, estimator_params(spec.kind, estimator))

    eval_sets = [(X, y)]
    if validation is not None:
        eval_sets.append((_matrix(validation, features), validation[label].to_numpy()))
    if callbacks:
        # Before fitting only: set_params on a fitted XGBClassifier rewrites its booster.
        estimator.set_params(callbacks=list(callbacks))
    estimator.fit(X, y, eval_set=eval_sets, verbose=False)
    names = ["train", "validation"]
    curves = {
        f"{names[index]}_{metric}": [float(v) for v in values]
        for index, results in enumerate(estimator.evals_result().values())
        for metric, values in results.items()
    }
    stopped = validation is not None and config.early_stopping_rounds > 0
    best_rounds = estimator.best_iteration + 1 if stopped else estimator.n_estimators
    return FittedCandidate(
        spec, estimator, estimator_params(spec.kind, estimator), best_rounds, curves
    )


@dataclass
class Scorer:
    """A fitted estimator behind one method: fraud probabilities for a feature frame."""

    kind: str
    estimator: Any
    features: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)  # hyperparameters, for the record

    @classmethod
    def from_fitted(cls, fitted: FittedCandidate, features: Sequence[str]) -> Scorer:
        """Keep the booster, not the scikit-learn wrapper: it is what is saved and served."""
        estimator = fitted.estimator
        if fitted.spec.kind == "xgboost":
            estimator = estimator.get_booster()
        return cls(fitted.spec.kind, estimator, tuple(features), fitted.params)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_proba_values(_matrix(frame, self.features))

    def predict_proba_values(self, values: np.ndarray) -> np.ndarray:
        """Fraud probabilities for a matrix whose columns are ``self.features``, in order."""
        # float32 is what the trees were fitted on; casting here keeps every caller identical.
        values = np.asarray(values, dtype=np.float32)
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
    """Fit an estimator of ``kind`` with ``config`` as it is (no grid, no early stopping)."""
    fitted = fit_candidate(CandidateSpec(kind), config, features, frame, label)
    return Scorer.from_fitted(fitted, features)


def feature_importance(scorer: Scorer) -> pd.Series:
    """Importance of each feature: total gain, impurity decrease or |standardised coefficient|."""
    if scorer.kind == "xgboost":
        gains = scorer.estimator.get_score(importance_type="total_gain")
        # The booster names features f0, f1, ... (it was fitted on a matrix).
        values = [gains.get(f"f{index}", 0.0) for index in range(len(scorer.features))]
    elif scorer.kind == "random_forest":
        values = scorer.estimator.feature_importances_
    else:
        values = np.abs(scorer.estimator[-1].coef_[0])
    return pd.Series(values, index=list(scorer.features), dtype=float).sort_values()


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
        values = _matrix(model_input, self.scorer.features)
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
