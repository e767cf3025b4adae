"""A real redis-server on 127.0.0.1 (a free port, no persistence), started and stopped by a test.

Skipped without Debian's ``redis-server`` or the ``redis`` client, failed instead in CI
(``requirements.require``), where `.ci/run` installs both.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import background_process, free_port
from tests.support.requirements import require


@dataclass(frozen=True)
class RedisServer:
    port: int

    def url(self, database: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{database}"

    def client(self, database: int = 0):  # -> redis.Redis (imported only when available)
        import redis

        return redis.Redis.from_url(self.url(database), decode_responses=True)


def require_redis() -> str:
    """The redis-server executable (skip, or fail in CI, without it or the client)."""
    executable = shutil.which("redis-server")
    require(executable is not None, "redis-server", "apt-get install redis-server")
    client = importlib.util.find_spec("redis") is not None
    require(client, "the redis client", 'pip install -e ".[online]"')
    return executable


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """Start redis-server on a free loopback port; stop it (and its session) on exit."""
    executable = require_redis()
    port = free_port()
    command = [
        executable,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
    ]
    with background_process(command, directory / "redis.log") as process:
        server = RedisServer(port)
        process.wait_until(lambda: _answers(server), 30, "redis-server")
        yield server


def _answers(server: RedisServer) -> bool:
    import redis

    try:
        return bool(server.client().ping())
    except redis.ConnectionError:
        return False
