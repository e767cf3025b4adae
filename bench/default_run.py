"""The quick start as a user runs it: how long the default pipeline takes, and what it scores.

Runs the README's pipeline command (`mlflow run . --env-manager local --experiment-name
fraud-detection`, default parameters) in a fresh copy of the project with this environment's
packages, then reads the test metrics of its evaluate run and counts the warning lines it
printed that do not come from the template itself (the README promises none).

    python bench/default_run.py --out bench/results/default_run.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
METRICS = ("test_roc_auc", "test_average_precision", "test_card_precision_at_100")


def run_default_pipeline(workdir: Path, timeout: float = 900, **params: str) -> dict[str, float]:
    """Run the quick start's pipeline in a copy of the project under ``workdir`` (``params``:
    `-P` parameters on top of the defaults)."""
    from mlflow.tracking import MlflowClient

    from tests.support.processes import copy_project, mlflow_environment, mlflow_run

    project = copy_project(workdir / "project")
    # Spark, when asked for, binds to loopback (this machine has other interfaces).
    env = mlflow_environment(
        None, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", SPARK_LOCAL_IP="127.0.0.1"
    )
    started = time.perf_counter()
    result = mlflow_run(
        project, env, "--experiment-name", "fraud-detection", cwd=project, timeout=timeout, **params
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"the pipeline failed:\n{result.stderr[-3000:]}")
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fraud-detection")
    evaluation = client.search_runs(
        [experiment.experiment_id], "tags.`fraud.step` = 'evaluate'", max_results=1
    )[0]
    output = (result.stdout + result.stderr).splitlines()
    foreign = [line for line in output if re.search(r"\bWARNING\b(?! fraud_detection)", line)]
    return {
        "pipeline_seconds": round(seconds, 1),
        **{name: round(evaluation.data.metrics[name], 4) for name in METRICS},
        "output_lines": len(output),
        "foreign_warnings": len(foreign),
        "cores": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    sys.path.insert(0, str(PROJECT_DIR))  # the project-copy helper is the test suite's
    with tempfile.TemporaryDirectory(prefix="default-run-") as scratch:
        figures = run_default_pipeline(Path(scratch))
    for key, value in figures.items():
        print(f"{key:<28} {value:g}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
