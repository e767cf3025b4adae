"""A real `mlflow server` on loopback delivers its registry webhook to `serve.py api`.

One tracking server (with the settings a loopback webhook needs), two services following
@champion through it: one hears the webhook and polls only every 10 minutes (two workers: the
one that gets the delivery tells the other), the other only polls, every few seconds. The alias
moves once; the time from the move to the first answer from the new version is measured on both
(bench/serving.py measures the same way).
"""

from __future__ import annotations

import http.client
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from mlflow.tracking import MlflowClient

from fraud_detection.data.features import FEATURE_COLUMNS, add_features
from fraud_detection.serving.webhooks import WEBHOOK_PATH, WEBHOOK_SECRET_VARIABLE
from tests.support import PROJECT_DIR
from tests.support.pipeline import MODEL_NAME, TwoVersionStore, tiny_simulation
from tests.support.processes import (
    assert_succeeded,
    background_process,
    free_port,
    http_ok,
    mlflow_environment,
    run_command,
)
from tests.support.services import dev_server

pytestmark = pytest.mark.slow

SECRET = "throwaway-webhook-secret"
HEARING_POLL_SECONDS = 600  # never reached in this test: only the webhook can swap in time
POLL_SECONDS = 5
# What the tracking server needs to deliver to a loopback URL, and to read the secret it stored
# (encrypted with this key; without one, each server process makes up its own).
WEBHOOK_SERVER_SETTINGS = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
}


def test_the_webhook_swaps_the_version_long_before_a_poll_would(
    two_version_store: TwoVersionStore, tmp_path: Path
):
    database = tmp_path / "mlflow.db"
    shutil.copy(two_version_store.database, database)
    settings = {
        **WEBHOOK_SERVER_SETTINGS,
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{database}",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    row = add_features(tiny_simulation(seed=5, n_days=35))[list(FEATURE_COLUMNS)].tail(1)
    body = json.dumps({"dataframe_split": row.to_dict(orient="split")}).encode()
    with dev_server(tmp_path, settings=settings) as tracking, ExitStack() as services:
        client_env = mlflow_environment(tracking.url, **{WEBHOOK_SECRET_VARIABLE: SECRET})
        hearing = services.enter_context(
            _serve_api(
                client_env, tmp_path, "--poll-seconds", str(HEARING_POLL_SECONDS), "--workers", "2"
            )
        )
        polling_env = {k: v for k, v in client_env.items() if k != WEBHOOK_SECRET_VARIABLE}
        polling = services.enter_context(
            _serve_api(polling_env, tmp_path, "--poll-seconds", str(POLL_SECONDS))
        )
        url = f"http://127.0.0.1:{hearing.port}{WEBHOOK_PATH}"
        registered = run_command(
            [sys.executable, str(PROJECT_DIR / "serve.py"), "webhook", "--url", url],
            client_env,
            timeout=120,
        )
        assert_succeeded(registered)
        # MLflow's test delivery (an example model): signed with the same secret, so 200.
        assert "test delivery answered 200" in registered.stdout
        assert _version(hearing.port, body) == _version(polling.port, body) == "1"

        started = time.monotonic()
        MlflowClient(tracking.url).set_registered_model_alias(MODEL_NAME, "champion", "2")
        seconds = _seconds_until_version_on_both((hearing.port, polling.port), body, started)
        swapped = f"Now serving {MODEL_NAME} version 2"
        # The worker that did not get the delivery was told by the one that did.
        hearing.process.wait_until(
            lambda: hearing.process.log_tail(50_000).count(swapped) == 2, 60, "the second worker"
        )
        hearing_log = hearing.process.log_tail(50_000)
    webhook_seconds, poll_seconds = seconds
    print(f"alias moved -> version 2 answers: webhook {webhook_seconds:.2f} s, ", end="")
    print(f"polling every {POLL_SECONDS} s {poll_seconds:.2f} s")
    assert "Registry webhook: model_version_alias.created" in hearing_log
    # Its own poll was 10 minutes away: only the webhook can have made it swap this soon.
    assert webhook_seconds < HEARING_POLL_SECONDS / 10
    assert poll_seconds < POLL_SECONDS + 60  # the fallback still works


class _Service:
    def __init__(self, port: int, process) -> None:
        self.port = port
        self.process = process


@contextmanager
def _serve_api(env: dict[str, str], workdir: Path, *flags: str) -> Iterator[_Service]:
    port = free_port()
    command = [sys.executable, str(PROJECT_DIR / "serve.py"), "api", *flags, "--port", str(port)]
    with background_process(command, workdir / f"api-{port}.log", env=env, cwd=workdir) as api:
        api.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ping"), 120, "serve.py api")
        yield _Service(port, api)


def _version(port: int, body: bytes) -> str:
    """The version named by an answer to ``body`` (one feature row)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        return response.getheader("X-Model-Version")
    finally:
        connection.close()


def _seconds_until_version_on_both(
    ports: tuple[int, int], body: bytes, started: float, version: str = "2"
) -> tuple[float, float]:
    """Seconds from ``started`` to the first answer from ``version`` on each port (one request
    every 20 ms per port)."""
    seconds: dict[int, float] = {}

    def watch(port: int) -> None:
        deadline = started + 120
        while time.monotonic() < deadline:
            if _version(port, body) == version:
                seconds[port] = time.monotonic() - started
                return
            time.sleep(0.02)

    threads = [threading.Thread(target=watch, args=(port,)) for port in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    missing = [port for port in ports if port not in seconds]
    assert not missing, f"no answer from version {version} after 120 s on port(s) {missing}"
    return seconds[ports[0]], seconds[ports[1]]
