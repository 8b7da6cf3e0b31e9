"""Step 5 of the flow, the database side (with apply): the framework schema, each service's schema
and roles, the ledger (`svcmig.schema_migrations`) and Alembic's version table
(`svcmig.alembic_version`).

The ledger row and the version row of a revision are written in the revision's own
transaction, so the database and the ledger can never disagree after a failure.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from .discover import FRAMEWORK_SCHEMA, Service
from .load import Revision
from .statements import quote_ident

LEDGER_TABLE = f"{FRAMEWORK_SCHEMA}.schema_migrations"
VERSION_TABLE = "alembic_version"
QUALIFIED_VERSION_TABLE = f"{FRAMEWORK_SCHEMA}.{VERSION_TABLE}"
STATES = ("applied", "dirty", "baselined")

FRAMEWORK_DDL = [
    f"CREATE SCHEMA IF NOT EXISTS {FRAMEWORK_SCHEMA}",
    f"REVOKE ALL ON SCHEMA {FRAMEWORK_SCHEMA} FROM PUBLIC",
    f"""CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (
        revision varchar(32) PRIMARY KEY,
        service text NOT NULL,
        file text NOT NULL,
        checksum text NOT NULL,
        phase text NOT NULL CHECK (phase IN ('expand', 'contract')),
        state text NOT NULL CHECK (state IN ('applied', 'dirty', 'baselined')),
        applied_at timestamptz NOT NULL DEFAULT now(),
        duration_ms integer,
        applied_by text NOT NULL
    )""",
    f"""CREATE TABLE IF NOT EXISTS {QUALIFIED_VERSION_TABLE} (
        version_num varchar(32) NOT NULL,
        CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
    )""",
]


class Executes(Protocol):
    """A psycopg connection or cursor: anything with `execute(sql, params)`."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...


def applied_by() -> str:
    return f"{socket.gethostname()}"


def service_bootstrap_sql(service: Service) -> list[str]:
    """Idempotent: schema owned by `<service>_owner` (NOLOGIN), DML for `<service>_app` (LOGIN)
    on that schema only, and the migrator made a member of the owner so it can `SET ROLE`."""
    owner, app, schema = (quote_ident(n) for n in (service.owner_role, service.app_role,
                                                   service.schema))

    def create_role(role: str, login: str) -> str:
        return (f"DO $$ BEGIN CREATE ROLE {role} {login}; "
                "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$")

    return [
        create_role(owner, "NOLOGIN"),
        create_role(app, "LOGIN"),
        f"GRANT {owner} TO CURRENT_USER",
        f"CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {owner}",
        f"ALTER SCHEMA {schema} OWNER TO {owner}",  # an adopted schema becomes the service's
        f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA {schema} TO {app}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} "
        f"GRANT USAGE, SELECT ON SEQUENCES TO {app}",
    ]


def bootstrap(conn: Executes, services: Iterable[Service]) -> list[str]:
    """Create what is missing: the framework schema and tables, and each service's schema and
    roles. Skips services that are already set up, so a no-op run stays cheap. Must run under
    the advisory lock; returns the names of the services it set up."""
    services = list(services)
    names = [s.name for s in services]
    present = conn.execute(
        """SELECT n.nspname FROM pg_namespace n
           JOIN pg_roles o ON o.oid = n.nspowner AND o.rolname = n.nspname || '_owner'
           WHERE n.nspname = ANY(%s)
             AND EXISTS (SELECT 1 FROM pg_roles a WHERE a.rolname = n.nspname || '_app')
             AND pg_has_role(current_user, o.oid, 'USAGE')""",
        (names,),
    ).fetchall()
    ready = {row[0] for row in present}
    framework_ready = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
        (LEDGER_TABLE, QUALIFIED_VERSION_TABLE),
    ).fetchone()[0]
    if not framework_ready:
        for sql in FRAMEWORK_DDL:
            conn.execute(sql)
    created = []
    for service in services:
        if service.name in ready:
            continue
        for sql in service_bootstrap_sql(service):
            conn.execute(sql)
        created.append(service.name)
    return created


@dataclass(frozen=True)
class LedgerRow:
    revision: str
    service: str
    file: str
    checksum: str
    phase: str
    state: str
    applied_at: datetime
    duration_ms: int | None
    applied_by: str


@dataclass(frozen=True)
class DatabaseState:
    """What the database says was applied: the ledger, and Alembic's version rows."""

    ledger: dict[str, LedgerRow]
    alembic_heads: frozenset[str]

    @classmethod
    def empty(cls) -> DatabaseState:
        return cls({}, frozenset())


def read_state(conn: Executes) -> DatabaseState:
    """The ledger and version rows; empty when svcmig never ran on this database."""
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
        (LEDGER_TABLE, QUALIFIED_VERSION_TABLE),
    ).fetchone()
    ledger: dict[str, LedgerRow] = {}
    heads: frozenset[str] = frozenset()
    if exists[0]:
        rows = conn.execute(
            f"SELECT revision, service, file, checksum, phase, state, applied_at, duration_ms, "
            f"applied_by FROM {LEDGER_TABLE}"
        ).fetchall()
        ledger = {row[0]: LedgerRow(*row) for row in rows}
    if exists[1]:
        heads = frozenset(r[0] for r in conn.execute(
            f"SELECT version_num FROM {QUALIFIED_VERSION_TABLE}").fetchall())
    return DatabaseState(ledger, heads)


def record(conn: Executes, revision: Revision, state: str, duration_ms: int | None) -> None:
    """Insert or update the ledger row of `revision` (in the caller's transaction)."""
    conn.execute(
        f"""INSERT INTO {LEDGER_TABLE}
            (revision, service, file, checksum, phase, state, duration_ms, applied_by)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (revision) DO UPDATE SET checksum = EXCLUDED.checksum,
              state = EXCLUDED.state, duration_ms = EXCLUDED.duration_ms,
              applied_at = now(), applied_by = EXCLUDED.applied_by, file = EXCLUDED.file""",
        (revision.id, revision.service, revision.file, revision.checksum, revision.phase, state,
         duration_ms, applied_by()),
    )


def forget(conn: Executes, revision_id: str) -> None:
    conn.execute(f"DELETE FROM {LEDGER_TABLE} WHERE revision = %s", (revision_id,))


def move_version(conn: Executes, old: str | None, new: str | None) -> None:
    """Keep Alembic's version table in step: the service's head row moves from `old` to `new`
    (one row per service, as stock `alembic upgrade` keeps it), so `alembic current` and
    `alembic downgrade users@-1` work on a database svcmig migrated."""
    if old is not None:
        conn.execute(f"DELETE FROM {QUALIFIED_VERSION_TABLE} WHERE version_num = %s", (old,))
    if new is not None:
        conn.execute(f"INSERT INTO {QUALIFIED_VERSION_TABLE} (version_num) VALUES (%s)", (new,))


def adopt_relations(conn: Executes, service: Service) -> list[str]:
    """Hand the service's existing tables, views and sequences to its owner role, so revisions
    (which run as that role) can alter them. Used when baselining an existing database."""
    rows = conn.execute(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
             AND pg_get_userbyid(c.relowner) <> %s AND NOT EXISTS (
                 SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                 AND d.objid = c.oid AND d.deptype IN ('a', 'i'))""",
        (service.schema, service.owner_role),
    ).fetchall()
    for (name,) in rows:
        conn.execute(f"ALTER TABLE {quote_ident(service.schema)}.{quote_ident(name)} "
                     f"OWNER TO {quote_ident(service.owner_role)}")
    return [name for (name,) in rows]
