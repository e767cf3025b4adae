"""The model a scoring service answers with, and the thread that keeps it on its registry alias.

``models:/fraud-detector@champion`` is a pointer that ``register`` (promotion) and a rollback
move. ``ModelFollower`` resolves it at start, then every ``poll_seconds`` asks the registry where
it points now. When it has moved, the new version is loaded *beside* the one being served,
checked on a row, and only then swapped in with one reference assignment. A request reads that
reference once and scores with that model from start to end, so no request fails or mixes two
versions during a swap; the old version is dropped when its last request is done. If the new
version cannot be loaded the service keeps answering with the old one and retries at the next
poll. ``check_now`` wakes the thread before its next poll (a registry webhook, ``webhooks.py``).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fraud_detection.errors import (
    LineageError,
    OutageError,
)
from fraud_detection.hardening.outages import artifact_store_outage, diagnose
from fraud_detection.modelling.pyfunc import (
    REASONS_PARAM,
    predictions_columns,
    reasons_columns,
    reasons_count,
)
from fraud_detection.serving.fast_contributions import verified_contributions
from fraud_detection.serving.fast_path import (
    SMALL_BATCH_ROWS,
    verified_walk,
)
from fraud_detection.serving.protocol import InputSchema, RequestError

logger = logging.getLogger(__name__)

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)/?$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")

Predict = Callable[[np.ndarray], Mapping[str, np.ndarray] | np.ndarray]
# (checked matrix, k >= 1) -> the prediction columns plus k reason codes (``pyfunc``'s names).
Explain = Callable[[np.ndarray, int], Mapping[str, np.ndarray] | np.ndarray]


@dataclass(frozen=True)
class RegistryTarget:
    """What a ``models:/`` URI names in the registry: a model and an alias or a version."""

    name: str
    alias: str | None = None
    version: str | None = None


def registry_target(model_uri: str) -> RegistryTarget | None:
    """``models:/name@alias`` or ``models:/name/3`` -> its target; other URIs -> None."""
    if match := _ALIAS_URI.match(model_uri):
        return RegistryTarget(match["name"], alias=match["alias"])
    if match := _VERSION_URI.match(model_uri):
        return RegistryTarget(match["name"], version=match["version"])
    return None


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version and everything a request needs from it."""

    uri: str  # what was loaded: models:/<name>/<version>, or the URI as given
    name: str | None
    version: str | None
    run_id: str | None
    threshold: float | None
    schema: InputSchema
    predict: Predict
    config: Mapping[str, Any]  # the model's model_config (features, threshold, feature recipe)
    directory: str = field(repr=False)  # local copy of the artifacts, removed when replaced
    loaded_at: float = field(default_factory=time.time)
    explain: Explain | None = field(default=None, repr=False)  # None: no reason codes

    def answer(self, values: np.ndarray, reasons: int = 0) -> Mapping[str, np.ndarray] | np.ndarray:
        """The response columns for a checked float matrix (one row per transaction, columns
        in ``schema`` order): ``predict``'s, then ``reasons`` reason codes per row, the columns
        ``mlflow models serve`` answers for ``"params": {"reasons": k}``. Take ``reasons`` from
        ``requested_reasons``; 0 is the plain prediction, on the fast path.

        Raises:
            RequestError: 400 when this model gives no reason codes.
        """
        if reasons == 0:
            return self.predict(values)
        if self.explain is None:
            raise _invalid_reasons("this model does not answer reason codes")
        try:
            return self.explain(values, reasons)
        except MlflowException as error:
            if error.error_code != "INVALID_PARAMETER_VALUE":
                raise
            raise _invalid_reasons(error.message) from error

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "threshold": self.threshold,
            "model_uri": self.uri,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
        }


def requested_reasons(params: Mapping[str, Any], model: ServedModel) -> int:
    """The number of reason codes a request's ``params`` ask of ``model`` (0 when absent).

    Raises:
        RequestError: 400 naming the parameter, unless it is an integer from 0 to the
            number of the model's features (what the pyfunc itself accepts).
    """
    try:
        return reasons_count(params, len(model.schema.columns))
    except MlflowException as error:
        raise _invalid_reasons(error.message) from error


def _invalid_reasons(message: str) -> RequestError:
    if not message.startswith(f"parameter {REASONS_PARAM}"):
        message = f"parameter {REASONS_PARAM}: {message}"
    return RequestError(400, "INVALID_PARAMETER_VALUE", message)


