"""Serve a registered model: score a file of transactions, or answer REST scoring requests.

    python serve.py batch --input transactions.csv --output scored.parquet
    python serve.py batch --model-uri models:/fraud-detector/3 --input t.parquet --output s.csv
    python serve.py api --model-uri models:/fraud-detector@champion --port 8080
    python serve.py webhook --url https://scoring.example.com/webhooks/registry

`api` speaks MLflow's scoring protocol (POST /invocations, as `mlflow models serve` does) and
follows the alias: when @champion moves, the new version is served within --poll-seconds, or
at once when the registry's webhook (`webhook`, secret in FRAUD_DETECTION_WEBHOOK_SECRET) calls.
It also scores raw transactions with online features (POST /transactions, POST /feedback;
warm start with --history, state shared by workers with --state-url: docs/serving.md), and
with --score-log DIR keeps what it scored and the labels fed back for `monitor.py --scored`.
"""

import sys

from fraud_detection.cli import (
    Command,
    main_with_commands,
)
from fraud_detection.config import ApiConfig, BatchConfig, WebhookConfig
from fraud_detection.serving.api import serve_api
from fraud_detection.serving.batch import score_batch
from fraud_detection.serving.webhooks import register_webhook

COMMANDS = {
    "batch": Command(BatchConfig, score_batch, "Score a CSV or Parquet file into another file."),
    "api": Command(ApiConfig, serve_api, "Answer scoring requests over HTTP until stopped."),
    "webhook": Command(
        WebhookConfig,
        register_webhook,
        "Register the registry webhook that tells `api` at once that its alias moved.",
    ),
}

if __name__ == "__main__":
    sys.exit(main_with_commands(COMMANDS, None, description=__doc__))
