"""The register step: register the evaluated model and move the aliases; approve; roll back.

``register`` (the default action) creates one version per logged model (re-running it for the
same evaluation reuses the version) with its lineage and the decision as tags from the moment it
exists, so no version ever exists without them. ``@challenger`` always points at the newest
registered candidate. ``@champion`` moves only when:

- the evaluation passed its gate (floors, and no worse than the champion on the same rows:
  see ``evaluation.check_gate``), and
- the champion is still the version that evaluation compared against, and
- no human approval is required (``--require-approval``); otherwise a reviewer promotes the
  version later with ``--approve-version N``.

``--rollback --reason "..."`` moves ``@champion`` back to the version the current champion
replaced (recorded on it when it was promoted) and records who, when and why.

Every action is all or nothing (``RegistryChange``): it runs under the promotion lock, writes
its record (version tags, the run's tags and ``decision.json``) before any alias moves, moves
the aliases last, and ends its run FINISHED while it still holds the lock. If any of these
writes fails, what was written to the registry is undone and the run ends FAILED: the aliases
point where they pointed before, and no version is left that a failed step created.
"""

from __future__ import annotations

import getpass
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fraud_detection import contract
from fraud_detection.config import CHALLENGER_ALIAS, CHAMPION_ALIAS, RegisterConfig
from fraud_detection.config.fields import flatten
from fraud_detection.contract import Evaluation, Step, TrainedModel, VersionFacts, VersionRecord
from fraud_detection.errors import LineageError
from fraud_detection.hardening.registry_change import (
    RegistryChange,
    alias_version,
    registry_absent,
)
from fraud_detection.modelling.metrics import RANKING_METRICS
from fraud_detection.tracking import end_step_run, find_step_run, step_run

logger = logging.getLogger(__name__)

PROMOTED = "promoted"
NOT_PROMOTED = "not promoted"
AWAITING_APPROVAL = "awaiting approval"
# What the registry page says about the model (FIXME(fork): describe your model).
MODEL_DESCRIPTION = (
    "Credit-card fraud detector (fraud-detection MLflow Project template). Input: one row of "
    "the model's feature columns per transaction (see the signature); output: "
    "fraud_probability and is_fraud, the decision at the threshold tuned to save the most "
    "money. @champion is the version that serves, @challenger the newest candidate. Each "
    "version's tags record its lineage (train and evaluate runs, data fingerprint, git "
    "commit), its gate and why it was or was not promoted."
)


@dataclass(frozen=True)
class Decision:
    label: str  # PROMOTED, NOT_PROMOTED or AWAITING_APPROVAL
    reason: str

    @property
    def promote(self) -> bool:
        return self.label == PROMOTED


def decide_promotion(
    gate_passed: bool,
    gate_report: str,
    compared_version: str | None,
    current_version: str | None,
    require_approval: bool,
) -> Decision:
    """Whether a registered candidate becomes champion now: a pure function of the facts.

    Args:
        gate_passed: The evaluation's gate outcome.
        gate_report: Why, in the evaluation's words.
        compared_version: Champion version the evaluation compared against (None: none).
        current_version: Champion version now (None: none).
        require_approval: A human must approve every promotion.
    """
    if not gate_passed:
        return Decision(NOT_PROMOTED, f"gate failed: {gate_report}")
    if current_version != compared_version:
        return Decision(
            NOT_PROMOTED,
            f"champion is version {current_version or 'none'} but evaluate compared against "
            f"{compared_version or 'none'}; re-run evaluate",
        )
    if require_approval:
        return Decision(AWAITING_APPROVAL, "gate passed; a reviewer must approve the promotion")
    return Decision(PROMOTED, f"gate passed: {gate_report}")


def register(config: RegisterConfig) -> str:
    """Run the register step (or approve, or roll back); return a one-paragraph report."""
    with step_run(Step.REGISTER, config.tracking.experiment_name, flatten(config)) as run:
        client = MlflowClient()
        mlflow.set_tag(contract.ACTION_TAG, config.action)
        action = {"rollback": _rollback, "approve": _approve, "register": _register}
        with RegistryChange(client, config.model_name) as change:
            report = action[config.action](client, config, change)
            change.commit(lambda: end_step_run(run))
        return f"register run {run.info.run_id}: {report}"


def _register(client: MlflowClient, config: RegisterConfig, change: RegistryChange) -> str:
    evaluation = Evaluation.of(
        find_step_run(config.tracking.experiment_name, Step.EVALUATE, config.run_id)
    )
    trained = TrainedModel.of(client.get_run(evaluation.train_run_id))
    mlflow.set_tags(
        {contract.EVALUATE_RUN_TAG: evaluation.run_id, contract.MODEL_ID_TAG: evaluation.model_id}
    )
    name = config.model_name
    change.ensure_registered_model(MODEL_DESCRIPTION)
    current = alias_version(client, name, CHAMPION_ALIAS)
    version = _existing_version(client, name, trained.run_id, evaluation.model_id)
    already_champion = version is not None and current == str(version.version)
    decision = (
        Decision(PROMOTED, f"version {version.version} is already champion")
        if already_champion
        else decide_promotion(
            evaluation.gate_passed,
            evaluation.gate_report,
            evaluation.compared_champion,
            current,
            config.require_approval,
        )
    )
    replaces = decision.promote and current is not None and not already_champion
    record = VersionRecord(
        trained, evaluation, decision.label, decision.reason, current if replaces else None
    )
    if version is None:
        number = change.create_version(
            evaluation.model_id,
            trained.run_id,
            record.tags(RANKING_METRICS),
            _version_description(decision, evaluation),
        )
    else:
        number = str(version.version)
        logger.info("Model %s is already version %s: reusing it", evaluation.model_id, number)
        change.set_version_tags(version, record.tags(RANKING_METRICS))
    _log_decision(decision, name, number, current)
    change.move_alias(CHALLENGER_ALIAS, number)
    if decision.promote and current != number:
        change.move_alias(CHAMPION_ALIAS, number, expected_before=current)
    report = f"{name} version {number} {decision.label} ({decision.reason})"
    if decision.label == AWAITING_APPROVAL:
        command = (
            f'python register.py --model-name {name} --approve-version {number} --reason "<why>"'
        )
        report += f". To promote it after review: {command}"
    return report


