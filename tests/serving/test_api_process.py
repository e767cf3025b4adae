"""`serve.py api` as a real process on a free loopback port, next to `mlflow models serve`.

- a client written for `mlflow models serve` gets the same answers from `serve.py api`, reason
  codes (``"params": {"reasons": 3}``) included;
- the @champion alias is moved (promotion, then rollback) while clients keep sending requests:
  no request fails, and every answer comes whole from one version;
- several workers share the port and stop together; a stop while they load is a clean stop, a
  worker that dies fails the service.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc.scoring_server.client import ScoringServerClient
from mlflow.tracking import MlflowClient

from fraud_detection.data.features import (
    FEATURE_COLUMNS,
    add_features,
)
from fraud_detection.modelling.pyfunc import (
    DECISION_COLUMN,
    PROBABILITY_COLUMN,
    reason_column_names,
)
from fraud_detection.serving.api import IGNORED_COLUMNS_HEADER
from tests.support import PROJECT_DIR
from tests.support.pipeline import MODEL_NAME, TwoVersionStore, tiny_simulation
from tests.support.processes import background_process, free_port, http_ok
from tests.support.reasons import assert_reasons_agree, contributions_tolerance

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(two_version_store: TwoVersionStore, tmp_path_factory) -> str:
    """This module's copy of the two-version registry: its tracking URI."""
    database = tmp_path_factory.mktemp("served") / "mlflow.db"
    shutil.copy(two_version_store.database, database)
    return f"sqlite:///{database}"


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return add_features(tiny_simulation(seed=5, n_days=35))[list(FEATURE_COLUMNS)].tail(20)


