"""What the steps hand each other through MLflow, named once: tags, params, artifacts, metrics.

Steps never import each other: a step finds its inputs in the runs, models and aliases an
earlier step left, and this module is the only place that knows their names. Each step writes
with the helpers below and reads with the typed readers, which fail with ``LineageError`` when
something is missing (an outage is told apart by ``outages.diagnose``, never blamed on lineage).

    every run    fraud.step (main, train, candidate, evaluate, register); fraud.error on failure;
                 under `mlflow run` in Default: fraud.launcher_run_id <-> fraud.continued_in
    train        params data_source, data_fingerprint, resolved_train_start, ...; artifact
                 data_recipe.json (the exact data and split); tags fraud.model_id,
                 fraud.best_candidate_run_id; child runs tagged fraud.candidate=<name>
    evaluate     tags fraud.train_run_id, fraud.model_id, fraud.gate (passed/failed),
                 fraud.gate_report, fraud.champion_version, fraud.champion_comparison;
                 metrics test_*, champion_test_*; artifacts gate.json, model_card.md/.html,
                 score_reference.json (the test window's score bins and alert rate)
    register     version tags: lineage, gate, decision (fraud.decision, fraud.decision_reason,
                 fraud.previous_champion, fraud.approved_*, fraud.rolled_back_*); run tags
                 fraud.action, fraud.decision, fraud.version; artifact decision.json
    main         tags pointing at the three step runs and the decision
    monitor      parent run: metrics stepped by window, fraud.monitor.retrain when a threshold
                 is crossed; one child run per window; the model's artifact
                 reference_profile.json (written by train) is its reference for features,
                 its evaluate run's score_reference.json for the score and alert rate
                 (fraud.monitor.score_reference says which one it used)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from fraud_detection.config import (
    DataConfig,
    SplitConfig,
)
from fraud_detection.config.fields import (
    build_config,
    flatten,
)
from fraud_detection.errors import (
    LineageError,
    OutageError,
)
from fraud_detection.hardening.outages import artifact_store_outage, diagnose
from fraud_detection.monitoring.reference import ScoreReference

PREFIX = "fraud."


class Step(StrEnum):
    """The value of a run's ``fraud.step`` tag."""

    MAIN = "main"
    TRAIN = "train"
    CANDIDATE = "candidate"
    EVALUATE = "evaluate"
    REGISTER = "register"
    MONITOR = "monitor"


# --- every run ----------------------------------------------------------------------------------
STEP_TAG = PREFIX + "step"
ERROR_TAG = PREFIX + "error"
LAUNCHER_TAG = PREFIX + "launcher_run_id"
CONTINUED_IN_TAG = PREFIX + "continued_in"
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own

# --- train --------------------------------------------------------------------------------------
MODEL_ID_TAG = PREFIX + "model_id"
CANDIDATE_TAG = PREFIX + "candidate"
BEST_CANDIDATE_RUN_TAG = PREFIX + "best_candidate_run_id"
DATA_SOURCE_PARAM = "data_source"
DATA_FINGERPRINT_PARAM = "data_fingerprint"
# The train step's own parameter (``TrainConfig.engine``); runs from before it: pandas.
ENGINE_PARAM = "engine"
RESOLVED_TRAIN_START_PARAM = "resolved_train_start"
DATA_RECIPE_ARTIFACT = "data_recipe.json"
CHECKPOINTS_ARTIFACT_DIR = "checkpoints"
MODEL_NAME_IN_RUN = "model"
SELECTION_METRIC = "validation_average_precision"
EXPECTED_SAVINGS_METRIC = "validation_expected_savings"
# The monitor's reference (``monitoring.profile``): a key of the logged model's artifacts, and
# the file it lands in, ``<model>/artifacts/<file>``, found from any models:/ URI.
REFERENCE_PROFILE_ARTIFACT = "reference_profile"
REFERENCE_PROFILE_FILE = "reference_profile.json"

