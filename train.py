"""Train entry point: fit the candidates, pick the best on validation, log one model.

python train.py --help
"""

from fraud_detection.cli import run
from fraud_detection.config import TrainConfig
from fraud_detection.steps.train import train

if __name__ == "__main__":
    run(TrainConfig, train, description=__doc__)
