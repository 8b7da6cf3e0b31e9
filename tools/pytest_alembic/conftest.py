"""pytest-alembic against this repository, set up the way its documentation says: an
`alembic_config` fixture naming alembic.ini and an `alembic_engine` fixture on a fresh, empty
database. svcmig's env runs every revision there (the connection pytest-alembic hands Alembic
comes first, `migrations_runtime/alembic/environment.py`), never in `$DATABASE_URL`.

Run it in a venv of its own (pytest-alembic 0.13 does not load under pytest 9, which the
project's tests use): see docs/testing.md, "pytest-alembic".

The server: `$PYTEST_ALEMBIC_SERVER_URL` (a superuser URL; each test gets a new database on it,
dropped afterwards), else a private cluster started from the machine's PostgreSQL binaries
(`pg_config --bindir`), so the service roles the migrations create never meet anyone else's.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from sqlalchemy import Engine, create_engine

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.private_postgres import private_postgres  # noqa: E402
from migrations_runtime.engine.database import sqlalchemy_url  # noqa: E402


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    given = os.environ.get("PYTEST_ALEMBIC_SERVER_URL")
    if given:
        yield given
        return
    with private_postgres(durable=False) as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def developers_database(server_url: str) -> Iterator[None]:
    """`$DATABASE_URL` names another database, as on a developer's machine: pytest-alembic's
    runs must leave it alone (the bug this guards against emptied one)."""
    name = f"pytest_alembic_keep_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE keep (note text); INSERT INTO keep VALUES ('mine')")
    saved = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    try:
        yield
        with psycopg.connect(url, autocommit=True) as conn:
            left = conn.execute("SELECT (SELECT count(*) FROM keep), "
                                "to_regnamespace('svcmig') IS NULL").fetchone()
        assert left == (1, True), f"pytest-alembic's runs touched $DATABASE_URL: {left}"
    finally:
        if saved is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = saved
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def alembic_config() -> dict[str, str]:
    return {"file": str(REPO / "alembic.ini")}


@pytest.fixture
def alembic_engine(server_url: str) -> Iterator[Engine]:
    name = f"pytest_alembic_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    engine = create_engine(sqlalchemy_url(urlunsplit(urlsplit(server_url)._replace(
        path=f"/{name}"))))
    try:
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
