"""Same quality on both engines: the quick start's pipeline with `engine=pandas` and with
`engine=spark` (local mode) on the default data, and the difference of their champions' test
average precision (goal: within 0.01).

Each engine runs the README's pipeline command in a fresh copy of the project
(`bench/default_run.py`), with `-P engine=...` added; needs the `spark` extra and Java 17.

    python bench/engine_quality.py --out bench/results/engine_quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
GOAL = 0.01
ENGINES = ("pandas", "spark")


def measure() -> dict[str, float]:
    """Both engines' default pipelines: seconds and test metrics, and the gap in AP."""
    sys.path.insert(0, str(PROJECT_DIR))  # default_run's helpers are the test suite's
    sys.path.insert(0, str(PROJECT_DIR / "bench"))
    from default_run import METRICS, run_default_pipeline

    figures: dict[str, float] = {"cores": os.cpu_count() or 0}
    for engine in ENGINES:
        with tempfile.TemporaryDirectory(prefix=f"engine-quality-{engine}-") as scratch:
            # Spark on 2 cores takes several times pandas' minute: a long time limit.
            result = run_default_pipeline(Path(scratch), timeout=3600, engine=engine)
        figures[f"{engine}_pipeline_seconds"] = result["pipeline_seconds"]
        for name in METRICS:
            figures[f"{engine}_{name}"] = result[name]
    gap = abs(figures["spark_test_average_precision"] - figures["pandas_test_average_precision"])
    figures["average_precision_gap"] = round(gap, 4)
    figures["average_precision_gap_within_goal"] = float(gap <= GOAL)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    figures = measure()
    for key, value in figures.items():
        print(f"{key:<40} {value:g}")
    print(
        f"engine quality: spark AP {figures['spark_test_average_precision']:.4f} vs pandas "
        f"{figures['pandas_test_average_precision']:.4f} (gap {figures['average_precision_gap']}"
        f", goal <= {GOAL})"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
