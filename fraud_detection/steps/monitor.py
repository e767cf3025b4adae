"""The monitor step: windows of a scored file against the model's reference and test figures.

1. The model (``models:/<name>@<alias>`` or ``/<version>``) is loaded as serving loads it; its
   reference profile comes from its own artifacts (``contract.REFERENCE_PROFILE_FILE``: feature
   bins of the training window), and its score bins, alert rate and test figures from the
   evaluate run its version points to (``contract.SCORE_REFERENCE_ARTIFACT``: the test window,
   out of sample; ``reference_profile`` says what happens without one).
2. The scored file's features are recomputed with the model's recipe, by the code that
   computed them when ``serve.py batch`` scored it (``add_features``: the file holds the
   history they need; the rows of the first longest-window-plus-delay are that history and are
   not monitored). The model scores them again: a file whose ``fraud_probability`` differs was
   scored by another model and is refused. The service's log (``serve.py api --score-log``)
   carries the features it computed and each row's version (``scored_rows``).
3. Each window gets a child run; the parent run carries every figure stepped by window (the UI
   charts them over time), the thresholds as parameters and an HTML report.
4. A crossing is one line each, the retraining tag (``contract.RETRAIN_TAG``), exit 3
   and, with ``retrain``, the pipeline run on the most recent data through the normal gate.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.time import get_current_time_millis

from fraud_detection import contract
from fraud_detection.config import (
    CostConfig,
    DataConfig,
    ModelConfig,
    MonitorConfig,
    PipelineConfig,
    parse_duration,
)
from fraud_detection.config.fields import build_config, flatten
from fraud_detection.contract import Step
from fraud_detection.data.features import add_features
from fraud_detection.data.reading import read_table
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.data.validation import prepare_transactions
from fraud_detection.errors import DataError, LineageError, ThresholdCrossedError
from fraud_detection.modelling.pyfunc import PROBABILITY_COLUMN, feature_recipe
from fraud_detection.monitoring.checks import (
    Crossing,
    Thresholds,
    WindowFigures,
    crossings,
    cut_windows,
    measure_window,
)
from fraud_detection.monitoring.profile import ReferenceProfile
from fraud_detection.monitoring.reference import out_of_sample
from fraud_detection.monitoring.report import REPORT_ARTIFACT, render_report
from fraud_detection.online.score_log import RECEIVED_COLUMN, VERSION_COLUMN, version_label
from fraud_detection.serving.batch import output_column
from fraud_detection.serving.follower import ModelFollower, ServedModel, registry_target
from fraud_detection.tracking import step_run

logger = logging.getLogger(__name__)

Retrainer = Callable[[PipelineConfig], str]
# Scores read back from a file (CSV keeps 17 significant digits) match the model's to ~1e-16.
SCORE_TOLERANCE = 1e-6
LOG_BATCH_LIMIT = 1_000


@dataclass(frozen=True)
class Watched:
    """What one monitoring pass found."""

    model: str
    figures: list[WindowFigures]
    found: list[Crossing]


def monitor(config: MonitorConfig, retrainer: Retrainer | None = None) -> str:
    """Run the monitor step; return its report, or raise ``ThresholdCrossedError`` (exit 3) when a
    threshold is crossed, after the retraining ``config.retrain`` asks for."""
    if config.retrain and retrainer is None:
        raise LineageError("retrain=true needs the pipeline: run monitor.py or `mlflow run`")
    with step_run(Step.MONITOR, config.tracking.experiment_name, flatten(config)) as run:
        run_id = run.info.run_id
        follower = ModelFollower(config.model_uri, poll_seconds=0)
        model = follower.load()
        try:
            watched = _watch(config, model, run_id, run.info.experiment_id)
        finally:
            follower.close()
    summary = (
        f"monitor run {run_id}: {watched.model}, {len(watched.figures)} window(s) of "
        f"{config.window_days} days"
    )
    if not watched.found:
        return f"{summary}: no threshold crossed"
    for crossing in watched.found:
        logger.warning("%s", crossing.line())
    outcome = "retraining not asked (retrain=false)"
    if config.retrain and retrainer is not None:
        outcome = "retrained: " + retrainer(retraining_config(config, model))
        MlflowClient().set_tag(
            run_id, contract.MONITOR_RETRAIN_RESULT_TAG, outcome[: contract.TAG_LIMIT]
        )
    raise ThresholdCrossedError(
        f"{summary}: {len(watched.found)} threshold(s) crossed, first {watched.found[0].line()}; "
        f"{outcome}"
    )


def _watch(config: MonitorConfig, model: ServedModel, run_id: str, experiment_id: str) -> Watched:
    evaluate_run_id = evaluate_run_of(model)
    profile, reference_source = reference_profile(model, evaluate_run_id)
    MlflowClient().set_tag(run_id, contract.MONITOR_SCORE_REFERENCE_TAG, reference_source)
    baseline = model_test_figures(evaluate_run_id)
    settings = model.config
    features = list(settings["features"])
    rows, score_column, first_start = scored_rows(config, model, features)
    delay, _ = feature_recipe(settings)
    columns = config.columns
    time_column = columns.timestamp_column
    as_of = pd.Timestamp(config.as_of) if config.as_of else rows[time_column].max()
    windows = cut_windows(
        rows,
        time_column,
        first_start,
        pd.Timedelta(days=config.window_days),
        parse_duration("delay_days", delay),
        as_of,
        config.scored,
    )
    names = {
        "score": score_column,
        "label": columns.label_column,
        "amount": columns.amount_column,
        "day": DAY_COLUMN,
        "card": columns.customer_column,
    }
    review_cost = float(settings.get("review_cost", CostConfig().review_cost))
    baseline_ap = baseline.get("average_precision")
    figures = [
        WindowFigures(w, measure_window(w, profile, features, names, review_cost, baseline_ap))
        for w in windows
    ]
    if config.require_performance and not any("roc_auc" in f.metrics for f in figures):
        raise DataError(
            f"{config.scored}: no window has matured labels as of {as_of} (a window's labels "
            f"count once its end plus the model's label delay of {delay} days has passed)"
        )
    found = crossings(figures, _thresholds(config))
    described = f"{model.name} version {model.version}" if model.version else model.uri
    _log_windows(run_id, experiment_id, figures, found, model)
    html = render_report(described, figures, found, _thresholds(config))
    MlflowClient().log_text(run_id, html, REPORT_ARTIFACT)
    return Watched(described, figures, found)


def _thresholds(config: MonitorConfig) -> Thresholds:
    return Thresholds(
        config.psi_threshold,
        config.score_psi_threshold,
        config.alert_rate_ratio,
        config.min_ap_ratio,
    )


def load_profile(model: ServedModel) -> ReferenceProfile:
    """The reference profile saved inside the model's artifacts at training time.

    Raises:
        LineageError: the model has none (trained before monitoring existed).
    """
    path = Path(model.directory) / "artifacts" / contract.REFERENCE_PROFILE_FILE
    if not path.exists():
        raise LineageError(
            f"model {model.uri} has no reference profile ({contract.REFERENCE_PROFILE_FILE}): it "
            "was trained before monitoring existed; retrain it with train.py"
        )
    return ReferenceProfile.from_dict(json.loads(path.read_text()))


def model_test_figures(evaluate_run_id: str | None) -> dict[str, float]:
    """The model's test metrics (what evaluate logged as ``test_*``), from its version's
    evaluate run (``evaluate_run_of``); empty without one (a model outside the registry)."""
    if not evaluate_run_id:
        return {}
    metrics = MlflowClient().get_run(evaluate_run_id).data.metrics
    return {
        key.removeprefix(contract.TEST_PREFIX): value
        for key, value in metrics.items()
        if key.startswith(contract.TEST_PREFIX)
    }


def scored_rows(
    config: MonitorConfig, model: ServedModel, features: list[str]
) -> tuple[pd.DataFrame, str, pd.Timestamp]:
    """The scored file's rows with the model's features, the score column's name, and the
    start of the first window (after the history the features need).

    ``config.scored`` may be a directory of part files, such as the ``scored/`` folder of
    ``serve.py api --score-log``: the service's log holds the features it computed (monitored
    from the first row) and the version that scored each row (``model_version``). Rows of
    other versions (the alias moved) are scored again by ``model``: their features do not
    depend on the version, so every window is whole; the model's own rows must carry its
    scores.

    Raises:
        DataError: an empty file, a missing column, a feature with missing values.
        LineageError: scores the model does not give (another model scored the file), or a
            log without a row of the model's version.
    """
    table = _one_row_per_transaction(read_table(config.scored, parts=True), config)
    score_column = _score_column(table, config.scored)
    engineered = model.config.get("engineered_features", True)
    data = DataConfig(
        data=config.scored,
        columns=config.columns,
        feature_columns="" if engineered else ",".join(features),
    )
    rows = prepare_transactions(table, data, config.scored, require_labels=False)
    if config.labels:
        rows = _with_labels(rows, config)
    start = rows[config.columns.timestamp_column].min().floor("D")
    if not set(features) <= set(rows.columns):
        delay, windows = feature_recipe(model.config)
        rows = add_features(rows, config.columns, delay, windows)
        history = max(windows.seconds) + parse_duration("delay_days", delay).total_seconds()
        start += pd.Timedelta(days=math.ceil(history / 86_400))
    else:
        for name in features:
            if rows[name].isna().any():
                raise DataError(
                    f"{config.scored}: column {name} has {int(rows[name].isna().sum())} missing "
                    "value(s) (a part file written for a model of other features?)"
                )
    own = _scored_by_model(rows, model, config)
    expected = _require_same_model(rows, features, score_column, model, config, own)
    if not own.all():
        rows[score_column] = np.where(own, rows[score_column].to_numpy(np.float64), expected)
    return rows, score_column, start


def _one_row_per_transaction(table: pd.DataFrame, config: MonitorConfig) -> pd.DataFrame:
    """A service log's rows, once per transaction id: a client that retried after a restart
    of an in-memory service was scored (and logged) twice; the first answer counts."""
    id_column = config.columns.id_column
    if VERSION_COLUMN not in table.columns or id_column not in table.columns:
        return table
    repeated = table[id_column].duplicated()
    if repeated.any():
        logger.warning(
            "%s: %d transaction(s) logged more than once; the first score of each is monitored",
            config.scored,
            int(repeated.sum()),
        )
    return table[~repeated]


def _scored_by_model(rows: pd.DataFrame, model: ServedModel, config: MonitorConfig) -> np.ndarray:
    """Which rows ``model`` scored: all of a file without ``model_version`` (serve.py batch),
    else the rows naming its version.

    Raises:
        LineageError: none names it.
    """
    if VERSION_COLUMN not in rows.columns:
        return np.ones(len(rows), dtype=bool)
    versions = rows[VERSION_COLUMN].map(_version_text)
    own = (versions == version_label(model.version, model.uri)).to_numpy()
    if not own.any():
        found = sorted(set(versions))
        raise LineageError(
            f"{config.scored}: no row was scored by {model.uri} ({VERSION_COLUMN} holds "
            f"{', '.join(found[:5])}{' ...' if len(found) > 5 else ''}): monitor a version "
            "that served these rows (--model-uri models:/<name>/<version>)"
        )
    if not own.all():
        logger.info(
            "%s: %d of %d rows scored by other versions (%s): scored again by %s",
            config.scored,
            int((~own).sum()),
            len(own),
            ", ".join(sorted(set(versions[~own]))),
            model.uri,
        )
    return own


def _version_text(value: Any) -> str:
    """A ``model_version`` cell as the service wrote it (CSV reads "3" back as 3)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _score_column(table: pd.DataFrame, source: str) -> str:
    # serve.py batch names it predicted_fraud_probability when the input had a column of that name.
    shifted = output_column(PROBABILITY_COLUMN, pd.Index([PROBABILITY_COLUMN]))
    for name in (shifted, PROBABILITY_COLUMN):
        if name in table.columns:
            return name
    raise DataError(
        f"{source}: missing column {PROBABILITY_COLUMN} (monitor reads files that serve.py "
        "batch wrote)"
    )


