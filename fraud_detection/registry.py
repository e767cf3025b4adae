"""The register step: register the evaluated model, gate it, move @champion only when it earns it.

A version is created once per logged model (re-running register for the same evaluation reuses
it) and carries its lineage and the decision as tags from the moment it exists, so there is no
state in which a version exists without them. ``@challenger`` always points at the newest
registered candidate; ``@champion`` moves only when every criterion holds:

- absolute floors on the test metrics (``GateConfig``);
- no worse than the current champion, measured on the same test rows by ``evaluate``, and that
  champion is still the one evaluate compared against.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fraud_detection.cli import flatten
from fraud_detection.config import CHALLENGER_ALIAS, CHAMPION_ALIAS, GateConfig, RegisterConfig
from fraud_detection.errors import LineageError, PromotionConflictError
from fraud_detection.evaluation import (
    CHAMPION_COMPARISON_TAG,
    CHAMPION_PREFIX,
    CHAMPION_VERSION_TAG,
    TEST_PREFIX,
    TRAIN_RUN_TAG,
)
from fraud_detection.metrics import CARD_PRECISION_K
from fraud_detection.tracking import find_step_run, step_run
from fraud_detection.training import DATA_FINGERPRINT_PARAM, MODEL_ID_TAG

logger = logging.getLogger(__name__)

GATED_METRICS = ("roc_auc", "average_precision", f"card_precision_at_{CARD_PRECISION_K}")
EVALUATE_RUN_TAG = "fraud.evaluate_run_id"
DECISION_TAG = "fraud.decision"
REASON_TAG = "fraud.decision_reason"
PREVIOUS_CHAMPION_TAG = "fraud.previous_champion"
GIT_COMMIT_TAG = "mlflow.source.git.commit"


@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    criteria: tuple[Criterion, ...]

    @property
    def label(self) -> str:
        return "promoted" if self.promote else "not promoted"


def decide_promotion(
    candidate: dict[str, float],
    champion: dict[str, float],
    gate: GateConfig,
    compared_version: str | None,
    current_version: str | None,
    comparison_status: str,
) -> Decision:
    """Apply the promotion criteria; a pure function of metrics and registry state.

    Args:
        candidate: The candidate's test metrics (names without prefix).
        champion: The champion's metrics on the same rows (empty when there is no champion).
        gate: Floors and the tolerance against the champion.
        compared_version: Champion version that evaluate scored (None: there was none).
        current_version: Champion version now (None: there is none).
        comparison_status: What evaluate recorded about the comparison.
    """
    floors = {
        "roc_auc": gate.min_roc_auc,
        "average_precision": gate.min_average_precision,
        f"card_precision_at_{CARD_PRECISION_K}": gate.min_card_precision_at_100,
    }
    criteria = []
    for name, floor in floors.items():
        value = candidate.get(name)
        if value is None:
            criteria.append(Criterion(f"min_{name}", floor == 0, f"not measured (floor {floor})"))
        else:
            criteria.append(
                Criterion(f"min_{name}", value >= floor, f"{value:.4f} vs floor {floor:.4f}")
            )
    if current_version is None:
        criteria.append(Criterion("beats_champion", True, "no champion yet"))
    elif current_version != compared_version:
        criteria.append(
            Criterion(
                "beats_champion",
                False,
                f"champion is version {current_version} but evaluate compared against "
                f"{compared_version or 'none'}; re-run evaluate",
            )
        )
    elif not champion:
        criteria.append(Criterion("beats_champion", False, f"no comparison ({comparison_status})"))
    else:
        for name in GATED_METRICS:
            if name in candidate and name in champion:
                margin = candidate[name] - champion[name]
                criteria.append(
                    Criterion(
                        f"not_worse_{name}",
                        margin >= -gate.champion_tolerance,
                        f"{candidate[name]:.4f} vs champion v{current_version} "
                        f"{champion[name]:.4f} (tolerance {gate.champion_tolerance})",
                    )
                )
    failed = [c for c in criteria if not c.passed]
    reason = (
        "all criteria hold"
        if not failed
        else "; ".join(f"{c.name} failed: {c.detail}" for c in failed)
    )
    return Decision(promote=not failed, reason=reason, criteria=tuple(criteria))


def register(config: RegisterConfig) -> str:
    """Run the register step; return a one-paragraph report."""
    client = MlflowClient()
    with step_run("register", config.tracking.experiment_name, flatten(config)) as run:
        evaluation = find_step_run(config.tracking.experiment_name, "evaluate", config.run_id)
        model_id = evaluation.data.tags.get(MODEL_ID_TAG)
        train_run_id = evaluation.data.tags.get(TRAIN_RUN_TAG)
        if not model_id or not train_run_id:
            raise LineageError(f"evaluate run {evaluation.info.run_id} lacks its lineage tags")
        train_run = client.get_run(train_run_id)
        mlflow.set_tags({EVALUATE_RUN_TAG: evaluation.info.run_id, MODEL_ID_TAG: model_id})

        metrics = evaluation.data.metrics
        candidate = {
            k: metrics[TEST_PREFIX + k] for k in GATED_METRICS if TEST_PREFIX + k in metrics
        }
        champion_metrics = {
            k: metrics[CHAMPION_PREFIX + k] for k in GATED_METRICS if CHAMPION_PREFIX + k in metrics
        }
        _ensure_registered_model(client, config.model_name)
        current = _alias_version(client, config.model_name, CHAMPION_ALIAS)
        version = _existing_version(client, config.model_name, train_run_id, model_id)
        if version is not None and current == str(version.version):
            decision = Decision(True, f"version {version.version} is already champion", ())
        else:
            decision = decide_promotion(
                candidate,
                champion_metrics,
                config.gate,
                evaluation.data.tags.get(CHAMPION_VERSION_TAG),
                current,
                evaluation.data.tags.get(CHAMPION_COMPARISON_TAG, "unknown"),
            )
        tags = _version_tags(evaluation, train_run, candidate, decision, current)
        if version is None:
            version = mlflow.register_model(f"models:/{model_id}", config.model_name, tags=tags)
        else:
            logger.info("Model %s is already version %s: reusing it", model_id, version.version)
            for key, value in tags.items():
                client.set_model_version_tag(config.model_name, version.version, key, value)

        number = str(version.version)
        client.set_registered_model_alias(config.model_name, CHALLENGER_ALIAS, number)
        if decision.promote and current != number:
            _move_champion(client, config.model_name, number)
        _log_decision(decision, config.model_name, number, current)
        return (
            f"register run {run.info.run_id}: {config.model_name} version {number} "
            f"{decision.label} ({decision.reason})"
        )


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        # Stores differ in whether versions come back as int or str; compare them as str.
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _existing_version(
    client: MlflowClient, name: str, run_id: str, model_id: str
) -> ModelVersion | None:
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    matching = [v for v in versions if v.model_id == model_id or model_id in (v.source or "")]
    return min(matching, key=lambda v: int(v.version)) if matching else None


def _version_tags(
    evaluation: Run,
    train_run: Run,
    candidate: dict[str, float],
    decision: Decision,
    current: str | None,
) -> dict[str, str]:
    tags = {
        TRAIN_RUN_TAG: train_run.info.run_id,
        EVALUATE_RUN_TAG: evaluation.info.run_id,
        "fraud.data_fingerprint": train_run.data.params.get(DATA_FINGERPRINT_PARAM, ""),
        "fraud.data_source": train_run.data.params.get("data_source", ""),
        "fraud.git_commit": train_run.data.tags.get(GIT_COMMIT_TAG, "unknown"),
        DECISION_TAG: decision.label,
        REASON_TAG: decision.reason[:5000],
        **{f"fraud.test_{k}": f"{v:.6f}" for k, v in candidate.items()},
    }
    if decision.promote and current is not None:
        tags[PREVIOUS_CHAMPION_TAG] = current
    return tags


def _move_champion(client: MlflowClient, name: str, version: str) -> None:
    """Point @champion at ``version`` and read it back: another writer may have raced us."""
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    now = _alias_version(client, name, CHAMPION_ALIAS)
    if now != version:
        raise PromotionConflictError(
            f"{name}@{CHAMPION_ALIAS} is version {now} right after this step set it to {version}: "
            "another promotion ran at the same time; re-run evaluate and register"
        )
    logger.info("%s@%s -> version %s", name, CHAMPION_ALIAS, version)


def _log_decision(decision: Decision, name: str, version: str, previous: str | None) -> None:
    mlflow.set_tags(
        {DECISION_TAG: decision.label, REASON_TAG: decision.reason[:5000], "fraud.version": version}
    )
    mlflow.log_dict(
        {
            "model_name": name,
            "version": version,
            "champion_before": previous,
            **asdict(decision),
        },
        "decision.json",
    )
    logger.info("Decision for %s version %s: %s", name, version, json.dumps(asdict(decision)))
