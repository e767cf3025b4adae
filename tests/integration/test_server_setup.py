"""deploy/production-server.sh enforces what it promises: a user and password on every API call,
only the listed Host names, and no settings file left behind once it stops.

(The pipeline itself runs against this server, and against deploy/dev-server.sh, in
test_backends.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.processes import basic_auth, http_status
from tests.support.services import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    S3,
    USER,
    USER_PASSWORD,
    Postgres,
    production_server,
)

pytestmark = pytest.mark.slow

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def test_production_server_requires_a_user_and_a_known_host(
    tmp_path: Path, postgres: Postgres, s3: S3
) -> None:
    with production_server(tmp_path, postgres, s3, "security", proxied=True) as server:
        config_dirs = [path for path in tmp_path.iterdir() if path.is_dir()]
        assert [path.name for path in config_dirs[0].iterdir()] == ["basic_auth.ini"]
        assert oct(config_dirs[0].stat().st_mode & 0o777) == "0o700"

        assert http_status(f"{server.url}/health") == 200  # for load balancers: no sign-in
        assert http_status(f"{server.url}{SEARCH}") == 401
        assert http_status(f"{server.url}{SEARCH}", basic_auth(USER, "wrong-password")) == 401
        assert http_status(f"{server.url}{SEARCH}", basic_auth(USER, USER_PASSWORD)) == 200
        assert http_status(f"{server.url}{SEARCH}", basic_auth(ADMIN_USER, ADMIN_PASSWORD)) == 200
        # DNS rebinding: a page on another name that resolves to this server is refused.
        foreign = {"Host": "attacker.example", **basic_auth(USER, USER_PASSWORD)}
        assert http_status(f"{server.url}{SEARCH}", foreign) in (400, 403)

    assert not any(path.is_dir() for path in tmp_path.iterdir()), "auth settings left behind"
