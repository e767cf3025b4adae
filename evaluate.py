"""Evaluate entry point: score a train run's model on its test period, beside @champion.

python evaluate.py --help
"""

from fraud_detection.cli import run
from fraud_detection.config import EvaluateConfig
from fraud_detection.steps.evaluate import evaluate

if __name__ == "__main__":
    run(EvaluateConfig, evaluate, description=__doc__)
