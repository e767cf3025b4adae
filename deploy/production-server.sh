#!/usr/bin/env bash
# Production tracking server: PostgreSQL for runs and the registry, S3 for artifacts, users and
# passwords (MLflow's basic-auth app), and only the host names you list accepted.
#
# Required (MLflow's own variable names where it has one; `mlflow server --help`):
#   MLFLOW_BACKEND_STORE_URI         postgresql://USER:PASSWORD@HOST:5432/mlflow
#   MLFLOW_AUTH_DATABASE_URI         where users and permissions live, e.g. another database
#                                    of the same PostgreSQL: postgresql://.../mlflow_auth
#   MLFLOW_AUTH_ADMIN_PASSWORD       the admin's password (first start only: creates the user)
#   MLFLOW_FLASK_SERVER_SECRET_KEY   a long random string, the same on every replica (CSRF)
#   MLFLOW_SERVER_ALLOWED_HOSTS      the Host names clients use, e.g. mlflow.example.com
#   and one artifact mode:
#     proxied (clients need no S3 access):
#       MLFLOW_ARTIFACTS_DESTINATION=s3://BUCKET/PREFIX
#     direct (clients read and write S3 themselves, with their own credentials):
#       MLFLOW_SERVE_ARTIFACTS=false MLFLOW_DEFAULT_ARTIFACT_ROOT=s3://BUCKET/PREFIX
# Optional: MLFLOW_AUTH_ADMIN_USERNAME (admin), MLFLOW_AUTH_DEFAULT_PERMISSION (READ: what a
# signed-in user may do on what others created; NO_PERMISSIONS, READ, EDIT, MANAGE),
# MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (MLflow's default, 4),
# MLFLOW_SERVER_CORS_ALLOWED_ORIGINS, and for S3 the usual AWS_* variables (plus
# MLFLOW_S3_ENDPOINT_URL for an S3-compatible store such as MinIO).
# Extra arguments are passed to `mlflow server`. The server needs `pip install -e ".[postgres,s3]"`
# (psycopg2 and boto3) besides MLflow.
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI=postgresql://USER:PASSWORD@HOST:5432/mlflow}"
: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI (users and permissions), e.g. postgresql://USER:PASSWORD@HOST:5432/mlflow_auth}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY to a long random string}"
: "${MLFLOW_SERVER_ALLOWED_HOSTS:?set MLFLOW_SERVER_ALLOWED_HOSTS to the host names clients use}"
if [[ -z "${MLFLOW_ARTIFACTS_DESTINATION:-}" && -z "${MLFLOW_DEFAULT_ARTIFACT_ROOT:-}" ]]; then
  echo "production-server.sh: set MLFLOW_ARTIFACTS_DESTINATION=s3://BUCKET/PREFIX (proxied)" \
    "or MLFLOW_SERVE_ARTIFACTS=false MLFLOW_DEFAULT_ARTIFACT_ROOT=s3://BUCKET/PREFIX (direct)" >&2
  exit 2
fi

export MLFLOW_HOST="${MLFLOW_HOST:-0.0.0.0}"
export MLFLOW_PORT="${MLFLOW_PORT:-5000}"
# MLflow 3 also starts a job runner (for GenAI features this project does not use): ~3 GB.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

# The basic-auth app reads its settings from an ini file, not from variables: write one that
# only this user can read, for the life of the server.
config_dir=$(mktemp -d)
trap 'rm -rf "$config_dir"' EXIT
export MLFLOW_AUTH_CONFIG_PATH="$config_dir/basic_auth.ini"
(
  umask 077
  cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = $MLFLOW_AUTH_DATABASE_URI
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}
INI
)

mlflow server --app-name basic-auth "$@" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true' TERM INT HUP
status=0
wait "$server" || status=$?
# A signal interrupts `wait`: wait again until the server has shut down.
while kill -0 "$server" 2>/dev/null; do wait "$server" || status=$?; done
exit "$status"
