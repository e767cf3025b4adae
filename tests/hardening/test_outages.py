"""Which part of the tracking stack failed; a store outage ridden out, a dead server not.

The server-side cases use a stand-in HTTP server on loopback that answers as the real
production stack answered when it was measured (PostgreSQL stopped: 503 with psycopg's error
on every authenticated request; S3 cut: 500 on artifact requests, the rest fine): it makes each
answer reproducible in milliseconds. The real stack, with PostgreSQL stopped and S3 cut, is in
tests/integration/test_store_faults.py.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from fraud_detection.errors import OutageError
from fraud_detection.hardening import outages
from fraud_detection.hardening.outages import (
    ARTIFACT_STORE,
    DATABASE,
    SERVER,
    SERVER_ERROR,
    call_with_store_retry,
    diagnose,
)
from tests.support.processes import free_port

DATABASE_DOWN = {
    "error_code": "TEMPORARILY_UNAVAILABLE",
    "message": "(psycopg.OperationalError) connection failed: connection to server at "
    '"127.0.0.1", port 5432 failed: Connection refused\n\tIs the server running?',
}


@contextmanager
def stand_in_server(database_up: bool, artifacts_up: bool) -> Iterator[str]:
    """An HTTP server answering like an `mlflow server` whose stores are up or down."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            if self.path.startswith("/api/2.0/mlflow-artifacts/") and not artifacts_up:
                status, body, kind = 500, b"Internal Server Error", "text/plain"
            elif not database_up:
                status, body, kind = 503, json.dumps(DATABASE_DOWN).encode(), "application/json"
            else:
                status, body, kind = 200, b'{"experiment": {}, "files": []}', "application/json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _answer  # noqa: N815 - http.server's method names

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def _failure(call) -> BaseException:
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


@pytest.mark.no_tracking_store
def test_a_dead_server_is_the_server(no_retries):
    client = MlflowClient(f"http://127.0.0.1:{free_port()}")
    outage = diagnose(_failure(lambda: client.get_experiment_by_name("x")))
    assert outage is not None and outage.part == SERVER
    assert outage.symptom == "connection refused"
    assert outage.request == "/api/2.0/mlflow/experiments/get-by-name"
    assert "did not answer" in outage.describe()


@pytest.mark.no_tracking_store
def test_a_server_whose_database_is_down_names_the_database(no_retries):
    with stand_in_server(database_up=False, artifacts_up=True) as url:
        error = _failure(lambda: MlflowClient(url).create_run("1"))
        outage = diagnose(error)
    assert outage is not None and outage.part == DATABASE
    assert outage.request == "/api/2.0/mlflow/runs/create"
    assert "HTTP 503: (psycopg.OperationalError) connection failed" in outage.symptom
    line = outage.describe(url)
    assert line.startswith(f"the database behind the tracking server {url} is unavailable")
    assert "\n" not in line


@pytest.mark.no_tracking_store
def test_a_server_whose_artifact_store_is_down_names_the_artifact_store(no_retries, tmp_path):
    (tmp_path / "recipe.json").write_text("{}")
    with stand_in_server(database_up=True, artifacts_up=False) as url:
        from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

        repository = HttpArtifactRepository(f"{url}/api/2.0/mlflow-artifacts/artifacts/1/run")
        error = _failure(lambda: repository.log_artifact(str(tmp_path / "recipe.json")))
        outage = diagnose(error)
    assert outage is not None and outage.part == ARTIFACT_STORE
    assert outage.request.startswith("/api/2.0/mlflow-artifacts/artifacts/1/run")
    assert "artifact store" in outage.describe(url)


@pytest.mark.no_tracking_store
def test_a_5xx_while_both_stores_answer_is_the_servers_own(no_retries):
    error = MlflowException(
        "API request to {url}/api/2.0/mlflow/runs/log-batch failed with exception "
        "HTTPConnectionPool(host='127.0.0.1'): Max retries exceeded with url: "
        "/api/2.0/mlflow/runs/log-batch (Caused by ResponseError('too many 500 error responses'))"
    )
    with stand_in_server(database_up=True, artifacts_up=True) as url:
        error = MlflowException(str(error).replace("{url}", url))
        outage = diagnose(error)
    assert outage is not None and outage.part == SERVER_ERROR


@pytest.mark.slow  # botocore comes with the integration extra, not with the dev one
def test_s3_unreachable_from_the_client_is_the_artifact_store():
    from botocore.exceptions import EndpointConnectionError

    error = EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket/model/MLmodel")
    outage = diagnose(error)
    assert outage is not None and outage.part == ARTIFACT_STORE
    assert outage.request == "/bucket/model/MLmodel"


@pytest.mark.parametrize(
    "error",
    [
        RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run 'x' not found"}),
        ValueError("column TX_AMOUNT has 3 missing value(s)"),
        MlflowException("Registered model alias champion not found."),
    ],
    ids=["missing run", "bad data", "missing alias"],
)
def test_what_is_not_an_outage_is_not_diagnosed_as_one(error):
    assert diagnose(error) is None


@pytest.mark.no_tracking_store
def test_a_store_outage_is_ridden_out_and_a_dead_server_is_not(no_retries, monkeypatch):
    monkeypatch.setattr(outages, "_PAUSE_SECONDS", 0.05)
    with stand_in_server(database_up=False, artifacts_up=True) as url:
        client = MlflowClient(url)
        attempts = []

        def create_run():
            attempts.append(time.monotonic())
            if len(attempts) == 3:
                return "created"
            return client.create_run("1")

        assert call_with_store_retry(create_run) == "created"
        assert len(attempts) == 3

        monkeypatch.setenv(outages.STORE_RETRY_VARIABLE, "0.3")
        with pytest.raises(OutageError, match="still unavailable after") as caught:
            call_with_store_retry(client.create_run, "1")
        assert caught.value.outage.part == DATABASE

    dead = MlflowClient(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(MlflowException, match="Connection refused"):
        call_with_store_retry(dead.create_run, "1")
    assert time.monotonic() - started < 5  # not retried beyond MLflow's own budget


def test_the_store_retry_budget_is_a_setting(monkeypatch):
    from fraud_detection.config import ConfigError

    assert outages.store_retry_seconds() == outages.DEFAULT_STORE_RETRY_SECONDS
    monkeypatch.setenv(outages.STORE_RETRY_VARIABLE, "45")
    assert outages.store_retry_seconds() == 45
    monkeypatch.setenv(outages.STORE_RETRY_VARIABLE, "soon")
    with pytest.raises(ConfigError, match="FRAUD_DETECTION_STORE_RETRY_SECONDS must be"):
        outages.store_retry_seconds()
