"""A driver program for `tests/integration/test_spark_cluster.py`: run with
``python -m tests.support.spark_cluster_probe REPORT.json`` in a cluster's
`SparkCluster.client_environment`, it opens the template's own Spark session (which finds the
master in spark-defaults.conf), trains a ``SparkXGBClassifier`` on every task slot, and writes
where each task ran as JSON for the test to check against the workers' own records.

A process of its own, not the test's: a Python process holds one SparkContext, and the test
session may already hold a local one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FIT_JOB_GROUP = "xgboost-fit"
ROWS = 4_000
FEATURES = ["f0", "f1", "f2", "f3"]


def _rows(seed: int = 0) -> pd.DataFrame:
    """A few thousand rows whose label a small model learns well (so a broken fit shows)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(ROWS, 4))
    logit = 2.0 * features[:, 0] - 1.5 * features[:, 1] + features[:, 2] * features[:, 3]
    label = (rng.random(ROWS) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return pd.DataFrame(features, columns=FEATURES).assign(label=label)


def _executor_tasks(session: Any, slots: int) -> list[dict[str, Any]]:
    """Where each task of a barrier stage on every slot ran: the working directory (an
    executor's is <worker work dir>/<app id>/<executor id>) and the executor JVM's pid."""
    from pyspark import BarrierTaskContext

    def where(_: Any) -> list[dict[str, Any]]:
        BarrierTaskContext.get().barrier()
        # Up from this Python worker to the executor JVM that started it.
        pid = os.getpid()
        while pid > 1:
            if b"CoarseGrainedExecutorBackend" in Path(f"/proc/{pid}/cmdline").read_bytes():
                break
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return [{"directory": os.getcwd(), "executor_pid": pid}]

    rdd = session.sparkContext.parallelize(range(slots), slots)
    return rdd.barrier().mapPartitions(where).collect()


def _stage_executors(session: Any, stage_id: int, tasks: int) -> list[str]:
    """The executor of each task of a finished stage, from the driver's REST API. The UI's
    listener is asynchronous, and a busy machine slows it: ask again (up to 2 minutes) until
    every task shows as finished."""
    context = session.sparkContext
    url = f"{context.uiWebUrl}/api/v1/applications/{context.applicationId}/stages/{stage_id}"
    deadline = time.monotonic() + 120
    done: list[dict[str, Any]] = []
    while len(done) < tasks and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}?details=true", timeout=60) as response:
                attempts = json.loads(response.read())
        except OSError:  # a timeout, or the stage not yet known to the UI (404)
            time.sleep(1)
            continue
        seen = [task for attempt in attempts for task in attempt.get("tasks", {}).values()]
        done = [task for task in seen if task["status"] == "SUCCESS"]
        time.sleep(0.5)
    return sorted(str(task["executorId"]) for task in done)


def _fit(session: Any, slots: int) -> dict[str, Any]:
    """Fit SparkXGBClassifier with one worker per task slot; where its training tasks ran."""
    import xgboost
    from pyspark.ml.feature import VectorAssembler
    from sklearn.metrics import roc_auc_score
    from xgboost.spark import SparkXGBClassifier

    rows = _rows()
    assembled = VectorAssembler(inputCols=FEATURES, outputCol="features")
    data = assembled.transform(session.createDataFrame(rows))
    classifier = SparkXGBClassifier(
        features_col="features", label_col="label", num_workers=slots, n_estimators=40
    )
    context = session.sparkContext
    context.setJobGroup(FIT_JOB_GROUP, "SparkXGBClassifier.fit on every slot")
    model = classifier.fit(data)
    # The training job is the fit's last; its last stage is the barrier stage, one task a worker.
    training_job = max(context.statusTracker().getJobIdsForGroup(FIT_JOB_GROUP))
    barrier_stage = max(context.statusTracker().getJobInfo(training_job).stageIds)
    # The booster the workers trained together, scored here: no further Spark job needed.
    booster = model.get_booster()
    scores = booster.predict(xgboost.DMatrix(rows[FEATURES].to_numpy()))
    return {
        "training_task_executors": _stage_executors(session, barrier_stage, slots),
        "training_auc": float(roc_auc_score(rows["label"], scores)),
        "booster_rounds": booster.num_boosted_rounds(),
    }


def main(report: Path) -> None:
    from fraud_detection.spark.session import spark_session
    from tests.support.spark_cluster import listening_addresses

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    session = spark_session("spark-cluster-probe")
    try:
        context = session.sparkContext
        slots = int(session.conf.get("spark.cores.max"))
        tasks = _executor_tasks(session, slots)
        # While the application runs: every port its driver and executors listen on.
        driver_pid = context._jvm.java.lang.ProcessHandle.current().pid()
        pids = (driver_pid, *(task["executor_pid"] for task in tasks))
        result = {
            "master": context.master,
            "app_id": context.applicationId,
            "driver_host": session.conf.get("spark.driver.host"),
            "slots": slots,
            "task_directories": [task["directory"] for task in tasks],
            "application_listens_on": sorted(listening_addresses(pids)),
            **_fit(session, slots),
        }
    finally:
        session.stop()
    report.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
