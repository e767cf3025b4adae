"""Pipeline entry point (`mlflow run .`): train, evaluate and register, each as a project run.

python main.py --help
"""

from pathlib import Path

from fraud_detection.cli import run
from fraud_detection.config import PipelineConfig
from fraud_detection.steps.pipeline import run_pipeline

if __name__ == "__main__":
    project_dir = Path(__file__).resolve().parent
    run(PipelineConfig, lambda config: run_pipeline(config, project_dir), description=__doc__)
