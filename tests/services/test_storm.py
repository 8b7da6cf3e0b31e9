"""Connection storm: 100+ function instances (separate processes, one pool each) at once.
Through PgBouncer in transaction mode (the local stand-in for RDS Proxy) every request succeeds
and the server never sees more app backends than the pool size; straight to a server with
max_connections = 20 the same burst fails."""

from __future__ import annotations

import os

import pytest

from migrations_runtime.engine.apply import migrate
from tests.conftest import REPO
from tests.pgbouncer import pgbouncer, pgbouncer_binary
from tests.services.storm import APP_ROLES, run_storm
from tests.services.throwaway import throwaway_postgres

WORKERS = int(os.environ.get("SVCMIG_STORM_WORKERS", "100"))
POOL_SIZE = 4


@pytest.fixture
def needs_pgbouncer() -> None:
    if pgbouncer_binary():
        return
    why = "pgbouncer binary not found: apt-get install pgbouncer (Debian package)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI must install it")
    print(f"skipping: {why}")
    pytest.skip(why)


def test_storm_through_pgbouncer_has_no_errors(database_url: str, server_url: str,
                                               needs_pgbouncer: None) -> None:
    migrate(database_url, REPO, "all", log=lambda _: None)
    database = str(__import__("psycopg").conninfo.conninfo_to_dict(database_url)["dbname"])
    with pgbouncer(server_url, database, POOL_SIZE, users=APP_ROLES) as bouncer_url:
        result = run_storm(bouncer_url, server_url, WORKERS, pooler_url=bouncer_url)
    print(f"pgbouncer storm: {result.workers} instances, {len(result.statuses)} requests, "
          f"{result.errors} errors, {result.seconds:.2f} s (+{result.spawn_seconds:.2f} s to "
          f"start them), peak backends {result.max_backends}, peak pooler server connections "
          f"{result.max_pooler_servers}")
    assert result.errors == 0, result.messages[:5]
    assert len(result.statuses) == 4 * WORKERS
    assert 0 < result.max_pooler_servers <= POOL_SIZE
    # PgBouncer closes an idle connection of one app role to open one for the other (one pool
    # per role, max_db_connections for both); the closed backend is still listed in
    # pg_stat_activity for the moment it takes to exit, so the server may briefly see more.
    assert 0 < result.max_backends <= 2 * POOL_SIZE


def test_same_storm_straight_to_postgres_fails() -> None:
    """The limit is a real server setting: a throwaway PostgreSQL 18 with max_connections=20
    (3 reserved for superusers), not a role CONNECTION LIMIT on the shared test server."""
    with throwaway_postgres(settings={"max_connections": "20"}) as url:
        migrate(url, REPO, "all", log=lambda _: None)
        result = run_storm(url, url, WORKERS, pool_timeout=3)
    print(f"direct storm: {result.workers} instances, {len(result.statuses)} requests, "
          f"{result.errors} errors, {result.seconds:.2f} s (+{result.spawn_seconds:.2f} s to "
          f"start them), peak backends {result.max_backends}")
    assert result.errors >= WORKERS // 2
    assert all(status == 503 for status in result.statuses if status >= 400)
    assert any("too many clients" in message or "remaining connection slots" in message
               for message in result.messages), result.messages[:5]
    assert result.max_backends <= 20
