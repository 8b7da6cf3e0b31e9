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

from psycopg import sql

from .discover import FRAMEWORK_SCHEMA, Service
from .load import Revision
from .statements import quote_ident, sql_literal

LEDGER_TABLE = f"{FRAMEWORK_SCHEMA}.schema_migrations"
VERSION_TABLE = "alembic_version"
QUALIFIED_VERSION_TABLE = f"{FRAMEWORK_SCHEMA}.{VERSION_TABLE}"
STATES = ("applied", "dirty", "baselined")
POLICY = "own_service_rows"

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
    # Each revision writes its own ledger and version rows, in its own transaction, from a session
    # logged in as its service's owner: row-level security limits an owner to its service's rows
    # (revision ids are `<service>_<YYYYMMDDhhmm>`; USING checks new rows too). The migrator owns
    # both tables and so bypasses it.
    f"ALTER TABLE {LEDGER_TABLE} ENABLE ROW LEVEL SECURITY",
    f"ALTER TABLE {QUALIFIED_VERSION_TABLE} ENABLE ROW LEVEL SECURITY",
    f"""DO $$ BEGIN
        CREATE POLICY {POLICY} ON {LEDGER_TABLE}
            USING (current_user = service || '_owner');
        CREATE POLICY {POLICY} ON {QUALIFIED_VERSION_TABLE}
            USING (current_user = substring(version_num FROM '^(.*)_[0-9]{{12}}$') || '_owner');
    EXCEPTION WHEN duplicate_object THEN NULL; END $$""",
]
FRAMEWORK_READY_SQL = f"""
    SELECT count(*) = 2 FROM pg_class c
    WHERE c.oid IN (to_regclass('{LEDGER_TABLE}'), to_regclass('{QUALIFIED_VERSION_TABLE}'))
      AND c.relrowsecurity
      AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = '{POLICY}')"""


class Executes(Protocol):
    """A psycopg connection or cursor: anything with `execute(sql, params)`."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...


def applied_by() -> str:
    return f"{socket.gethostname()}"


def service_bootstrap_sql(service: Service) -> list[str]:
    """Idempotent: schema owned by `<service>_owner`, DML for `<service>_app` (LOGIN) on that
    schema only, the owner's own rows of the ledger and version table (row-level security), and
    the migrator made a member of the owner (to hand it adopted objects). The owner is NOLOGIN
    except while a run has revisions of its service to apply (`owner_login`)."""
    owner, app, schema = (quote_ident(n) for n in (service.owner_role, service.app_role,
                                                   service.schema))

    def create_role(role: str, login: str) -> str:
        return (f"DO $$ BEGIN CREATE ROLE {role} {login}; "
                "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$")

    return [
        create_role(owner, "NOLOGIN"),
        create_role(app, "LOGIN"),
        f"GRANT {owner} TO CURRENT_USER",
        f"DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), "
        f"{sql_literal(service.owner_role)}); END $$",
        f"GRANT USAGE ON SCHEMA {FRAMEWORK_SCHEMA} TO {owner}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {LEDGER_TABLE}, {QUALIFIED_VERSION_TABLE} "
        f"TO {owner}",
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
    if not conn.execute(FRAMEWORK_READY_SQL).fetchone()[0]:
        for sql in FRAMEWORK_DDL:
            conn.execute(sql)
    present = conn.execute(
        f"""SELECT n.nspname FROM pg_namespace n
           JOIN pg_roles o ON o.oid = n.nspowner AND o.rolname = n.nspname || '_owner'
           WHERE n.nspname = ANY(%s)
             AND EXISTS (SELECT 1 FROM pg_roles a WHERE a.rolname = n.nspname || '_app')
             AND pg_has_role(current_user, o.oid, 'USAGE')
             AND has_table_privilege(o.oid, '{LEDGER_TABLE}', 'INSERT')
             AND has_table_privilege(o.oid, '{QUALIFIED_VERSION_TABLE}', 'INSERT')""",
        (names,),
    ).fetchall()
    ready = {row[0] for row in present}
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
class InvalidIndex:
    """An index Postgres marks INVALID (`pg_index.indisvalid` false): a concurrent build that
    failed or is still running. It is maintained on every write but never used for reads."""

    schema: str
    name: str
    table: str


@dataclass(frozen=True)
class DatabaseState:
    """What the database says was applied: the ledger, Alembic's version rows, and the INVALID
    indexes in the services' schemas."""

    ledger: dict[str, LedgerRow]
    alembic_heads: frozenset[str]
    invalid_indexes: tuple[InvalidIndex, ...] = ()

    @classmethod
    def empty(cls) -> DatabaseState:
        return cls({}, frozenset())