def load_served_model(
    uri: str, name: str | None = None, version: str | None = None, run_id: str | None = None
) -> ServedModel:
    """Load ``uri`` into memory, check it answers one row, and describe it.

    Raises:
        LineageError: the model cannot be loaded, or its signature cannot be served here.
    """
    directory = tempfile.mkdtemp(prefix="fraud-serving-")
    try:
        try:
            model = mlflow.pyfunc.load_model(uri, dst_path=directory)
        except MlflowException as error:
            # MLflow reports an artifact store it cannot read as a missing file: look first.
            if (outage := diagnose(error) or artifact_store_outage(uri)) is not None:
                raise OutageError(outage) from error
            raise LineageError(f"cannot load model {uri}: {error.message}") from error
        try:
            schema = InputSchema.from_signature(model.metadata.get_input_schema())
        except ValueError as error:
            raise LineageError(f"cannot serve model {uri}: {error}") from error
        fast_predict, fast_explain = _fast_paths(model, schema)
        predict = fast_predict or _pyfunc_predict(model, schema)
        # The first call pays XGBoost's one-off set-up; a request should not.
        predict(np.zeros((1, len(schema.columns))))
        config = dict(model.model_config or {})
        threshold = config.get("threshold")
        return ServedModel(
            uri=uri,
            name=name,
            version=version,
            run_id=run_id if run_id is not None else model.metadata.run_id,
            threshold=float(threshold) if threshold is not None else None,
            schema=schema,
            predict=predict,
            config=config,
            directory=directory,
            explain=fast_explain or _pyfunc_explainer(model, schema),
        )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _fast_paths(
    model: mlflow.pyfunc.PyFuncModel, schema: InputSchema
) -> tuple[Predict | None, Explain | None]:
    """The model's own matrix entry points (``FraudDetector.predict_values`` and
    ``explain_values``), when it has them; (None, None) otherwise.

    They skip pyfunc's DataFrame conversion and schema enforcement: the request was already
    checked against the same signature by ``protocol.parse_request``. An XGBoost model answers
    requests of a few rows through ``fast_path`` (the same numbers, without XGBoost's fixed cost
    per call), and their reason codes through ``fast_contributions`` (XGBoost's TreeSHAP within
    its tolerance). Larger requests, and models that either module's check at load refuses, go
    through XGBoost.
    """
    try:
        python_model = model.unwrap_python_model()
    except MlflowException:
        return None, None  # not a Python model: use the generic path
    predict_values = getattr(python_model, "predict_values", None)
    explain_values = getattr(python_model, "explain_values", None)
    scorer = getattr(python_model, "scorer", None)
    if predict_values is None or tuple(getattr(scorer, "features", ())) != schema.names:
        return None, None
    walk = verified_walk(scorer.estimator, len(schema.names)) if scorer.kind == "xgboost" else None
    if walk is None:
        return predict_values, explain_values
    threshold = python_model.threshold
    shap = None  # NumPy TreeSHAP, when it agrees with XGBoost's on this model
    if explain_values is not None:
        shap = verified_contributions(scorer.estimator, walk, len(schema.names))

    def predict(values: np.ndarray) -> Mapping[str, np.ndarray]:
        if len(values) <= SMALL_BATCH_ROWS:
            return predictions_columns(walk.probabilities(values), threshold)
        return predict_values(values)

    def explain(values: np.ndarray, k: int) -> Mapping[str, np.ndarray]:
        if len(values) > SMALL_BATCH_ROWS:
            return explain_values(values, k)
        if shap is None:
            return {**predict(values), **python_model.reason_values(values, k)}
        return {**predict(values), **reasons_columns(*shap.values(values), schema.names, k)}

    return predict, explain if explain_values is not None else None


def _pyfunc_explainer(model: mlflow.pyfunc.PyFuncModel, schema: InputSchema) -> Explain | None:
    """Reason codes through the pyfunc, ``params={"reasons": k}``, for a model that declares
    the parameter in its signature but has no matrix entry point; None if it does not."""
    declared = model.metadata.get_params_schema()
    if declared is None or REASONS_PARAM not in {spec.name for spec in declared.params}:
        return None

    def explain(values: np.ndarray, k: int) -> Mapping[str, np.ndarray] | np.ndarray:
        return _pyfunc_predict(model, schema, {REASONS_PARAM: k})(values)

    return explain


def _pyfunc_predict(
    model: mlflow.pyfunc.PyFuncModel, schema: InputSchema, params: dict[str, Any] | None = None
) -> Predict:
    dtypes = {
        column.name: {
            "long": np.int64,
            "integer": np.int32,
            "boolean": bool,
            "float": np.float32,
        }.get(column.type, np.float64)
        for column in schema.columns
    }

    def predict(values: np.ndarray) -> Mapping[str, np.ndarray] | np.ndarray:
        frame = pd.DataFrame(values, columns=list(schema.names)).astype(dtypes)
        output = model.predict(frame, params=params) if params else model.predict(frame)
        if isinstance(output, pd.DataFrame):
            return {str(name): output[name].to_numpy() for name in output.columns}
        return np.asarray(output)

    return predict