# --- evaluate -----------------------------------------------------------------------------------
TRAIN_RUN_TAG = PREFIX + "train_run_id"
CHAMPION_VERSION_TAG = PREFIX + "champion_version"
CHAMPION_COMPARISON_TAG = PREFIX + "champion_comparison"
GATE_TAG = PREFIX + "gate"
GATE_REPORT_TAG = PREFIX + "gate_report"
GATE_PASSED, GATE_FAILED = "passed", "failed"
GATE_ARTIFACT = "gate.json"
MODEL_CARD_MARKDOWN = "model_card.md"
MODEL_CARD_HTML = "model_card.html"
TEST_PREFIX = "test_"
CHAMPION_PREFIX = "champion_test_"
# The monitor's out-of-sample reference for the score and the alert rate
# (``monitoring.reference``): the test window's, scored by the model it evaluated.
SCORE_REFERENCE_ARTIFACT = "score_reference.json"

# --- register -----------------------------------------------------------------------------------
ACTION_TAG = PREFIX + "action"
EVALUATE_RUN_TAG = PREFIX + "evaluate_run_id"
DECISION_TAG = PREFIX + "decision"
REASON_TAG = PREFIX + "decision_reason"
VERSION_TAG = PREFIX + "version"
COMPARED_CHAMPION_TAG = PREFIX + "compared_champion"
PREVIOUS_CHAMPION_TAG = PREFIX + "previous_champion"
RESTORED_AT_TAG = PREFIX + "restored_at"
ROLLED_BACK_FROM_TAG = PREFIX + "rolled_back_from"
ROLLBACK_REASON_TAG = PREFIX + "reason"
DECISION_ARTIFACT = "decision.json"

# --- main ---------------------------------------------------------------------------------------
REGISTER_RUN_TAG = PREFIX + "register_run_id"

# --- monitor ------------------------------------------------------------------------------------
# Set ("true") on a monitoring run, parent and window, when a threshold was crossed.
RETRAIN_TAG = PREFIX + "monitor.retrain"
MONITOR_WINDOW_TAG = PREFIX + "monitor.window"  # the window's start, on its child run
MONITOR_MODEL_VERSION_TAG = PREFIX + "monitor.model_version"
MONITOR_CROSSINGS_TAG = PREFIX + "monitor.crossings"
MONITOR_RETRAIN_RESULT_TAG = PREFIX + "monitor.retrain_result"  # what retrain=true did
# Where the score bins and the alert rate the windows were compared with came from.
MONITOR_SCORE_REFERENCE_TAG = PREFIX + "monitor.score_reference"

# Tag values are at most this long (MLflow's limit is 8000 characters).
TAG_LIMIT = 5000


def step_tags(step: Step) -> dict[str, str]:
    return {STEP_TAG: step.value}


def step_filter(step: Step) -> str:
    """The ``search_runs`` filter for runs of ``step``."""
    return f"tags.`{STEP_TAG}` = '{step.value}'"


def step_of(run: Run) -> str | None:
    return run.data.tags.get(STEP_TAG)


def candidate_tags(name: str) -> dict[str, str]:
    return {**step_tags(Step.CANDIDATE), CANDIDATE_TAG: name}


def candidate_of(run: Run) -> str:
    return run.data.tags[CANDIDATE_TAG]


def stamped(prefix: str, stamp: dict[str, str]) -> dict[str, str]:
    """``{"fraud.<prefix>_by": ..., ...}`` for a who/when/why stamp (approval, rollback)."""
    return {f"{PREFIX}{prefix}_{key}": value for key, value in stamp.items()}


# --- train -> evaluate --------------------------------------------------------------------------


def write_data_recipe(run_id: str, data: DataConfig, split: SplitConfig) -> None:
    """The exact typed values that rebuild the train run's data (``read_data_recipe``).

    The run's parameters are for people (``mlflow run`` logs its own as shell-quoted strings,
    ``''`` for an empty value); the recipe is for the next step. Windows are kept as their
    parameters' text (``7``, ``36h``, ``1d,7d,30d``); a recipe of older runs holds numbers of
    days, read the same way.
    """
    MlflowClient().log_dict(run_id, flatten(data) | flatten(split), DATA_RECIPE_ARTIFACT)


