"""The whole pipeline (`mlflow run`, `main`, small data) against every tracking backend the
README names, each ending with `models:/fraud-detector@champion` loaded and scoring. (The
default store, no tracking URI, is tests/steps/test_pipeline.py's: its run is the one those tests
read.)

- a file store (`MLFLOW_ALLOW_FILE_STORE=true`);
- deploy/dev-server.sh: `mlflow server` over HTTP, SQLite, artifacts in a local folder;
- deploy/production-server.sh: PostgreSQL, S3 (the moto server), basic auth, allowed hosts;
  artifacts proxied through the server, or written by the client straight to S3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.support import SMALL_RUN
from tests.support.processes import (
    EXPERIMENT,
    assert_champion_scores,
    assert_pipeline_finished,
    assert_succeeded,
    copy_project,
    mlflow_environment,
    mlflow_run,
)
from tests.support.services import S3_VARIABLES, dev_server, production_server

pytestmark = [pytest.mark.slow, pytest.mark.minutes]


@dataclass
class Backend:
    """How the launcher is started against one backend, and how to check where data went."""

    project: Path
    launcher_uri: str | None  # MLFLOW_TRACKING_URI of the launcher (None: MLflow's default)
    client_uri: str  # the same store, as this test reads it
    check_storage: Callable[[MlflowClient, str], None]
    launcher_args: tuple[str, ...] = ("--experiment-name", EXPERIMENT)
    environment: dict[str, str] = field(default_factory=dict)


def _artifact_files(client: MlflowClient, experiment_id: str) -> Path:
    return Path(client.get_experiment(experiment_id).artifact_location.removeprefix("file://"))


def _file_store(tmp_path: Path, _: pytest.FixtureRequest, __: ExitStack) -> Backend:
    project = copy_project(tmp_path / "project")
    store = tmp_path / "mlruns"
    uri = store.as_uri()

    def check(client: MlflowClient, experiment_id: str) -> None:
        assert (store / experiment_id / "meta.yaml").is_file()
        assert any(_artifact_files(client, experiment_id).rglob("MLmodel"))
        assert not (project / "mlflow.db").exists()

    return Backend(project, uri, uri, check, environment={"MLFLOW_ALLOW_FILE_STORE": "true"})


def _dev_server(tmp_path: Path, _: pytest.FixtureRequest, stack: ExitStack) -> Backend:
    project = copy_project(tmp_path / "project")
    workdir = tmp_path / "server"
    workdir.mkdir()
    server = stack.enter_context(dev_server(workdir))

    def check(client: MlflowClient, experiment_id: str) -> None:
        location = client.get_experiment(experiment_id).artifact_location
        assert location.startswith("mlflow-artifacts:"), location
        assert (workdir / "mlflow.db").is_file()
        assert any((workdir / "mlartifacts").rglob("MLmodel"))

    return Backend(project, server.url, server.url, check)


def _production(proxied: bool) -> Callable[[Path, pytest.FixtureRequest, ExitStack], Backend]:
    def start(tmp_path: Path, request: pytest.FixtureRequest, stack: ExitStack) -> Backend:
        project = copy_project(tmp_path / "project")
        postgres, s3 = request.getfixturevalue("postgres"), request.getfixturevalue("s3")
        name = "proxied" if proxied else "direct"
        workdir = tmp_path / "server"
        workdir.mkdir()
        server = stack.enter_context(production_server(workdir, postgres, s3, name, proxied))

        def check(client: MlflowClient, experiment_id: str) -> None:
            location = client.get_experiment(experiment_id).artifact_location
            expected = "mlflow-artifacts:" if proxied else f"s3://{name}/artifacts/"
            assert location.startswith(expected), location
            assert any(key.endswith("/MLmodel") for key in s3.keys(name, "artifacts/"))

        return Backend(
            project, server.url, server.url, check, environment=server.client_environment
        )

    return start


BACKENDS = {
    "file-store": _file_store,
    "dev-server": _dev_server,
    "production-proxied": _production(proxied=True),
    "production-direct": _production(proxied=False),
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with ExitStack() as stack:
        yield BACKENDS[request.param](tmp_path, request, stack)


def test_pipeline_ends_with_a_champion_that_scores(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only what the backend needs: in proxied mode the client has no S3 access at all.
    for name in S3_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in backend.environment.items():
        monkeypatch.setenv(name, value)
    env = mlflow_environment(backend.launcher_uri)

    result = mlflow_run(".", env, *backend.launcher_args, cwd=backend.project, **SMALL_RUN)
    assert_succeeded(result)

    client = MlflowClient(tracking_uri=backend.client_uri)
    steps = assert_pipeline_finished(client)
    backend.check_storage(client, steps["main"].info.experiment_id)
    assert_champion_scores(backend.client_uri)
