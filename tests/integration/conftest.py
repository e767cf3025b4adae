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
