"""The pieces that tests of store failures behind a tracking server are built from, checked on
their own: a PostgreSQL cluster that stops and starts again, a TCP proxy that cuts a link (the
server's to S3, say) and restores it, and a production server that reaches S3 through one.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests.support.services import S3, S3_ENVIRONMENT, Postgres, production_server
from tests.support.tcp_proxy import TcpProxy, tcp_proxy

# The integration extra's packages: absent from the fast layer's environment, which only collects
# this module (its tests are slow).
boto3 = pytest.importorskip("boto3")
psycopg = pytest.importorskip("psycopg")
botocore_config = pytest.importorskip("botocore.config")
botocore_exceptions = pytest.importorskip("botocore.exceptions")
Config = botocore_config.Config
ConnectionClosedError = botocore_exceptions.ConnectionClosedError
EndpointConnectionError = botocore_exceptions.EndpointConnectionError

pytestmark = pytest.mark.slow


def _answers(postgres: Postgres) -> bool:
    try:
        with psycopg.connect(postgres.uri("postgres", driver=""), connect_timeout=2) as db:
            return db.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


@pytest.mark.parametrize("mode", ["fast", "immediate", "kill"])
def test_postgres_stops_and_starts_again(stoppable_postgres: Postgres, mode: str) -> None:
    open_before = psycopg.connect(stoppable_postgres.uri("postgres", driver=""))
    try:
        with stoppable_postgres.outage(mode):
            assert not stoppable_postgres.running
            with pytest.raises(psycopg.OperationalError):
                open_before.execute("SELECT 1")
            with pytest.raises(psycopg.OperationalError, match="Connection refused"):
                psycopg.connect(stoppable_postgres.uri("postgres", driver=""), connect_timeout=2)
    finally:
        with suppress(psycopg.Error):
            open_before.close()
    assert stoppable_postgres.running
    assert _answers(stoppable_postgres)


def test_postgres_down_for_a_moment_in_the_background(stoppable_postgres: Postgres) -> None:
    answers = []
    with stoppable_postgres.down_for(1.0, after=0.3) as outage:
        while not outage.restarted.wait(0.05):
            answers.append(_answers(stoppable_postgres))
    assert outage.restarted_at - outage.stopped_at >= 1.0
    assert answers[0] and not all(answers)
    assert _answers(stoppable_postgres)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_proxy() -> Iterator[TcpProxy]:
    """A proxy in front of an echo server on 127.0.0.1."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with tcp_proxy(server.server_address[1]) as proxy:
            yield proxy
        server.shutdown()


def _echo(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(payload)
        return connection.recv(100)


def test_the_proxy_forwards_cuts_and_restores(echo_proxy: TcpProxy) -> None:
    assert _echo(echo_proxy.port) == b"ping"
    assert (echo_proxy.bytes_up, echo_proxy.bytes_down, echo_proxy.connections) == (4, 4, 1)

    open_connection = socket.create_connection(("127.0.0.1", echo_proxy.port), timeout=5)
    open_connection.sendall(b"x")
    assert open_connection.recv(10) == b"x"
    echo_proxy.cut()
    with pytest.raises(ConnectionResetError):  # a reset, not a clean end
        open_connection.recv(10)
    open_connection.close()
    with pytest.raises(ConnectionRefusedError):
        _echo(echo_proxy.port)

    echo_proxy.restore()
    assert _echo(echo_proxy.port) == b"ping"

    with (
        echo_proxy.outage("blackhole"),
        socket.create_connection(("127.0.0.1", echo_proxy.port), timeout=1) as held,
    ):
        held.sendall(b"ping")
        with pytest.raises(TimeoutError):  # accepted, never answered
            held.recv(10)
    assert _echo(echo_proxy.port, b"pong") == b"pong"


def _s3_client(endpoint_url: str):  # a boto3 client (no static type)
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=S3_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_ENVIRONMENT["AWS_DEFAULT_REGION"],
        config=Config(retries={"max_attempts": 1}),
    )


def test_the_proxy_cuts_an_s3_upload_midway(s3: S3) -> None:
    s3.create_bucket("cut-midway")
    with tcp_proxy(int(s3.endpoint_url.rsplit(":", 1)[1])) as proxy:
        client = _s3_client(proxy.url)
        cut = proxy.cut_after(1_000_000)
        # The link reset mid-body (ConnectionClosedError) or refused on a retry (Endpoint...).
        with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
            client.put_object(Bucket="cut-midway", Key="big", Body=b"\0" * 3_000_000)
        assert cut.is_set()
        assert s3.keys("cut-midway") == []  # moto keeps nothing of a broken PUT

        proxy.restore()
        client.put_object(Bucket="cut-midway", Key="small", Body=b"0")
        assert s3.keys("cut-midway") == ["small"]


def test_a_production_server_reaches_s3_through_a_proxy(
    tmp_path: Path, postgres: Postgres, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = tmp_path / "artifact.txt"
    artifact.write_text("through the proxy")
    with (
        tcp_proxy(int(s3.endpoint_url.rsplit(":", 1)[1])) as proxy,
        production_server(
            tmp_path, postgres, s3, "viaproxy", proxied=True, s3_endpoint_for_server=proxy.url
        ) as server,
    ):
        for name, value in server.client_environment.items():
            monkeypatch.setenv(name, value)
        # Fail fast, but not on the first request after a failed upload: the server closes
        # that connection, and the client's next request on it needs one retry.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
        client = MlflowClient(server.url)
        run = client.create_run(client.create_experiment("via-proxy"))
        run_id = run.info.run_id
        client.log_artifact(run_id, str(artifact))
        assert proxy.bytes_up > artifact.stat().st_size
        assert any(key.endswith(f"{run_id}/artifacts/artifact.txt") for key in s3.keys("viaproxy"))

        with proxy.outage():
            with pytest.raises(MlflowException):
                client.log_artifact(run_id, str(artifact), "during-the-cut")
            assert client.get_run(run_id).info.run_id == run_id  # the database still answers
        client.log_artifact(run_id, str(artifact), "after-the-cut")
        assert [item.path for item in client.list_artifacts(run_id, "after-the-cut")] == [
            "after-the-cut/artifact.txt"
        ]
