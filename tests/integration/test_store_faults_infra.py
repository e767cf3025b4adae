"""The pieces that tests of store failures behind a tracking server are built from, checked on
their own: a PostgreSQL cluster that stops and starts again, a TCP proxy that cuts a link (the
server's to S3, say) and restores it, and a production server that reaches S3 through one.
"""

from __future__ import annotations

from contextlib import suppress

import psycopg
import pytest

from tests.integration.services import Postgres

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
