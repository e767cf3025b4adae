"""Runs a tracking-server outage left RUNNING: remember them, mark them FAILED later.

A step whose tracking server is down cannot mark its own run FAILED. It writes the run ids to a
small local file instead; the next step that reaches the same server marks them FAILED first
thing, and so does ``python -m fraud_detection.recovery`` (which can also fail pipeline runs
left RUNNING by a killed process, with ``--stale-minutes``).

The file is ``$FRAUD_DETECTION_STATE_DIR/unfinished-runs.jsonl``, by default under
``~/.cache/fraud-detection``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

STATE_DIR_VARIABLE = "FRAUD_DETECTION_STATE_DIR"
RUNNING = RunStatus.to_string(RunStatus.RUNNING)


def unfinished_runs_file() -> Path:
    state = os.environ.get(STATE_DIR_VARIABLE) or Path.home() / ".cache" / "fraud-detection"
    return Path(state) / "unfinished-runs.jsonl"


def remember_unfinished(run_ids: Iterable[str], reason: str) -> Path:
    """Note runs that must be marked FAILED once their tracking server answers again."""
    path = unfinished_runs_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    uri = mlflow.get_tracking_uri()
    with path.open("a") as spool:
        for run_id in run_ids:
            record = {"tracking_uri": uri, "run_id": run_id, "at": time.time(), "why": reason}
            spool.write(json.dumps(record) + "\n")
    return path


def fail_remembered_runs() -> list[str]:
    """Mark FAILED the remembered runs of the current tracking server that are still RUNNING,
    and their child runs still RUNNING (a sweep's candidate the outage cut short).

    Entries of other servers, and entries this server could not be reached for, are kept.
    """
    path = unfinished_runs_file()
    if not path.exists():
        return []
    uri = mlflow.get_tracking_uri()
    client = MlflowClient()
    failed, kept = [], []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["tracking_uri"] != uri:
            kept.append(line)
            continue
        try:
            run = client.get_run(record["run_id"])
            children = client.search_runs(
                [run.info.experiment_id],
                filter_string=(
                    f"tags.`mlflow.parentRunId` = '{run.info.run_id}' "
                    f"and attributes.status = '{RUNNING}'"
                ),
            )
            for unfinished in [run, *children]:
                if unfinished.info.status == RUNNING:
                    client.set_terminated(unfinished.info.run_id, "FAILED")
                    client.set_tag(unfinished.info.run_id, "fraud.error", record["why"][:5000])
                    failed.append(unfinished.info.run_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept))
    if failed:
        logger.warning(
            "Marked FAILED %d run(s) an earlier outage left RUNNING: %s",
            len(failed),
            ", ".join(failed),
        )
    return failed


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
            f"attributes.status = 'RUNNING' and attributes.start_time < {cutoff} "
            "and tags.`fraud.step` != ''"
        ),
    )
    for run in runs:
        client.set_terminated(run.info.run_id, "FAILED")
        client.set_tag(run.info.run_id, "fraud.error", f"RUNNING for over {stale_minutes} min")
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
    failed = fail_remembered_runs()
    if args.stale_minutes > 0:
        failed += fail_stale_runs(args.experiment_name, args.stale_minutes)
    print(f"marked FAILED: {', '.join(failed) if failed else 'nothing'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
