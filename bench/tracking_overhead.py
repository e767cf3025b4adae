"""What all the tracking costs: the train step against a real local `mlflow server`, versus the
same training with tracking off.

"Tracking off" runs the very package functions the train step runs, in the same order
(prepare data, fit every candidate on the validation split, rank them, refit the winner with
checkpoints, tune the threshold, save the model), without a single MLflow call. "Tracking on"
is ``fraud_detection.steps.train.train`` itself, logging everything (nested runs, curves, datasets,
system metrics, checkpoints, the model) to an `mlflow server` started here on 127.0.0.1 with
one worker and a SQLite backend (deploy/dev-server.sh, started as the integration tests start
it: run from a checkout installed with the dev extra). The two alternate, so that a machine
that slows down or speeds up affects both; medians are compared. The server's own CPU time is
reported too: on a machine whose cores the training already keeps busy, it is part of what the
tracking costs.

    python bench/tracking_overhead.py --repeats 5 --out bench/results/tracking_overhead.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil

from fraud_detection.config import (
    DataConfig,
    ModelConfig,
    SplitConfig,
    TrainConfig,
)
from fraud_detection.data.windows import (
    prepare_data,
    training_windows,
)
from fraud_detection.engine import window_metrics
from fraud_detection.modelling.estimators import (
    Scorer,
    candidate_specs,
    fit_candidate,
)
from fraud_detection.modelling.threshold import tune_threshold
from fraud_detection.steps.train import train

logger = logging.getLogger("bench.tracking_overhead")

PROJECT_DIR = Path(__file__).resolve().parents[1]


def train_without_tracking(config: TrainConfig, scratch: Path) -> float:
    """The train step's computations with no MLflow call; returns the winner's validation AP."""
    prepared = prepare_data(config.data, config.split)
    windows = training_windows(prepared, config.data)
    label = config.data.columns.label_column
    results = []
    for spec in candidate_specs(config.model):
        fitted = fit_candidate(
            spec,
            config.model,
            prepared.features,
            windows.validation_train,
            label,
            validation=windows.validation,
        )
        scores = fitted.predict_proba(windows.validation, prepared.features)
        results.append((window_metrics(windows.validation, scores, config.data), fitted))
    metrics, best = max(results, key=lambda item: item[0]["average_precision"])
    callbacks = []
    if best.spec.kind == "xgboost" and config.model.checkpoint_every:
        from xgboost.callback import TrainingCheckPoint

        callbacks.append(
            TrainingCheckPoint(str(scratch), name="booster", interval=config.model.checkpoint_every)
        )
    final = fit_candidate(
        best.spec,
        config.model,
        prepared.features,
        windows.training,
        label,
        rounds=best.best_rounds,
        callbacks=callbacks,
    )
    tune_threshold(
        best.estimator,
        windows.validation[list(prepared.features)].to_numpy(dtype=np.float32),
        windows.validation[label].to_numpy(),
        windows.validation[config.data.columns.amount_column].to_numpy(),
        config.cost.review_cost,
    )
    Scorer.from_fitted(final, prepared.features).save(scratch / "model")
    return metrics["average_precision"]


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time used so far by ``process`` and its living descendants (a server's workers)."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (median reported)")
    parser.add_argument("--n-customers", type=int, default=DataConfig().n_customers)
    parser.add_argument("--n-terminals", type=int, default=DataConfig().n_terminals)
    parser.add_argument("--n-days", type=int, default=DataConfig().n_days)
    parser.add_argument("--grid", default=ModelConfig().grid)
    parser.add_argument(
        "--n-estimators", type=int, default=ModelConfig().n_estimators, help="boosting rounds"
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # MLflow prints a "View run ... at" link for every run it ends against a server.
    logging.getLogger("mlflow.tracking._tracking_service.client").setLevel(logging.WARNING)

    config = TrainConfig(
        data=DataConfig(
            n_customers=args.n_customers, n_terminals=args.n_terminals, n_days=args.n_days
        ),
        split=SplitConfig(),
        model=ModelConfig(grid=args.grid, n_estimators=args.n_estimators),
    )
    untracked, tracked = [], []
    untracked_cpu, tracked_cpu, server_cpu = [], [], []
    # The integration tests' server: deploy/dev-server.sh on a free loopback port, its store
    # in the scratch folder, stopped through its process group.
    sys.path.insert(0, str(PROJECT_DIR))
    from tests.support.services import dev_server

    with tempfile.TemporaryDirectory() as scratch, dev_server(Path(scratch)) as tracking:
        url, server = tracking.url, psutil.Process(tracking.process.process.pid)
        os.environ["MLFLOW_TRACKING_URI"] = url
        mlflow.set_tracking_uri(url)
        train(config)  # warm-up: imports, caches, the experiment's creation
        for repeat in range(args.repeats):
            start, cpu = time.perf_counter(), time.process_time()
            with tempfile.TemporaryDirectory() as out:
                train_without_tracking(config, Path(out))
            untracked.append(time.perf_counter() - start)
            untracked_cpu.append(time.process_time() - cpu)
            start, cpu, served = time.perf_counter(), time.process_time(), cpu_seconds(server)
            train(config)
            tracked.append(time.perf_counter() - start)
            tracked_cpu.append(time.process_time() - cpu)
            server_cpu.append(cpu_seconds(server) - served)
            print(f"pair {repeat + 1}: tracking off {untracked[-1]:.2f} s, on {tracked[-1]:.2f} s")

    off, on = statistics.median(untracked), statistics.median(tracked)
    figures = {
        "train_tracking_off_seconds": round(off, 3),
        "train_tracking_on_seconds": round(on, 3),
        "tracking_overhead_ratio": round((on - off) / off, 4),
        "pairwise_overhead_ratio_median": round(
            statistics.median((b - a) / a for a, b in zip(untracked, tracked, strict=True)), 4
        ),
        # CPU seconds of this process (the server's own work is not counted): steadier than
        # wall time when other work shares the machine.
        "train_tracking_off_cpu_seconds": round(statistics.median(untracked_cpu), 3),
        "train_tracking_on_cpu_seconds": round(statistics.median(tracked_cpu), 3),
        "tracking_cpu_overhead_ratio": round(
            statistics.median(tracked_cpu) / statistics.median(untracked_cpu) - 1, 4
        ),
        # What the server spent on one tracked train step (it shares this machine's cores).
        "server_cpu_seconds": round(statistics.median(server_cpu), 3),
        "cpu_cores": os.cpu_count(),
        "repeats": args.repeats,
        "transactions": f"{args.n_customers} customers, {args.n_terminals} terminals, "
        f"{args.n_days} days",
        "grid": args.grid,
    }
    print(json.dumps(figures, indent=2))
    print(
        f"tracking overhead: {100 * figures['tracking_overhead_ratio']:.1f}% of the training "
        f"time ({on - off:.2f} s of {off:.2f} s); goal: under 5%"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
