"""Helpers the tests share (fixtures live in ``conftest.py``; these are plain functions).

- ``pipeline``: small data, the steps run in-process, finding their runs;
- ``processes``: project copies, `mlflow run`, background processes on loopback;
- ``services``: PostgreSQL, the moto S3 server, tracking servers, `git daemon`;
- ``requirements``: skip (or, in CI, fail) a test whose component is not installed.
"""

from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]

# What `mlflow run` needs of the project (a copy keeps the tests away from the work tree's
# mlflow.db and mlruns/; docs/screenshots/take.py copies them too).
PROJECT_FILES = [
    "MLproject",
    "python_env.yaml",
    "conda.yaml",
    "pyproject.toml",
    "main.py",
    "train.py",
    "evaluate.py",
    "register.py",
    "serve.py",
    "monitor.py",
    "fraud_detection",
]
# The whole pipeline in about 30 s: small simulated data, one small model per family (no
# sweep), a lenient gate.
SMALL_RUN = {
    "n_customers": "500",
    "n_terminals": "1000",
    "n_days": "60",
    "seed": "1",
    "grid": "none",
    "n_estimators": "60",
    "min_roc_auc": "0.5",
    "min_average_precision": "0.01",
}
# Variables a launcher sets for its child; a test's launcher must not inherit the outer ones.
LAUNCHER_VARIABLES = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")