def _with_labels(rows: pd.DataFrame, config: MonitorConfig) -> pd.DataFrame:
    """``rows`` with their labels from ``config.labels`` (id, label; a file, or a directory such
    as the ``labels/`` folder of ``serve.py api --score-log``), by transaction id.

    A transaction the labels do not name is genuine (0): feedback reports the frauds (and any
    genuine transaction someone checked), as the service's terminal-risk features count unknown
    labels as genuine; only windows whose labels matured are measured. An id labelled twice
    keeps its latest label (by ``received_at`` in a log, else the last in the file): a
    correction wins.
    """
    id_column, label = config.columns.id_column, config.columns.label_column
    labels = read_table(config.labels, parts=True)
    for name in (id_column, label):
        if name not in labels.columns:
            raise DataError(f"{config.labels}: missing column {name}")
    if id_column not in rows.columns:
        raise DataError(f"{config.scored}: missing column {id_column} to join the labels on")
    if RECEIVED_COLUMN in labels.columns:
        labels = labels.sort_values(RECEIVED_COLUMN, kind="stable")
    known = labels.drop_duplicates(id_column, keep="last").set_index(id_column)[label]
    return rows.assign(**{label: rows[id_column].map(known).fillna(0).astype(int)})


def _require_same_model(
    rows: pd.DataFrame,
    features: list[str],
    score_column: str,
    model: ServedModel,
    config: MonitorConfig,
    own: np.ndarray,
) -> np.ndarray:
    """The model's scores of ``rows``; those of its ``own`` rows must be the file's."""
    values = rows[features].to_numpy(np.float64)
    answer = model.answer(values)
    expected = np.asarray(answer[PROBABILITY_COLUMN] if isinstance(answer, Mapping) else answer)
    expected = expected.reshape(-1)
    difference = np.abs(expected - rows[score_column].to_numpy(np.float64))
    difference[~own] = 0.0
    if not np.all(difference <= SCORE_TOLERANCE):
        row = int(np.argmax(difference))
        when = rows[config.columns.timestamp_column].iloc[row]
        raise LineageError(
            f"{config.scored}: its {score_column} was not written by {model.uri} (largest "
            f"difference {difference[row]:.4f}, at {when}): monitor the model "
            "that scored it (--model-uri), or score the file again with this one"
        )
    return expected


