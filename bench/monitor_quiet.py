"""Quiet weeks on the default data: the figures the monitor's default thresholds come from.

Trains, evaluates and registers the default model on 150 simulated days with the training
window at 2018-05-08 (so that 13 weekly windows come after its test week), scores the whole
table with serve.py batch's code, and runs the monitor on the registered version with thresholds
no window can cross; writes each window's largest feature PSI, score PSI, alert-rate ratio and
average-precision ratio (docs/monitoring.md, "Thresholds"). The score PSI and the alert-rate
ratio are against the version's out-of-sample reference (its evaluate run's test window); the
alert-rate ratio against the in-sample validation reference inside the model is written beside
it, for comparison.

    python bench/monitor_quiet.py --out bench/results/monitor_quiet.json
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import mlflow

from fraud_detection import contract
from fraud_detection.config import (
    BatchConfig,
    DataConfig,
    EvaluateConfig,
    MonitorConfig,
    RegisterConfig,
    SplitConfig,
    TrainConfig,
)
from fraud_detection.contract import Step
from fraud_detection.data.simulator import simulate_transactions
from fraud_detection.serving.batch import score_batch
from fraud_detection.steps.evaluate import evaluate
from fraud_detection.steps.monitor import monitor
from fraud_detection.steps.register import register
from fraud_detection.steps.train import train
from fraud_detection.tracking import find_step_run

EXPERIMENT = "fraud-detection"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-days", type=int, default=150)
    parser.add_argument("--train-start", default="2018-05-08")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        data = DataConfig(n_days=args.n_days)
        train(TrainConfig(data=data, split=SplitConfig(train_start=args.train_start)))
        evaluate(EvaluateConfig(run_id=find_step_run(EXPERIMENT, Step.TRAIN).info.run_id))
        register(RegisterConfig(run_id=find_step_run(EXPERIMENT, Step.EVALUATE).info.run_id))
        raw, scored = root / "transactions.csv", root / "scored.csv"
        simulate_transactions(data.simulator()).to_csv(raw, index=False)
        score_batch(BatchConfig(input=str(raw), output=str(scored)))
        monitor(
            MonitorConfig(
                scored=str(scored),
                psi_threshold=1e9,
                score_psi_threshold=1e9,
                alert_rate_ratio=1e9,
                min_ap_ratio=0.0,
            )
        )
        reference = _references()
        windows = _windows(reference["in_sample_alert_rate"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {"train_start": args.train_start, "reference": reference, "windows": windows}
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(windows, indent=1))


def _references() -> dict:
    """Both alert rates the monitor could compare with: the version's evaluate run's (test
    window, out of sample) and the profile's inside the model (validation, in sample)."""
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("fraud-detector", "champion")
    evaluate_run_id = version.tags[contract.EVALUATE_RUN_TAG]
    test = contract.read_score_reference(evaluate_run_id)
    profile = mlflow.artifacts.load_dict(
        f"models:/fraud-detector/{version.version}/artifacts/{contract.REFERENCE_PROFILE_FILE}"
    )
    monitor_run = find_step_run(EXPERIMENT, Step.MONITOR)
    return {
        "used": monitor_run.data.tags[contract.MONITOR_SCORE_REFERENCE_TAG],
        "out_of_sample_alert_rate": round(test.alert_rate, 6),
        "out_of_sample_rows": test.rows,
        "in_sample_alert_rate": round(profile["alert_rate"], 6),
        "in_sample_rows": profile["validation_rows"],
    }


def _windows(in_sample_alert_rate: float) -> list[dict]:
    client = mlflow.MlflowClient()
    parent = find_step_run(EXPERIMENT, Step.MONITOR)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["params.window_start ASC"],
    )
    rows = []
    for child in children:
        metrics = child.data.metrics
        psi = {key: value for key, value in metrics.items() if key.startswith("psi_")}
        worst = max(psi, key=psi.get)
        rows.append(
            {
                "window_start": child.data.params["window_start"][:10],
                "max_feature_psi": round(psi[worst], 4),
                "max_psi_feature": worst.removeprefix("psi_"),
                "score_psi": round(metrics["score_psi"], 4),
                "alert_rate_ratio": round(metrics["alert_rate_ratio"], 3),
                "alert_rate_ratio_in_sample": round(
                    metrics["alert_rate"] / in_sample_alert_rate, 3
                ),
                "average_precision_ratio": round(metrics.get("average_precision_ratio", -1), 3),
            }
        )
    return rows


if __name__ == "__main__":
    main()
