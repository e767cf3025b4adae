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
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

from fraud_detection.config import DEFAULT_DELAY_DAYS, DEFAULT_FEATURE_WINDOWS, FeatureWindows
from fraud_detection.modelling.estimators import (
    ExplanationError,
    Scorer,
    matrix,
)

logger = logging.getLogger(__name__)

PROBABILITY_COLUMN = "fraud_probability"
DECISION_COLUMN = "is_fraud"
# Reason codes, on request (predict params {"reasons": k}): for rank i in 1..k the feature that
# moved the row's margin most (by absolute contribution) and its signed contribution, then the
# bias, so that the contributions of all features plus the bias are the margin (log-odds).
REASONS_PARAM = "reasons"
REASON_BIAS_COLUMN = "reason_bias"
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


def reason_feature_column(rank: int) -> str:
    """Name of the column holding the feature of reason ``rank`` (1 = the strongest)."""
    return f"reason_{rank}_feature"


def reason_contribution_column(rank: int) -> str:
    """Name of the column holding the signed margin contribution of reason ``rank``."""
    return f"reason_{rank}_contribution"


def reason_column_names(k: int) -> list[str]:
    """The reason columns ``k`` reasons add after the decision, in output order."""
    if k == 0:
        return []
    ranks = range(1, k + 1)
    pairs = [(reason_feature_column(i), reason_contribution_column(i)) for i in ranks]
    return [name for pair in pairs for name in pair] + [REASON_BIAS_COLUMN]


def reasons_columns(
    contributions: np.ndarray, bias: np.ndarray, features: Sequence[str], k: int
) -> dict[str, np.ndarray]:
    """The top-``k`` reasons of each row: features by absolute contribution, largest first
    (ties in feature order), their signed contributions, and the bias. Empty for ``k`` = 0."""
    if k == 0:
        return {}
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :k]
    names = np.asarray(list(features), dtype=object)
    rows = np.arange(contributions.shape[0])
    columns: dict[str, np.ndarray] = {}
    for rank in range(k):
        picked = order[:, rank]
        columns[reason_feature_column(rank + 1)] = names[picked]
        columns[reason_contribution_column(rank + 1)] = contributions[rows, picked].astype(
            np.float64
        )
    columns[REASON_BIAS_COLUMN] = np.asarray(bias, dtype=np.float64)
    return columns


def reasons_count(params: Mapping[str, Any] | None, n_features: int) -> int:
    """The number of reasons ``params`` asks for (0 when absent).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE, naming the parameter, for anything but an
            integer from 0 to ``n_features``.
    """
    value = (params or {}).get(REASONS_PARAM)
    if value is None:
        return 0
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not (0 <= value <= n_features)
    ):
        raise MlflowException(
            f"parameter {REASONS_PARAM} must be an integer from 0 to {n_features} (the number "
            f"of features), got {value!r}",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return int(value)


def model_signature(features: Sequence[str]) -> ModelSignature:
    """Input: one double per feature, all required. Output: probability and 0/1 decision.

    Params: ``reasons`` (long, default 0), the number of reason codes to add per row. The
    reason columns are not in the output schema: how many there are depends on the request,
    and MLflow does not check outputs against it (only ``spark_udf`` reads it, for its default
    result type; ``spark.scoring`` passes its own).
    """
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.double, name) for name in features]),
        outputs=Schema(
            [ColSpec(DataType.double, PROBABILITY_COLUMN), ColSpec(DataType.long, DECISION_COLUMN)]
        ),
        params=ParamSchema([ParamSpec(REASONS_PARAM, DataType.long, 0)]),
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
        k = reasons_count(params, len(self.scorer.features))
        if k == 0:
            return predictions_frame(self.scorer.predict_proba_values(values), self.threshold)
        return pd.DataFrame(self.explain_values(values, k))

    def predict_values(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """``predict`` without pandas, for callers that checked the input themselves.

        ``values`` holds one row per transaction and one column per feature, in the order of
        ``self.scorer.features`` (the signature's order). Scoring services use this to skip the
        DataFrame round trip, which costs more than the model itself on a single row.
        """
        return predictions_columns(self.scorer.predict_proba_values(values), self.threshold)

    def explain_values(self, values: np.ndarray, k: int) -> dict[str, np.ndarray]:
        """``predict_values`` plus the top-``k`` reason codes of each row (``k`` >= 1, checked
        by the caller): the columns ``predict`` answers for ``params={"reasons": k}``.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE when the model kind has no contributions.
        """
        return {**self.predict_values(values), **self.reason_values(values, k)}

    def reason_values(self, values: np.ndarray, k: int) -> dict[str, np.ndarray]:
        """The reason-code columns alone (``explain_values`` without the prediction), for
        callers that computed the prediction another way (``serving.fast_path``)."""
        try:
            contributions, bias = self.scorer.contributions_values(values)
        except ExplanationError as error:
            raise MlflowException(
                f"parameter {REASONS_PARAM}: {error}", error_code=INVALID_PARAMETER_VALUE
            ) from error
        return reasons_columns(contributions, bias, self.scorer.features, k)
