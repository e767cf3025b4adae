"""Before a step's first request: MLflow's retry budget, a new SQLite store, earlier repairs.

Guards against three failures:

- **A dead server stalls a step for eight minutes.** MLflow's client retries a failing request
  7 times with a backoff factor of 2 and a 120 s timeout. ``CLIENT_RETRY_DEFAULTS`` retry for
  about 30 s, which rides out a server restart (``tests/integration/test_server_faults.py``);
  a step whose server stays down fails in about a minute (``bench/reliability.py``: 63-65 s).
  Variables you set yourself win.
- **Processes racing to create a new SQLite store.** MLflow 3.17 then fails with "table
  already exists" or an alembic error; the first process creates the tables under a file lock
  (``<database>.init-lock``) while the others wait (``tests/test_concurrency.py``).
- **What an earlier outage left** (runs RUNNING, registry changes to undo): replayed from the
  spool first thing (``recovery.repair_remembered``), with one quick attempt.

A fork may leave this alone; removing it brings the three failures back.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from fraud_detection.hardening.outages import quick_requests
from fraud_detection.hardening.recovery import repair_remembered

logger = logging.getLogger(__name__)

CLIENT_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def prepare_tracking_client() -> None:
    """Set the client's retry budget, initialise a new SQLite store safely, recover runs.

    Several processes opening a brand-new SQLite store at once race to create its tables
    (MLflow 3.17 then fails with "table already exists" or an alembic error); the first
    process creates them under a file lock while the others wait.
    """
    for name, value in CLIENT_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{database}.init-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                MlflowClient().search_experiments(max_results=1)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        # One quick attempt: if the server is unwell, the step's own requests will say so.
        with quick_requests():
            repair_remembered()
    except Exception as error:  # noqa: BLE001 - recovery is best effort; the step goes on
        logger.warning(
            "Could not repair what an earlier outage left yet: %s", str(error).splitlines()[0]
        )