def engine_of(train_run: Run) -> str:
    """The engine a train run computed its data with (its fingerprint is that engine's)."""
    return train_run.data.params.get(ENGINE_PARAM, "pandas")


def read_data_recipe(train_run: Run) -> tuple[DataConfig, SplitConfig]:
    """The data and split a train run used, with the start it resolved pinned (a date, or an
    instant when the windows are not whole days)."""
    run_id = train_run.info.run_id
    try:
        recipe = mlflow.artifacts.load_dict(f"runs:/{run_id}/{DATA_RECIPE_ARTIFACT}")
    except Exception as error:
        # The store is down, not the lineage broken: say which, never blame the run. (The
        # folder's URI ends in "/": MLflow refuses "runs:/<id>" as malformed.)
        if (outage := diagnose(error) or artifact_store_outage(f"runs:/{run_id}/")) is not None:
            raise OutageError(outage) from error
        raise LineageError(
            f"train run {run_id} has no {DATA_RECIPE_ARTIFACT} ({str(error).splitlines()[0][:300]})"
        ) from error
    # Pin the start the train step resolved, in case it was chosen from the data ("latest").
    recipe["train_start"] = _required(train_run, train_run.data.params, RESOLVED_TRAIN_START_PARAM)
    return build_config(DataConfig, recipe), build_config(SplitConfig, recipe)


@dataclass(frozen=True)
class TrainedModel:
    """What evaluate needs from a finished train run."""

    run_id: str
    model_id: str
    data_fingerprint: str
    data_source: str
    git_commit: str
    expected_savings: float

    @classmethod
    def of(cls, run: Run) -> TrainedModel:
        return cls(
            run_id=run.info.run_id,
            model_id=_required(run, run.data.tags, MODEL_ID_TAG),
            data_fingerprint=_required(run, run.data.params, DATA_FINGERPRINT_PARAM),
            data_source=run.data.params.get(DATA_SOURCE_PARAM, ""),
            git_commit=run.data.tags.get(GIT_COMMIT_TAG, "unknown"),
            expected_savings=run.data.metrics.get(EXPECTED_SAVINGS_METRIC, float("nan")),
        )


# --- evaluate -> monitor -----------------------------------------------------------------------


def write_score_reference(run_id: str, reference: ScoreReference) -> None:
    """An evaluate run's out-of-sample score reference (``read_score_reference``)."""
    MlflowClient().log_dict(run_id, reference.to_dict(), SCORE_REFERENCE_ARTIFACT)


def read_score_reference(evaluate_run_id: str) -> ScoreReference | None:
    """The score reference an evaluate run saved; None for a run from before it was saved."""
    client = MlflowClient()
    try:
        names = {item.path for item in client.list_artifacts(evaluate_run_id)}
        if SCORE_REFERENCE_ARTIFACT not in names:
            return None
        values = mlflow.artifacts.load_dict(f"runs:/{evaluate_run_id}/{SCORE_REFERENCE_ARTIFACT}")
    except Exception as error:
        where = f"runs:/{evaluate_run_id}/"
        if (outage := diagnose(error) or artifact_store_outage(where)) is not None:
            raise OutageError(outage) from error
        raise LineageError(
            f"evaluate run {evaluate_run_id}: its {SCORE_REFERENCE_ARTIFACT} cannot be read "
            f"({str(error).splitlines()[0][:300]})"
        ) from error
    return ScoreReference.from_dict(values)


