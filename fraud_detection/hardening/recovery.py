"""Repair what an outage left: runs left RUNNING, half-undone registry changes, failed models.

What a step could not repair itself while its tracking server (or a store behind it) was down
is noted in the local spool (``spool.py``); the next step that reaches the same server replays
it first thing, and so does ``python -m fraud_detection.hardening.recovery``:

- a run left RUNNING is marked FAILED, with the true reason in its ``fraud.error`` tag (written
  also on a run that did end FAILED but could not say why), and so are its child runs still
  RUNNING (a sweep's candidate the outage cut short);
- the logged models such a run left FAILED or PENDING (``log_model`` cut off) are deleted, with
  their partial files where the artifact store allows it; otherwise the command that removes
  them is printed;
- a registry change that could not be undone (``registry_change.RegistryChange``) is undone:
  an alias moved back if it still points where the failed step put it, a version that step
  created deleted, version tags restored.

``--stale-minutes N`` also fails pipeline runs RUNNING for longer than N minutes (steps killed
without a word, whose runs nobody noted).

Guards against: runs RUNNING for ever, a promotion half-undone and partial model files after an
outage. ``bench/reliability.py`` counts what its faults leave: 0 runs RUNNING and 0
half-registered versions with this module (``docs/reliability.md``).

A fork may leave it alone. Without it, each outage leaves runs to end and registry changes to
undo by hand.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

import mlflow
from mlflow.entities import LoggedModelStatus, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fraud_detection.contract import ERROR_TAG, STEP_TAG
from fraud_detection.errors import is_absent
from fraud_detection.hardening.registry_change import (
    delete_empty_registered_model,
    delete_version_unless_aliased,
    release_lock,
    restore_alias,
    restore_version_tags,
)
from fraud_detection.hardening.spool import replay

logger = logging.getLogger(__name__)

RUNNING = RunStatus.to_string(RunStatus.RUNNING)
FAILED = RunStatus.to_string(RunStatus.FAILED)


def settle_failed_run(client: MlflowClient, run_id: str, reason: str, status: str = FAILED) -> Run:
    """Make a step's failed run say so: ended ``status`` if still RUNNING, the reason in its
    ``fraud.error`` tag (unless it has one), its RUNNING children FAILED, its failed models gone.

    Safe to repeat. Returns the run as it was found.
    """
    run = client.get_run(run_id)
    if run.info.status == RUNNING:
        client.set_terminated(run_id, status)
    if ERROR_TAG not in run.data.tags:
        client.set_tag(run_id, ERROR_TAG, reason[:5000])
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{run_id}' and attributes.status = '{RUNNING}'",
    )
    for child in children:
        client.set_terminated(child.info.run_id, FAILED)
        client.set_tag(child.info.run_id, ERROR_TAG, f"its parent run failed: {reason}"[:5000])
    delete_failed_models(client, run)
    return run


def delete_failed_models(client: MlflowClient, run: Run) -> list[str]:
    """Delete the logged models of ``run`` that never became READY (``log_model`` cut off).

    Their files are deleted too where the artifact store allows it (a local folder, S3 written
    directly, or artifacts proxied by a server); otherwise the files' location is logged with
    the command that removes them. Returns the ids of the models deleted.
    """
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    deleted = []
    for model in models:
        if model.status == LoggedModelStatus.READY:
            continue
        _delete_files(model.artifact_location, model.model_id)
        client.delete_logged_model(model.model_id)
        deleted.append(model.model_id)
        logger.info(
            "Deleted logged model %s (%s) of run %s", model.model_id, model.status, run.info.run_id
        )
    return deleted


def _delete_files(location: str, model_id: str) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        get_artifact_repository(location).delete_artifacts()
    except Exception as error:  # noqa: BLE001 - every artifact store refuses in its own way
        command = (
            f"aws s3 rm --recursive {location}"
            if location.startswith("s3://")
            else f"delete the folder {location} in your artifact store"
        )
        logger.warning(
            "Could not delete the files of failed model %s (%s); to remove them: %s",
            model_id,
            str(error).splitlines()[0][:200] if str(error) else type(error).__name__,
            command,
        )


def _apply(record: dict) -> bool:
    """Carry out one spooled repair; True when nothing is left to do for it."""
    client = MlflowClient()
    kind = record["kind"]
    try:
        if kind == "run":
            settle_failed_run(client, record["run_id"], record["why"])
        elif kind == "alias":
            restore_alias(
                client, record["model"], record["alias"], record["version"], record["before"]
            )
        elif kind == "version":
            delete_version_unless_aliased(client, record["model"], record["version"])
        elif kind == "version_tags":
            restore_version_tags(client, record["model"], record["version"], record["tags"])
        elif kind == "version_description":
            client.update_model_version(record["model"], record["version"], record["description"])
        elif kind == "registered_model":
            delete_empty_registered_model(client, record["model"])
        elif kind == "promotion_lock":
            release_lock(client, record["model"], record["pid"])
        else:
            logger.warning("Unknown repair %r in the spool: dropped", kind)
    except MlflowException as error:
        if not is_absent(error):
            raise
    logger.info("Repaired after an outage: %s", _describe(record))
    return True


def _describe(record: dict) -> str:
    fields = ", ".join(
        f"{key} {record[key]}" for key in ("run_id", "model", "version", "alias") if key in record
    )
    return f"{record['kind']} ({fields})"


def repair_remembered() -> list[dict]:
    """Replay the spooled repairs of the current tracking server; return those done."""
    done = replay(_apply)
    if done:
        logger.warning(
            "Repaired %d thing(s) an earlier outage left: %s",
            len(done),
            "; ".join(_describe(record) for record in done),
        )
    return done


def fail_stale_runs(experiment_name: str, stale_minutes: float) -> list[str]:
    """Mark FAILED the pipeline runs RUNNING for longer than ``stale_minutes`` (killed steps)."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    cutoff = int((time.time() - 60 * stale_minutes) * 1000)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"attributes.status = '{RUNNING}' and attributes.start_time < {cutoff} "
            f"and tags.`{STEP_TAG}` != ''"
        ),
    )
    for run in runs:
        settle_failed_run(client, run.info.run_id, f"RUNNING for over {stale_minutes} min")
    return [run.info.run_id for run in runs]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment-name", default="fraud-detection")
    parser.add_argument(
        "--stale-minutes",
        type=float,
        default=0.0,
        help="also fail pipeline runs RUNNING for longer than this (0: only remembered runs)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    done = [_describe(record) for record in repair_remembered()]
    if args.stale_minutes > 0:
        done += [
            f"stale run {run_id}"
            for run_id in fail_stale_runs(args.experiment_name, args.stale_minutes)
        ]
    print(f"repaired: {'; '.join(done) if done else 'nothing'} ({mlflow.get_tracking_uri()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
