"""A small local file of repairs that could not be made while the tracking server was down.

Guards against: a step whose tracking server (or its database) is down cannot mark its own run
FAILED, nor undo a registry change it could not finish. Without this file those runs stay
RUNNING for ever and a half-made promotion stays in place. Each record says what to repair and
why; ``recovery.repair_remembered`` replays them, first thing in every step and in
``python -m fraud_detection.hardening.recovery``, against the server each record belongs to.

A fork may leave this alone; removing it means repairing by hand after every outage (the
reliability benchmark counts the runs it leaves RUNNING: 0 with it).

The file is ``$FRAUD_DETECTION_STATE_DIR/pending-repairs.jsonl`` (default
``~/.cache/fraud-detection``). One JSON object per line; a record that is already there is not
written twice. Writers and the replayer hold an exclusive ``flock`` on it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

STATE_DIR_VARIABLE = "FRAUD_DETECTION_STATE_DIR"
SPOOL_NAME = "pending-repairs.jsonl"
# What makes two records the same repair (the reason and the time do not).
_IDENTITY = ("tracking_uri", "kind", "run_id", "model", "version", "alias")


def spool_file() -> Path:
    state = os.environ.get(STATE_DIR_VARIABLE) or Path.home() / ".cache" / "fraud-detection"
    return Path(state) / SPOOL_NAME


def _identity(record: dict) -> tuple:
    return tuple(record.get(key) for key in _IDENTITY)


@contextmanager
def _locked(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def remember(records: Iterable[dict], reason: str) -> Path:
    """Add repairs for the current tracking server (``kind`` plus its fields), once each."""
    path = spool_file()
    uri = mlflow.get_tracking_uri()
    with _locked(path):
        existing = _read(path)
        known = {_identity(record) for record in existing}
        for record in records:
            full = {"tracking_uri": uri, **record, "why": reason[:5000], "at": time.time()}
            if _identity(full) not in known:
                existing.append(full)
                known.add(_identity(full))
        _write(path, existing)
    return path


def remember_unfinished(run_ids: Iterable[str], reason: str) -> Path:
    """Note runs that must be marked FAILED, with ``reason``, once their server answers."""
    return remember(({"kind": "run", "run_id": run_id} for run_id in run_ids), reason)


def replay(apply: Callable[[dict], bool]) -> list[dict]:
    """Call ``apply`` on each record of the current tracking server, oldest first.

    ``apply`` returns True when the record is done (repaired, or nothing left to repair) and
    False to keep it for later; an exception keeps it too and stops the replay (the server is
    still unwell: the next records would fail the same way). Returns the records done.
    """
    path = spool_file()
    if not path.exists():
        return []
    uri = mlflow.get_tracking_uri()
    done: list[dict] = []
    with _locked(path):
        records = _read(path)
        kept = []
        failure: BaseException | None = None
        for record in records:
            if record["tracking_uri"] != uri or failure is not None:
                kept.append(record)
                continue
            try:
                finished = apply(record)
            except Exception as error:  # noqa: BLE001 - kept and re-raised below
                failure = error
                finished = False
            (done if finished else kept).append(record)
        _write(path, kept)
    if failure is not None:
        raise failure
    return done