# --- evaluate -> register -----------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """What register needs from a finished evaluate run."""

    run_id: str
    model_id: str
    train_run_id: str
    gate_passed: bool
    gate_report: str
    compared_champion: str | None  # the champion version the candidate was compared with
    test_metrics: dict[str, float]

    @classmethod
    def of(cls, run: Run) -> Evaluation:
        tags = run.data.tags
        return cls(
            run_id=run.info.run_id,
            model_id=_required(run, tags, MODEL_ID_TAG),
            train_run_id=_required(run, tags, TRAIN_RUN_TAG),
            gate_passed=_required(run, tags, GATE_TAG) == GATE_PASSED,
            gate_report=tags.get(GATE_REPORT_TAG, ""),
            compared_champion=tags.get(CHAMPION_VERSION_TAG),
            test_metrics={
                key.removeprefix(TEST_PREFIX): value
                for key, value in run.data.metrics.items()
                if key.startswith(TEST_PREFIX)
            },
        )

    @staticmethod
    def lineage_tags(train_run_id: str, model_id: str) -> dict[str, str]:
        return {TRAIN_RUN_TAG: train_run_id, MODEL_ID_TAG: model_id}

    @staticmethod
    def gate_tags(passed: bool, report: str) -> dict[str, str]:
        return {
            GATE_TAG: GATE_PASSED if passed else GATE_FAILED,
            GATE_REPORT_TAG: report[:TAG_LIMIT],
        }


@dataclass(frozen=True)
class VersionRecord:
    """The tags a registered version carries from its creation: lineage, gate and decision."""

    train: TrainedModel
    evaluation: Evaluation
    decision: str
    reason: str
    previous_champion: str | None = None

    def tags(self, ranking_metrics: tuple[str, ...]) -> dict[str, str]:
        evaluation = self.evaluation
        tags = {
            TRAIN_RUN_TAG: self.train.run_id,
            EVALUATE_RUN_TAG: evaluation.run_id,
            PREFIX + "data_fingerprint": self.train.data_fingerprint,
            PREFIX + "data_source": self.train.data_source,
            PREFIX + "git_commit": self.train.git_commit,
            **Evaluation.gate_tags(evaluation.gate_passed, evaluation.gate_report),
            COMPARED_CHAMPION_TAG: evaluation.compared_champion or "none",
            DECISION_TAG: self.decision,
            REASON_TAG: self.reason[:TAG_LIMIT],
            **{
                f"{PREFIX}test_{name}": f"{evaluation.test_metrics[name]:.6f}"
                for name in ranking_metrics
                if name in evaluation.test_metrics
            },
        }
        if self.previous_champion is not None:
            tags[PREVIOUS_CHAMPION_TAG] = self.previous_champion
        return tags


@dataclass(frozen=True)
class VersionFacts:
    """What approve and rollback read back from a registered version's tags."""

    gate_passed: bool
    gate_report: str
    compared_champion: str | None
    previous_champion: str | None

    @classmethod
    def of(cls, tags: dict[str, str]) -> VersionFacts:
        compared = tags.get(COMPARED_CHAMPION_TAG) or None
        return cls(
            gate_passed=tags.get(GATE_TAG) == GATE_PASSED,
            gate_report=tags.get(GATE_REPORT_TAG, "no gate recorded on the version"),
            compared_champion=None if compared == "none" else compared,
            previous_champion=tags.get(PREVIOUS_CHAMPION_TAG) or None,
        )


def decision_tags(label: str, reason: str) -> dict[str, str]:
    return {DECISION_TAG: label, REASON_TAG: reason[:TAG_LIMIT]}


# --- register -> main ---------------------------------------------------------------------------


def decision_of(run: Run) -> tuple[str, str]:
    """The (decision, reason) a register run recorded."""
    return run.data.tags.get(DECISION_TAG, "unknown"), run.data.tags.get(REASON_TAG, "")


def pipeline_tags(
    train_run_id: str, evaluate_run_id: str, register_run_id: str, decision: str
) -> dict[str, str]:
    return {
        TRAIN_RUN_TAG: train_run_id,
        EVALUATE_RUN_TAG: evaluate_run_id,
        REGISTER_RUN_TAG: register_run_id,
        DECISION_TAG: decision,
    }


def _required(run: Run, values: dict[str, Any], key: str) -> Any:
    if key not in values or values[key] in ("", None):
        raise LineageError(
            f"{step_of(run) or 'the'} run {run.info.run_id} has no {key}; was it made by "
            "another version of this template?"
        )
    return values[key]