def _log_windows(
    run_id: str,
    experiment_id: str,
    figures: list[WindowFigures],
    found: list[Crossing],
    model: ServedModel,
) -> None:
    """One child run per window; every figure on the parent too, stepped by window."""
    client = MlflowClient()
    now = get_current_time_millis()
    alarmed = {crossing.window for crossing in found}
    stepped: list[Metric] = []
    for item in figures:
        window = item.window
        values = {key: value for key, value in item.metrics.items() if math.isfinite(value)}
        # No step tag: "the latest monitor run" is the parent's.
        tags = {
            MLFLOW_PARENT_RUN_ID: run_id,
            contract.MONITOR_WINDOW_TAG: window.name,
        }
        if window.name in alarmed:
            tags[contract.RETRAIN_TAG] = "true"
        child = client.create_run(experiment_id, tags=tags, run_name=f"window {window.name}")
        client.log_batch(
            child.info.run_id,
            metrics=[Metric(key, value, now, 0) for key, value in values.items()],
            params=[
                Param("window_start", str(window.start)),
                Param("window_end", str(window.end)),
                Param("labels_matured", str(window.labels_matured).lower()),
            ],
        )
        client.set_terminated(child.info.run_id)
        stepped += [Metric(key, value, now, window.index) for key, value in values.items()]
    for start in range(0, len(stepped), LOG_BATCH_LIMIT):
        client.log_batch(run_id, metrics=stepped[start : start + LOG_BATCH_LIMIT])
    tags = [RunTag(contract.MONITOR_MODEL_VERSION_TAG, str(model.version or model.uri))]
    if found:
        lines = "\n".join(crossing.line() for crossing in found)
        tags += [
            RunTag(contract.RETRAIN_TAG, "true"),
            RunTag(contract.MONITOR_CROSSINGS_TAG, lines[: contract.TAG_LIMIT]),
        ]
    client.log_batch(run_id, tags=tags)