@contextmanager
def running(command: list[str], tracking_uri: str, cwd: Path) -> Iterator[tuple[str, list[int]]]:
    """Start ``command`` (which listens on the port given as its last argument) in its own
    process group; yield its base URL once /ping answers, and a list that receives its exit
    code after it has been stopped with SIGTERM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    base = f"127.0.0.1:{command[-1]}"
    exit_code: list[int] = []
    log = cwd / f"server-{command[-1]}.log"
    with background_process(command, log, env=env, cwd=cwd) as server:
        server.wait_until(lambda: http_ok(f"http://{base}/ping"), 120, " ".join(command[1:3]))
        yield base, exit_code
    exit_code.append(server.process.returncode)


def _serve_api(model_uri: str, *flags: str) -> list[str]:
    port = str(free_port())
    return [
        sys.executable,
        str(PROJECT_DIR / "serve.py"),
        "api",
        "--model-uri",
        model_uri,
        *flags,
        "--port",
        port,
    ]


def _mlflow_models_serve(model_uri: str) -> list[str]:
    port = str(free_port())
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-w",
        "1",
        "-h",
        "127.0.0.1",
        "-p",
        port,
    ]


def _request(
    connection: http.client.HTTPConnection,
    body: bytes,
    content_type: str = "application/json",
    path: str = "/invocations",
) -> tuple[int, dict[str, str], bytes]:
    connection.request("POST", path, body=body, headers={"Content-Type": content_type})
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_a_client_of_mlflow_models_serve_works_unchanged(store, rows, tmp_path):
    # Version 2 (@challenger) is an XGBoost model: both services must give identical bytes (but
    # for one row's reason codes: NumPy TreeSHAP, within its tolerance of XGBoost's).
    uri = f"models:/{MODEL_NAME}@challenger"
    split = rows.to_dict(orient="split")
    records = rows.to_dict(orient="records")
    requests = {
        "dataframe_split": (json.dumps({"dataframe_split": split}).encode(), "application/json"),
        "dataframe_records": (
            json.dumps({"dataframe_records": records}).encode(),
            "application/json",
        ),
        "inputs": (
            json.dumps({"inputs": rows.to_dict(orient="list")}).encode(),
            "application/json",
        ),
        "instances": (json.dumps({"instances": records}).encode(), "application/json"),
        "csv": (rows.to_csv(index=False).encode(), "text/csv"),
        # One and a few rows go through the NumPy tree walk: the same bytes all the same.
        "one row": (json.dumps({"dataframe_records": records[:1]}).encode(), "application/json"),
        "eight rows": (json.dumps({"dataframe_records": records[:8]}).encode(), "application/json"),
        # Reason codes, asked through the protocol's params (20 rows: XGBoost; one row: NumPy).
        "reasons": (
            json.dumps({"dataframe_split": split, "params": {"reasons": 3}}).encode(),
            "application/json",
        ),
        "reasons, one row": (
            json.dumps({"dataframe_records": records[:1], "params": {"reasons": 3}}).encode(),
            "application/json",
        ),
    }
    answers: dict[str, dict[str, tuple[int, bytes]]] = {}
    for name, command in (("mlflow", _mlflow_models_serve(uri)), ("ours", _serve_api(uri))):
        with running(command, store, tmp_path) as (base, _):
            connection = http.client.HTTPConnection(base, timeout=60)
            answers[name] = {
                key: _request(connection, body, kind)[::2] for key, (body, kind) in requests.items()
            }
            missing = json.dumps({"dataframe_records": [{"TX_AMOUNT": 1.0}]}).encode()
            answers[name]["missing column"] = _request(connection, missing)[::2]
            for bad in (-1, 99, 2.5):
                body = json.dumps({"dataframe_records": records[:1], "params": {"reasons": bad}})
                answers[name][f"reasons {bad}"] = _request(connection, body.encode())[::2]
            connection.close()
            # MLflow's own Python client for its scoring server.
            host, port = base.split(":")
            client = ScoringServerClient(host, int(port))
            answers[name]["mlflow client"] = client.invoke(rows).get_predictions()
    # One row with reasons: contributions from NumPy TreeSHAP, within its tolerance of XGBoost's.
    within_tolerance = {"reasons, one row"}
    for key in requests:
        assert answers["ours"][key][0] == answers["mlflow"][key][0] == 200, key
        if key not in within_tolerance:
            assert answers["ours"][key] == answers["mlflow"][key], key
    mlflow.set_tracking_uri(store)
    try:
        atol = contributions_tolerance(uri)
    finally:
        mlflow.set_tracking_uri(None)
    for key in within_tolerance:
        ours, theirs = (
            pd.DataFrame(json.loads(answers[name][key][1])["predictions"])
            for name in ("ours", "mlflow")
        )
        assert_reasons_agree(ours, theirs, 3, atol)
    pd.testing.assert_frame_equal(
        answers["ours"]["mlflow client"], answers["mlflow"]["mlflow client"]
    )
    assert answers["mlflow"]["missing column"][0] == answers["ours"]["missing column"][0] == 400
    message = json.loads(answers["ours"]["missing column"][1])["message"]
    assert message.startswith("missing required column(s): TX_DURING_WEEKEND, ")
    explained = json.loads(answers["ours"]["reasons"][1])["predictions"][0]
    assert list(explained) == [PROBABILITY_COLUMN, DECISION_COLUMN, *reason_column_names(3)]
    for bad in (-1, 99, 2.5):
        statuses = answers["mlflow"][f"reasons {bad}"][0], answers["ours"][f"reasons {bad}"][0]
        assert statuses == (400, 400), bad
        assert "reasons" in json.loads(answers["ours"][f"reasons {bad}"][1])["message"]


def test_large_and_bad_requests_leave_the_service_answering(store, rows, tmp_path):
    with running(_serve_api(f"models:/{MODEL_NAME}/2"), store, tmp_path) as (base, exit_code):
        good = json.dumps({"dataframe_split": rows.to_dict(orient="split")}).encode()
        connection = http.client.HTTPConnection(base, timeout=60)
        status, _, body = _request(connection, b"{" + b" " * (17 * 1024 * 1024))
        assert status == 413
        assert b"larger than 16777216 bytes" in body
        connection.close()
        connection = http.client.HTTPConnection(base, timeout=60)
        for bad in (b"{not json", b'{"dataframe_split": {"columns": ["x"], "data": [[1]]}}'):
            status, _, body = _request(connection, bad)
            assert status == 400
            assert b"Traceback" not in body
        assert _request(connection, good)[0] == 200
        connection.close()
    assert exit_code == [0]


# A value a client must never see repeated back: it stands for a card number in a bad request.
SECRET = "4111-1111-1111-1111"


def bad_requests(rows: pd.DataFrame) -> dict[str, bytes]:
    """One JSON body per kind of bad request (issue 7), each carrying SECRET where it can."""
    records = rows.head(2).to_dict(orient="records")

    def changed(**values: object) -> bytes:
        return json.dumps({"dataframe_records": [records[0], {**records[1], **values}]}).encode()

    without_amount = [{k: v for k, v in record.items() if k != "TX_AMOUNT"} for record in records]
    nan_row = {"columns": list(rows.columns), "data": [[float("nan")] * len(rows.columns)]}
    return {
        "malformed JSON": b'{"dataframe_records": [' + SECRET.encode(),
        "missing column": json.dumps({"dataframe_records": without_amount}).encode(),
        "wrong type": changed(TX_AMOUNT=SECRET),
        "null": changed(TX_AMOUNT=None),
        "NaN": json.dumps({"dataframe_split": nan_row}).encode(),  # json writes NaN
        "no rows": b'{"dataframe_records": []}',
        "empty body": b"",
        "not an object": json.dumps([SECRET]).encode(),
        "unknown key": json.dumps({"rows": SECRET}).encode(),
    }


def test_bad_requests_get_4xx_from_both_services_which_keep_serving(store, rows, tmp_path):
    """Both services refuse every bad request and go on answering; ours also never repeats the
    request nor shows a stack trace (MLflow's does both: README, "Serving")."""
    uri = f"models:/{MODEL_NAME}/2"
    good = json.dumps({"dataframe_records": rows.head(2).to_dict(orient="records")}).encode()
    extra = json.dumps(
        {"dataframe_records": rows.head(2).assign(note=SECRET).to_dict(orient="records")}
    ).encode()
    for name, command in (("mlflow", _mlflow_models_serve(uri)), ("ours", _serve_api(uri))):
        with running(command, store, tmp_path) as (base, _):
            connection = http.client.HTTPConnection(base, timeout=60)
            for case, body in bad_requests(rows).items():
                status, _, content = _request(connection, body)
                assert 400 <= status < 500, (name, case, status)
                if name == "ours":
                    assert SECRET.encode() not in content, case
                    assert b"Traceback" not in content and b"stack_trace" not in content, case
                    assert set(json.loads(content)) == {"error_code", "message"}, case
            status, headers, _ = _request(connection, extra)
            assert status == 200  # both score the model's columns; ours names the others
            ignored = headers.get(IGNORED_COLUMNS_HEADER.lower())
            assert ignored == ("note" if name == "ours" else None)
            assert _request(connection, good)[0] == 200, name
            connection.close()


def _expected(store: str, version: str, rows: pd.DataFrame) -> pd.DataFrame:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store)
        mlflow.set_tracking_uri(store)
        try:
            return mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}").predict(rows)
        finally:
            mlflow.set_tracking_uri(None)