INVALID_INDEXES_SQL = """
    SELECT n.nspname, i.relname, t.relname FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_class t ON t.oid = x.indrelid
    JOIN pg_namespace n ON n.oid = i.relnamespace
    WHERE NOT x.indisvalid AND n.nspname = ANY(%s)
    ORDER BY 1, 2"""


def invalid_indexes(conn: Executes, schemas: Iterable[str]) -> tuple[InvalidIndex, ...]:
    return tuple(InvalidIndex(*row) for row in
                 conn.execute(INVALID_INDEXES_SQL, (list(schemas),)).fetchall())


def read_state(conn: Executes, schemas: Iterable[str] = ()) -> DatabaseState:
    """The ledger and version rows (empty when svcmig never ran on this database), and the
    INVALID indexes in `schemas`."""
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
    schemas = list(schemas)
    return DatabaseState(ledger, heads, invalid_indexes(conn, schemas) if schemas else ())


def record_sql(revision: Revision, state: str, duration_ms: int | None) -> sql.Composed:
    """Insert or update the ledger row of `revision`, as one statement with its values inlined
    (so it can share a round trip with other statements)."""
    values = sql.SQL(", ").join(sql.Literal(v) for v in (
        revision.id, revision.service, revision.file, revision.checksum, revision.phase, state,
        duration_ms, applied_by()))
    return sql.SQL(
        f"""INSERT INTO {LEDGER_TABLE}
            (revision, service, file, checksum, phase, state, duration_ms, applied_by)
            VALUES ({{}})
            ON CONFLICT (revision) DO UPDATE SET checksum = EXCLUDED.checksum,
              state = EXCLUDED.state, duration_ms = EXCLUDED.duration_ms,
              applied_at = now(), applied_by = EXCLUDED.applied_by, file = EXCLUDED.file""",
    ).format(values)


def forget_sql(revision_id: str) -> sql.Composed:
    return sql.SQL(f"DELETE FROM {LEDGER_TABLE} WHERE revision = {{}}").format(
        sql.Literal(revision_id))


def move_version_sql(old: str | None, new: str | None) -> list[sql.Composed]:
    """Keep Alembic's version table in step: the service's head row moves from `old` to `new`
    (one row per service, as stock `alembic upgrade` keeps it), so `alembic current` and
    `alembic downgrade users@-1` work on a database svcmig migrated."""
    found = []
    if old is not None:
        found.append(sql.SQL(f"DELETE FROM {QUALIFIED_VERSION_TABLE} WHERE version_num = {{}}")
                     .format(sql.Literal(old)))
    if new is not None:
        found.append(sql.SQL(f"INSERT INTO {QUALIFIED_VERSION_TABLE} (version_num) VALUES ({{}})")
                     .format(sql.Literal(new)))
    return found


def record(conn: Executes, revision: Revision, state: str, duration_ms: int | None) -> None:
    """Insert or update the ledger row of `revision` (in the caller's transaction)."""
    conn.execute(record_sql(revision, state, duration_ms))


def forget(conn: Executes, revision_id: str) -> None:
    conn.execute(forget_sql(revision_id))


def move_version(conn: Executes, old: str | None, new: str | None) -> None:
    for statement in move_version_sql(old, new):
        conn.execute(statement)


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