class ModelFollower:
    """Serves the version a model URI points at, and follows the alias when it moves.

    Args:
        model_uri: ``models:/<name>@<alias>`` (followed), ``models:/<name>/<version>`` or any
            other URI MLflow can load (served as it is).
        poll_seconds: How often to ask the registry where the alias points; 0 never asks.
        client: Registry client (default: MLflow's, from the environment).
        after_swap: Called (in the follower's thread) once a new version serves.
        wake_on_demand: Run the thread even with ``poll_seconds`` 0, so that ``check_now``
            (registry webhooks) still moves the served version.
    """

    def __init__(
        self,
        model_uri: str,
        poll_seconds: float,
        client: MlflowClient | None = None,
        after_swap: Callable[[], None] | None = None,
        wake_on_demand: bool = False,
    ) -> None:
        self.model_uri = model_uri
        self.poll_seconds = poll_seconds
        self.target = registry_target(model_uri)
        self._client = client
        self._after_swap = after_swap
        self._wake_on_demand = wake_on_demand
        self._current: ServedModel | None = None
        self._stop = threading.Event()
        # Set by check_now and stop: the thread then checks (or stops) at once.
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0
        self.failed_polls = 0
        self.checks = 0  # times the thread asked the registry (timed polls and check_now)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient()
        return self._client

    @property
    def follows_alias(self) -> bool:
        return self.target is not None and self.target.alias is not None

    @property
    def current(self) -> ServedModel:
        """The model to answer with; read it once per request."""
        model = self._current
        if model is None:
            raise RuntimeError("ModelFollower.load() has not run")
        return model

    def load(self) -> ServedModel:
        """Resolve the URI and load its model (once, before serving)."""
        self._current = self._load(self.resolve())
        served = self._current
        logger.info(
            "Serving %s%s", self.model_uri, f" (version {served.version})" if served.version else ""
        )
        return served

    def poll(self) -> bool:
        """Ask the registry where the alias points; swap models if it moved. True if swapped."""
        if not self.follows_alias:
            return False
        resolved = self.resolve()
        previous = self.current
        if resolved[1] == previous.version:
            return False
        logger.info(
            "%s moved from version %s to %s: loading it",
            self.model_uri,
            previous.version,
            resolved[1],
        )
        replacement = self._load(resolved)
        self._current = replacement  # the swap: one reference assignment
        self.swaps += 1
        logger.info("Now serving %s version %s", self.target.name, replacement.version)
        # Requests that already hold the old model keep it alive; its files are no longer read.
        shutil.rmtree(previous.directory, ignore_errors=True)
        if self._after_swap is not None:
            self._after_swap()
        return True

    def start(self) -> None:
        """Follow the alias in a background thread (no-op without an alias, or without a poll
        interval unless ``wake_on_demand``)."""
        if not self.follows_alias or self._thread is not None:
            return
        if self.poll_seconds <= 0 and not self._wake_on_demand:
            return
        self._stop.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._follow, name="alias-follower", daemon=True)
        self._thread.start()

    def check_now(self) -> bool:
        """Ask the thread to check the alias at once instead of at its next poll.

        Thread-safe and returns at once (the check and any load run in the follower's thread,
        never in the caller's event loop). Requests that arrive during a check are merged into
        one more check after it, so none is lost. False when no thread follows the alias.
        """
        if self._thread is None:
            return False
        self._wake.set()
        return True

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def close(self) -> None:
        """Stop following and remove the served model's local files."""
        self.stop()
        if self._current is not None:
            shutil.rmtree(self._current.directory, ignore_errors=True)

    def _follow(self) -> None:
        timeout = self.poll_seconds if self.poll_seconds > 0 else None
        while True:
            self._wake.wait(timeout)
            # Cleared before checking: a wake-up that arrives during the check is kept for the
            # next turn, so the version it announces is not missed.
            self._wake.clear()
            if self._stop.is_set():
                return
            self.checks += 1
            try:
                self.poll()
            # A registry outage or a broken new version must not take the service down: keep
            # answering with the model in memory and try again at the next poll.
            except Exception as error:  # noqa: BLE001
                self.failed_polls += 1
                logger.warning("Still serving version %s: %s", self.current.version, error)

    def resolve(self) -> tuple[str, str | None, str | None]:
        """(URI to load, version, run id) of what ``model_uri`` names right now."""
        target = self.target
        if target is None:
            return self.model_uri, None, None
        try:
            if target.alias is not None:
                version = self.client.get_model_version_by_alias(target.name, target.alias)
            else:
                version = self.client.get_model_version(target.name, target.version)
        except MlflowException as error:
            if (outage := diagnose(error)) is not None:
                raise OutageError(outage) from error
            raise LineageError(f"cannot resolve {self.model_uri}: {error.message}") from error
        return f"models:/{target.name}/{version.version}", str(version.version), version.run_id

    def _load(self, resolved: tuple[str, str | None, str | None]) -> ServedModel:
        uri, version, run_id = resolved
        name = self.target.name if self.target else None
        return load_served_model(uri, name=name, version=version, run_id=run_id)