def _matches(answer: pd.DataFrame, expected: pd.DataFrame) -> bool:
    return np.allclose(
        answer[PROBABILITY_COLUMN], expected[PROBABILITY_COLUMN], rtol=1e-6, atol=0
    ) and np.array_equal(answer[DECISION_COLUMN], expected[DECISION_COLUMN])


def test_the_alias_moves_under_load(store, rows, tmp_path):
    expected = {version: _expected(store, version, rows) for version in ("1", "2")}
    assert not _matches(expected["1"], expected["2"])  # the two versions can be told apart
    client = MlflowClient(tracking_uri=store)
    client.set_registered_model_alias(MODEL_NAME, "champion", "1")
    body = json.dumps({"dataframe_records": rows.to_dict(orient="records")}).encode()
    command = _serve_api(f"models:/{MODEL_NAME}@champion", "--poll-seconds", "0.2")
    with running(command, store, tmp_path) as (base, exit_code):
        stop = threading.Event()
        answers: list[list[tuple[int, str, bytes]]] = [[] for _ in range(4)]

        def client_loop(log: list[tuple[int, str, bytes]]) -> None:
            connection = http.client.HTTPConnection(base, timeout=60)
            while not stop.is_set():
                status, headers, content = _request(connection, body)
                log.append((status, headers.get("x-model-version", ""), content))
            connection.close()

        def wait_for(version: str, more: int) -> None:
            count = sum(map(len, answers))
            deadline = time.monotonic() + 60
            while sum(map(len, answers)) < count + more or not any(
                log and log[-1][1] == version for log in answers
            ):
                assert time.monotonic() < deadline, f"version {version} never served"
                time.sleep(0.05)

        threads = [threading.Thread(target=client_loop, args=(log,)) for log in answers]
        for thread in threads:
            thread.start()
        try:
            wait_for("1", 50)
            client.set_registered_model_alias(MODEL_NAME, "champion", "2")  # promotion
            wait_for("2", 50)
            client.set_registered_model_alias(MODEL_NAME, "champion", "1")  # rollback
            wait_for("1", 50)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        connection = http.client.HTTPConnection(base, timeout=10)
        connection.request("GET", "/metrics")
        metrics = connection.getresponse().read().decode()
        connection.close()
    assert exit_code == [0]

    for log in answers:
        assert all(status == 200 for status, _, _ in log)  # no request failed
        versions = [version for _, version, _ in log]
        # Each client saw 1, then 2, then 1 again: a switch, never a flicker back and forth.
        changes = sum(a != b for a, b in itertools.pairwise(versions))
        assert changes <= 2, versions
        for _, version, content in log:  # every answer is whole, from the version it names
            assert _matches(pd.DataFrame(json.loads(content)["predictions"]), expected[version])
    assert {version for log in answers for _, version, _ in log} == {"1", "2"}
    assert "fraud_serving_model_swaps_total 2" in metrics


