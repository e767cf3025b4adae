"""Monitor entry point: drift and delayed-label performance of a model on files it scored.

python monitor.py --help    (docs/monitoring.md; exit 3 when a threshold is crossed)
"""

from pathlib import Path

from fraud_detection.cli import run
from fraud_detection.config import MonitorConfig
from fraud_detection.steps.monitor import monitor
from fraud_detection.steps.pipeline import run_pipeline

if __name__ == "__main__":
    project_dir = Path(__file__).resolve().parent
    run(
        MonitorConfig,
        lambda config: monitor(config, lambda pipeline: run_pipeline(pipeline, project_dir)),
        description=__doc__,
    )
