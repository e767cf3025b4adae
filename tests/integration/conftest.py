"""Fixtures of the integration layer: the services it needs, started once per session.

A component that is not installed skips its tests on a developer's machine (with the command
that installs it) and fails them in CI (``CI`` set), where `.ci/run` installs everything.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.support.processes import mlflow_environment
from tests.support.requirements import require, require_modules
from tests.support.services import S3, Postgres, moto_s3, postgres_bindir, postgres_cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The session's PostgreSQL, shared by every test that only needs one: never stop it (use
    ``stoppable_postgres``)."""
    require(postgres_bindir() is not None, "PostgreSQL", "apt-get install postgresql")
    require_modules("psycopg")
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def stoppable_postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster of this test's own, to stop and start (`Postgres.stop`, `start`,
    `outage`, `down_for`).

    Not the session's: an outage ends every connection to the cluster, including those that
    other tests' servers keep in their pools, and a start that failed would fail every later
    test with a confusing error. A cluster of its own costs about a second (initdb, start),
    and `Postgres.outage` and `down_for` still leave it running whatever the test does.
    """
    require(postgres_bindir() is not None, "PostgreSQL", "apt-get install postgresql")
    require_modules("psycopg")
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    require_modules("moto", "boto3")
    with moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def uv_available() -> None:
    # Looked up where `mlflow run` will look: this interpreter's bin folder first.
    found = shutil.which("uv", path=mlflow_environment(None)["PATH"])
    require(found is not None, "uv", 'pip install -e ".[dev,integration]"')