def test_several_workers_share_the_port_and_stop_together(store, rows, tmp_path):
    body = json.dumps({"dataframe_split": rows.to_dict(orient="split")}).encode()
    command = _serve_api(f"models:/{MODEL_NAME}@champion", "--workers", "2")
    with running(command, store, tmp_path) as (base, exit_code):
        for _ in range(2):  # new connections: the kernel spreads them over the workers
            connection = http.client.HTTPConnection(base, timeout=60)
            for _ in range(5):
                status, headers, _ = _request(connection, body)
                assert (status, headers["x-model-version"]) == (200, "1")
            connection.close()
    assert exit_code == [0]


def test_a_stop_while_the_workers_load_the_model_is_a_clean_stop(store, tmp_path):
    """SIGTERM to the group while the workers are still loading (CI hit it: the service answered
    on one worker while the other was still loading when the test stopped it, and the supervisor
    took the loading worker's stop for a crash). A stop is a stop: exit 0, nothing left behind."""
    command = _serve_api(f"models:/{MODEL_NAME}@champion", "--workers", "2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = store
    log = tmp_path / "server.log"
    with background_process(command, log, env=env, cwd=tmp_path) as server:
        server.wait_until(lambda: "Started 2 workers" in log.read_text(), 120, "serve.py api")
        time.sleep(0.5)  # the workers are importing and loading: loading takes seconds
        assert "Serving models:/" not in log.read_text()
        server.stop()
    assert server.process.returncode == 0, log.read_text()
    assert "exited with" not in log.read_text()


def test_a_worker_that_dies_stops_the_service_with_an_error(store, tmp_path):
    """A worker killed (the OOM killer's SIGKILL) is a crash, not a stop: the supervisor stops
    the other worker and fails, so that systemd or Kubernetes restarts the service whole."""
    command = _serve_api(f"models:/{MODEL_NAME}@champion", "--workers", "2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = store
    log = tmp_path / "server.log"
    base = f"http://127.0.0.1:{command[-1]}"
    with background_process(command, log, env=env, cwd=tmp_path) as server:
        server.wait_until(lambda: http_ok(f"{base}/ping"), 120, "serve.py api")
        started = next(line for line in log.read_text().splitlines() if "Started 2 workers" in line)
        victim = json.loads(started.split(": ", 2)[-1])[0]
        os.kill(victim, 9)
        server.process.wait(timeout=60)
    assert server.process.returncode == 1
    assert f"(pid {victim}) exited with -9" in log.read_text()
