"""Candidate estimators: the sweep's grid, how each kind is built, fitted, saved and scored.

- XGBoost boosters are saved in XGBoost's own UBJSON format and scored with ``inplace_predict``
  (no DMatrix copy; the fastest path for small requests).
- scikit-learn estimators (the logistic-regression and random-forest baselines) are saved with
  skops, the safe format MLflow's own sklearn flavor uses, instead of pickle.

FIXME(fork): another estimator kind goes here (``build_estimator``, and ``Scorer`` if it is
saved differently) and in ``config.MODEL_KINDS``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraud_detection.config import ModelConfig
from fraud_detection.errors import PipelineError

logger = logging.getLogger(__name__)


class ExplanationError(PipelineError):
    """The estimator cannot split its score into per-feature contributions."""


XGBOOST_FILE = "booster.ubj"
SKLEARN_FILE = "estimator.skops"


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
        return self.estimator.predict_proba(matrix(frame, features))[:, 1]


def matrix(frame: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
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
    X, y = matrix(training, features), training[label].to_numpy()
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
        eval_sets.append((matrix(validation, features), validation[label].to_numpy()))
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
        return self.predict_proba_values(matrix(frame, self.features))

    def predict_proba_values(self, values: np.ndarray) -> np.ndarray:
        """Fraud probabilities for a matrix whose columns are ``self.features``, in order."""
        # float32 is what the trees were fitted on; casting here keeps every caller identical.
        values = np.asarray(values, dtype=np.float32)
        if self.kind == "xgboost":
            return np.asarray(self.estimator.inplace_predict(values), dtype=np.float64)
        return self.estimator.predict_proba(values)[:, 1]

    def contributions_values(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each feature's signed contribution to each row's margin (log-odds), and the bias.

        ``contributions.sum(axis=1) + bias`` is the row's margin, the logit of its fraud
        probability. XGBoost: its own exact TreeSHAP (``pred_contribs``; float32 sums, so
        equal to the margin within about 1e-5). A scaler + logistic-regression pipeline:
        coefficient times standardised value, the intercept as bias (equal within float64
        rounding).

        Returns:
            (contributions, shape (rows, features); bias, shape (rows,)), both float64.

        Raises:
            ExplanationError: the estimator gives no per-feature contributions (a forest).
        """
        values = np.asarray(values, dtype=np.float32)
        if self.kind == "xgboost":
            from xgboost import DMatrix

            # A booster trained on Spark carries feature names; the matrix must carry the same.
            data = DMatrix(values, feature_names=self.estimator.feature_names, nthread=1)
            raw = np.asarray(self.estimator.predict(data, pred_contribs=True), dtype=np.float64)
            return raw[:, :-1], raw[:, -1]
        steps = getattr(self.estimator, "steps", None)
        if steps is not None and len(steps) == 2:
            from sklearn.linear_model import LogisticRegression
            from sklearn.preprocessing import StandardScaler

            scaler, linear = steps[0][1], steps[1][1]
            if isinstance(scaler, StandardScaler) and isinstance(linear, LogisticRegression):
                standardised = scaler.transform(values).astype(np.float64)
                contributions = standardised * np.ravel(linear.coef_).astype(np.float64)
                return contributions, np.full(len(values), float(linear.intercept_[0]))
        raise ExplanationError(f"model kind {self.kind} gives no per-feature contributions")

    def margin_values(self, values: np.ndarray) -> np.ndarray:
        """Each row's margin (log-odds of fraud), as the estimator computes it."""
        values = np.asarray(values, dtype=np.float32)
        if self.kind == "xgboost":
            margin = self.estimator.inplace_predict(values, predict_type="margin")
            return np.asarray(margin, dtype=np.float64)
        return np.asarray(self.estimator.decision_function(values), dtype=np.float64)

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


def feature_importance(scorer: Scorer) -> pd.Series:
    """Importance of each feature: XGBoost's total gain, a forest's impurity decrease, or a
    linear model's |coefficient| on standardised features. Empty for an estimator that has
    none of these (the model card then says so)."""
    estimator = scorer.estimator
    final = estimator[-1] if hasattr(estimator, "steps") else estimator
    if scorer.kind == "xgboost":
        gains = estimator.get_score(importance_type="total_gain")
        # A booster fitted on a matrix names its features f0, f1, ...; the Spark engine's
        # carries their names.
        names = estimator.feature_names or [f"f{index}" for index in range(len(scorer.features))]
        values = [gains.get(name, 0.0) for name in names]
    elif hasattr(final, "feature_importances_"):
        values = final.feature_importances_
    elif hasattr(final, "coef_"):
        values = np.abs(np.ravel(final.coef_))
    else:
        return pd.Series(dtype=float)
    return pd.Series(values, index=list(scorer.features), dtype=float).sort_values()
