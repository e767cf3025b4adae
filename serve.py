"""Serve a registered model: score a file of transactions with @champion (or any model URI).

    python serve.py batch --input transactions.csv --output scored.csv
    python serve.py batch --model-uri models:/fraud-detector/3 --input t.parquet --output s.parquet

For a REST endpoint, MLflow's own scoring server serves the same model:
    mlflow models serve -m models:/fraud-detector@champion --env-manager local -p 5001
"""

import sys

from fraud_detection.cli import Command, main_with_commands
from fraud_detection.serving import BatchConfig, score_batch

COMMANDS = {
    "batch": Command(BatchConfig, score_batch, "Score a CSV or Parquet file into another file."),
}

if __name__ == "__main__":
    sys.exit(main_with_commands(COMMANDS, None, description=__doc__))