def _version_description(decision: Decision, evaluation: Evaluation) -> str:
    metrics = ", ".join(
        f"{name} {evaluation.test_metrics[name]:.3f}"
        for name in RANKING_METRICS
        if name in evaluation.test_metrics
    )
    return (
        f"{decision.label.capitalize()}: {decision.reason}. On its test window: {metrics}. "
        f"Trained in run {evaluation.train_run_id}, evaluated in run {evaluation.run_id}."
    )


def _approve(client: MlflowClient, config: RegisterConfig, change: RegistryChange) -> str:
    """Promote a version a reviewer approved, if its evaluation still holds."""
    name, number = config.model_name, config.approve_version
    version = _get_version(client, name, number)
    current = alias_version(client, name, CHAMPION_ALIAS)
    if current == number:
        raise LineageError(f"{name} version {number} is already @{CHAMPION_ALIAS}")
    facts = VersionFacts.of(version.tags)
    decision = decide_promotion(
        facts.gate_passed,
        facts.gate_report,
        facts.compared_champion,
        current,
        require_approval=False,
    )
    if not decision.promote:
        raise LineageError(f"{name} version {number} cannot be approved: {decision.reason}")
    stamp = _who_when_why(config.reason or "approved")
    change.set_version_tags(
        version,
        {
            **contract.stamped("approved", stamp),
            **contract.decision_tags(PROMOTED, f"approved by {stamp['by']}: {stamp['why']}"),
            **({contract.PREVIOUS_CHAMPION_TAG: current} if current else {}),
        },
    )
    change.set_version_description(
        version,
        f"Promoted on approval by {stamp['by']} ({stamp['at']}): {stamp['why']}. "
        + (version.description or ""),
    )
    mlflow.set_tags({contract.VERSION_TAG: number, contract.DECISION_TAG: PROMOTED})
    change.move_alias(CHAMPION_ALIAS, number, expected_before=current)
    return f"{name} version {number} approved by {stamp['by']} and promoted (was {current})"


def _rollback(client: MlflowClient, config: RegisterConfig, change: RegistryChange) -> str:
    """Move @champion back to the version the current champion replaced."""
    name = config.model_name
    current = alias_version(client, name, CHAMPION_ALIAS)
    if current is None:
        raise LineageError(f"{name} has no @{CHAMPION_ALIAS}: nothing to roll back")
    current_version = _get_version(client, name, current)
    previous = VersionFacts.of(current_version.tags).previous_champion
    if not previous:
        raise LineageError(
            f"{name} version {current} replaced no earlier champion: nothing to roll back to"
        )
    previous_version = _get_version(client, name, previous)  # it must still exist
    stamp = _who_when_why(config.reason)
    change.set_version_tags(current_version, contract.stamped("rolled_back", stamp))
    change.set_version_tags(previous_version, {contract.RESTORED_AT_TAG: stamp["at"]})
    change.set_version_description(
        current_version,
        f"Rolled back by {stamp['by']} ({stamp['at']}): {stamp['why']}. "
        + (current_version.description or ""),
    )
    change.set_version_description(
        previous_version,
        f"Champion again since {stamp['at']}, when version {current} was rolled back. "
        + (previous_version.description or ""),
    )
    mlflow.set_tags(
        {
            contract.VERSION_TAG: previous,
            contract.ROLLED_BACK_FROM_TAG: current,
            contract.ROLLBACK_REASON_TAG: stamp["why"],
        }
    )
    change.move_alias(CHAMPION_ALIAS, previous, expected_before=current)
    return f"{name}@{CHAMPION_ALIAS} rolled back from version {current} to {previous}"


def _who_when_why(reason: str) -> dict[str, str]:
    return {
        "by": getpass.getuser(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "why": reason[:5000],
    }


def _get_version(client: MlflowClient, name: str, number: str) -> ModelVersion:
    try:
        return client.get_model_version(name, number)
    except MlflowException as error:
        if not registry_absent(client, name, error):
            raise
        raise LineageError(f"{name} version {number} not found ({error.message})") from error


def _existing_version(
    client: MlflowClient, name: str, run_id: str, model_id: str
) -> ModelVersion | None:
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    matching = [v for v in versions if v.model_id == model_id or model_id in (v.source or "")]
    return min(matching, key=lambda v: int(v.version)) if matching else None


def _log_decision(decision: Decision, name: str, version: str, previous: str | None) -> None:
    """The register run's record of the decision: tags and ``decision.json``.

    Written before any alias moves: of all the writes, the artifact upload is the one most
    likely to fail (it needs the artifact store too), and nothing must move before it has.
    """
    mlflow.set_tags(
        {**contract.decision_tags(decision.label, decision.reason), contract.VERSION_TAG: version}
    )
    mlflow.log_dict(
        {"model_name": name, "version": version, "champion_before": previous, **asdict(decision)},
        contract.DECISION_ARTIFACT,
    )
    logger.info(
        "Decision for %s version %s: %s (%s)", name, version, decision.label, decision.reason
    )