def retraining_config(config: MonitorConfig, model: ServedModel) -> PipelineConfig:
    """The pipeline that retrains ``model``: its train run's data recipe, model and costs, on
    ``config.data`` when given, with the latest training window the data allows, registered
    under the same name through ``config.gate``."""
    client = MlflowClient()
    if model.run_id is None:
        raise LineageError(f"model {model.uri} has no train run to take its recipe from")
    train_run = client.get_run(model.run_id)
    data, split = contract.read_data_recipe(train_run)
    if config.data:
        data = replace(data, data=config.data)
    params: dict[str, Any] = train_run.data.params
    target = registry_target(config.model_uri)
    return PipelineConfig(
        tracking=config.tracking,
        data=data,
        split=replace(split, train_start=""),
        model=build_config(ModelConfig, params),
        cost=build_config(CostConfig, params),
        model_name=target.name if target else model.name or "",
        gate=config.gate,
    )


def evaluate_run_of(model: ServedModel) -> str | None:
    """The evaluate run a registered version's tag names; None outside the registry or for a
    version registered without one."""
    if not (model.name and model.version):
        return None
    tags = MlflowClient().get_model_version(model.name, model.version).tags
    return tags.get(contract.EVALUATE_RUN_TAG) or None


def reference_profile(
    model: ServedModel, evaluate_run_id: str | None
) -> tuple[ReferenceProfile, str]:
    """What the windows are compared with, and where its score reference came from;
    ``evaluate_run_id``: the run ``evaluate_run_of(model)`` names, if any.

    The feature bins are the model's own profile's (its training window). The score bins and
    the alert rate are those its evaluate run measured on the test window, which the model
    never saw. A model without them (a ``runs:/`` URI, a version evaluated before evaluate
    saved them) is compared with its profile's validation scores instead, with a warning: that
    window is in sample (the final model was refitted on it), where the model alerts less
    often, so its alert-rate ratio reads higher (1.3-1.5 on quiet weeks of the default data).

    Raises:
        LineageError: the model has no profile; the evaluate run's threshold is not the model's.
    """
    profile = load_profile(model)
    reference = contract.read_score_reference(evaluate_run_id) if evaluate_run_id else None
    if reference is None:
        logger.warning(
            "Model %s has no out-of-sample score reference (no evaluate run, or one from before "
            "evaluate saved %s): its score PSI and alert-rate ratio are measured against its "
            "in-sample validation scores, on which it alerts less often than on new data; "
            "evaluate and register it again to compare with its test window",
            model.uri,
            contract.SCORE_REFERENCE_ARTIFACT,
        )
        return profile, "validation window (in sample): no evaluate run with a score reference"
    if not math.isclose(reference.threshold, profile.threshold, rel_tol=1e-9):
        raise LineageError(
            f"evaluate run {evaluate_run_id} measured its alert rate at threshold "
            f"{reference.threshold:.6f}, but model {model.uri} decides at "
            f"{profile.threshold:.6f}: the version's evaluate run is not this model's"
        )
    source = f"test window {reference.window} of evaluate run {evaluate_run_id} (out of sample)"
    return out_of_sample(profile, reference), source
