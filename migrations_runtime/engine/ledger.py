"""Step 5 of the flow, the database side (with apply): the framework schema, each service's schema
and roles, the ledger (`svcmig.schema_migrations`) and Alembic's version table
(`svcmig.alembic_version`).

The ledger is the one record of what was applied: a revision's ledger row is written in the
revision's own transaction. Alembic's version table is a view over it (each service's newest
applied revision), so the two can never disagree, whichever tool wrote last.
"""

from __future__ import annotations

import functools
import hashlib
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from .discover import FRAMEWORK_SCHEMA, Service
from .errors import SvcmigError
from .load import Revision
from .statements import fail_unless, quote_ident, sql_literal
from .validate import ChainSummary, Graph

LEDGER_TABLE = f"{FRAMEWORK_SCHEMA}.schema_migrations"
VERSION_TABLE = "alembic_version"
QUALIFIED_VERSION_TABLE = f"{FRAMEWORK_SCHEMA}.{VERSION_TABLE}"
# Where stock Alembic keeps its version rows when svcmig's plugin is not in play.
STOCK_VERSION_TABLE = "public.alembic_version"
STATES = ("applied", "dirty", "baselined")
POLICY = "revision_token"
# Where svcmig before 2026-12 kept the digests, as rows its policies looked up (dropped).
OLD_TOKENS_TABLE = f"{FRAMEWORK_SCHEMA}.revision_tokens"
# The setting through which a revision's transaction presents its token, just before its row.
TOKEN_SETTING = "svcmig.revision_token"
DIGEST_BYTES = 32  # SHA-256
INV_WRITE = 0x20000  # lo_open's write mode (libpq-fs.h)
BACKFILLS_TABLE = f"{FRAMEWORK_SCHEMA}.backfills"
# What a backfill's batch may write (the rest of its row is the migrator's).
BACKFILL_PROGRESS_COLUMNS = ("next_key", "batch_size", "batches", "rows_done", "updated_at")


def _token_fields(direction: str, *columns: str) -> list[str]:
    """What a token's digest covers, in order: the token, the backend pid of the session it is
    for, the direction, and the ledger row's revision (going up also its service and planned
    checksum). `token_digest` computes it in Python; the policies in SQL (`_presented_sql`)."""
    return [f"pg_catalog.current_setting('{TOKEN_SETTING}', true)",
            "pg_catalog.pg_backend_pid()::pg_catalog.text", f"'{direction}'", *columns]


def _presented_sql(direction: str, *columns: str) -> str:
    """SQL: the digest of the token the transaction presents, for the row's `columns` (NULL
    when it presents none: a policy then refuses)."""
    text = " OPERATOR(pg_catalog.||) '/' OPERATOR(pg_catalog.||) ".join(
        _token_fields(direction, *columns))
    return f"pg_catalog.sha256(pg_catalog.convert_to({text}, 'UTF8'))"


def _found(digest: str) -> str:
    """SQL: `digest` is in the current user's token object, at a digest boundary (position is
    1-based, 0 when absent)."""
    return (f"pg_catalog.position(pg_catalog.lo_get(pg_catalog.to_regrole(current_user::"
            f"pg_catalog.text)::pg_catalog.oid), {digest}) OPERATOR(pg_catalog.%) "
            f"{DIGEST_BYTES} OPERATOR(pg_catalog.=) 1")


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
    # A transactional revision writes its own ledger row, in its own transaction, from a
    # session logged in as its service's owner (and deletes it when it goes down). Row-level
    # security holds an owner to exactly that: it sees its own service's rows, and may insert
    # (as `applied`, with the checksum the runner planned) or delete only the row of a revision
    # whose token the transaction presents, in the direction the token was issued for, from the
    # session it was issued to. The migrator issues a random token per revision and direction,
    # bound to the backend pid of the service's session, and keeps only SHA-256 digests of
    # token, pid, direction and row (`token_digest`), in the service's token object: a large
    # object whose oid is the owner role's (`_token_object_sql`), owned by the migrator, which
    # the owner may read (a digest gives nothing away) and not write. The policies look for
    # the digest of the presented token and the row at a digest boundary of the current
    # user's object: function calls only (the role's oid from the catalog cache), so nothing
    # is planned per row (a subquery over a table of digests was planned with every ledger
    # row: a sixth of a revision's cost). The runner presents
    # the token (TOKEN_SETTING, a transaction-local setting) in the statement just before the
    # row, after every statement of the revision. A revision's own SQL cannot know another
    # revision's token, and the one it could read from its own query text only writes or
    # deletes its own row, which the runner's statement then finds done and fails (rolling
    # everything back); another session that reads the token (a login as the same owner sees
    # the batch in pg_stat_activity) cannot present it; a row is written once (the primary
    # key) and deleted once, and every run clears the digests. Never an update, never a dirty
    # row (the migrator writes those of non-transactional revisions). So neither a revision
    # (whatever settings or dynamic SQL it uses, whatever it defers to COMMIT) nor another
    # service's function it happens to call can forge or drop a row. The migrator owns the
    # ledger and the objects, and so bypasses the policies. With `lo_compat_privileges` on,
    # any role could write any large object: revision sessions refuse to run then.
    f"ALTER TABLE {LEDGER_TABLE} ENABLE ROW LEVEL SECURITY",
    *(f"DROP POLICY IF EXISTS {old} ON {LEDGER_TABLE}"  # earlier svcmig versions, and ours
      for old in ("own_service_rows", "service_rows_read", "service_rows_insert",
                  "service_rows_delete", "revision_rows_read", "revision_rows_insert",
                  "revision_rows_delete", "running_revision_read", "running_revision_insert",
                  "running_revision_delete", f"{POLICY}_read", f"{POLICY}_insert",
                  f"{POLICY}_delete", f"{POLICY}_up", f"{POLICY}_down")),
    f"DROP FUNCTION IF EXISTS {FRAMEWORK_SCHEMA}.begin_revision(text)",  # earlier versions
    f"DROP TABLE IF EXISTS {FRAMEWORK_SCHEMA}.running_revisions",
    f"DROP TABLE IF EXISTS {OLD_TOKENS_TABLE}",
    f"""DO $$ BEGIN
        CREATE POLICY {POLICY}_read ON {LEDGER_TABLE} FOR SELECT
            USING (current_user = service || '_owner');
        CREATE POLICY {POLICY}_up ON {LEDGER_TABLE} FOR INSERT
            WITH CHECK (current_user = service || '_owner' AND session_user = current_user
                        AND state = 'applied'
                        AND {_found(_presented_sql("up", "revision", "service", "checksum"))});
        CREATE POLICY {POLICY}_down ON {LEDGER_TABLE} FOR DELETE
            USING (current_user = service || '_owner' AND session_user = current_user
                   AND state <> 'dirty' AND {_found(_presented_sql("down", "revision"))});
    EXCEPTION WHEN duplicate_object THEN NULL; END $$""",
    # Alembic's version table, derived: a service's head is its newest applied (or baselined)
    # revision; ids `<service>_<YYYYMMDDhhmm>` sort by time within a service. An older svcmig
    # kept it as a table next to the ledger; the ledger holds the same facts, so it is replaced.
    f"""DO $$ BEGIN
        IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('{QUALIFIED_VERSION_TABLE}'))
           = 'r' THEN DROP TABLE {QUALIFIED_VERSION_TABLE}; END IF; END $$""",
    f"""CREATE OR REPLACE VIEW {QUALIFIED_VERSION_TABLE} AS
        SELECT max(revision)::varchar(32) AS version_num FROM {LEDGER_TABLE}
        WHERE state IN ('applied', 'baselined') GROUP BY service""",
    # Backfills' progress (`backfill_runner`): one row per backfill started on this database.
    # A batch's transaction, in a session logged in as the service's owner, moves its cursor
    # with the batch's rows, so a batch is committed with its progress or not at all. The owner
    # sees its own service's backfills and may move only the progress columns (column
    # privileges) of the running one its own session runs (`runner_pid`); the state, range,
    # file and runner are the migrator's to write.
    f"""CREATE TABLE IF NOT EXISTS {BACKFILLS_TABLE} (
        name text PRIMARY KEY,
        service text NOT NULL,
        file text NOT NULL,
        checksum text NOT NULL,
        state text NOT NULL CHECK (state IN ('running', 'paused', 'failed', 'finished')),
        key_table text NOT NULL,
        key_column text NOT NULL,
        key_min bigint,
        key_end bigint,
        next_key bigint,
        batch_size bigint NOT NULL CHECK (batch_size > 0),
        batches bigint NOT NULL DEFAULT 0,
        rows_done bigint NOT NULL DEFAULT 0,
        error text,
        note text,
        started_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
    )""",
    # the owner session running the backfill (set by the migrator): another backfill of the
    # same service, in its own session, cannot move this one's progress
    f"ALTER TABLE {BACKFILLS_TABLE} ADD COLUMN IF NOT EXISTS runner_pid integer",
    f"REVOKE ALL ON {BACKFILLS_TABLE} FROM PUBLIC",
    f"ALTER TABLE {BACKFILLS_TABLE} ENABLE ROW LEVEL SECURITY",
    f"DROP POLICY IF EXISTS backfill_progress ON {BACKFILLS_TABLE}",  # any running row's
    f"""DO $$ BEGIN
        CREATE POLICY backfill_read ON {BACKFILLS_TABLE} FOR SELECT
            USING (current_user = service || '_owner');
        CREATE POLICY backfill_progress_of_runner ON {BACKFILLS_TABLE} FOR UPDATE
            USING (current_user = service || '_owner' AND state = 'running'
                   AND runner_pid = pg_backend_pid())
            WITH CHECK (current_user = service || '_owner' AND state = 'running'
                        AND runner_pid = pg_backend_pid());
    EXCEPTION WHEN duplicate_object THEN NULL; END $$""",
]
FRAMEWORK_READY_SQL = f"""
    SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_policy p ON p.polrelid = c.oid
                   WHERE c.oid = to_regclass('{LEDGER_TABLE}') AND c.relrowsecurity
                     AND p.polname = '{POLICY}_read')
       AND EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass('{QUALIFIED_VERSION_TABLE}')
                     AND relkind = 'v')
       AND EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = to_regclass('{LEDGER_TABLE}')
                     AND polname = '{POLICY}_up')
       AND to_regclass('{OLD_TOKENS_TABLE}') IS NULL
       AND EXISTS (SELECT FROM pg_policy WHERE polrelid = to_regclass('{BACKFILLS_TABLE}')
                   AND polname = 'backfill_progress_of_runner')"""


class Executes(Protocol):
    """A psycopg connection or cursor: anything with `execute(sql, params)`."""

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...


@functools.cache
def applied_by() -> str:
    return socket.gethostname()


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
        f"REVOKE ALL ON {LEDGER_TABLE} FROM {owner}",
        f"GRANT SELECT, INSERT, DELETE ON {LEDGER_TABLE} TO {owner}",
        _token_object_sql(service),
        f"GRANT SELECT, UPDATE ({', '.join(BACKFILL_PROGRESS_COLUMNS)}) ON {BACKFILLS_TABLE} "
        f"TO {owner}",
        f"CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {owner}",
        f"ALTER SCHEMA {schema} OWNER TO {owner}",  # an adopted schema becomes the service's
        f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA {schema} TO {app}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} "
        f"GRANT USAGE, SELECT ON SEQUENCES TO {app}",
        # Functions are executable by PUBLIC unless said otherwise: a service that grants
        # another USAGE on its schema would hand over every function in it, SECURITY DEFINER
        # ones included. Its own app role may call them.
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} "
        f"GRANT EXECUTE ON FUNCTIONS TO {app}",
    ]


# A token object says whose it is in its comment, so the migrator never takes another large
# object of its own for one.
TOKEN_OBJECT_COMMENT = "svcmig: revision token digests of "
# SQL over pg_largeobject_metadata `m`: a token object the migrator made for the role whose oid
# it has, owns, and granted any other role at most SELECT on.
_MIGRATORS_OBJECT = (
    "pg_catalog.pg_get_userbyid(m.lomowner) = current_user "
    "AND pg_catalog.obj_description(m.oid, 'pg_largeobject') "
    f"= '{TOKEN_OBJECT_COMMENT}' || pg_catalog.pg_get_userbyid(m.oid) AND NOT EXISTS ("
    "SELECT FROM pg_catalog.aclexplode(m.lomacl) a WHERE a.grantee <> m.lomowner "
    "AND a.privilege_type <> 'SELECT')")
# The policies svcmig makes on the ledger (FRAMEWORK_DDL): any other would widen what an owner
# may write, so a run refuses to start while one exists.
OWN_POLICIES = (f"{POLICY}_read", f"{POLICY}_up", f"{POLICY}_down")


def _token_object_sql(service: Service) -> str:
    """The service's token object: a large object of the migrator's whose oid is the owner
    role's (so the policies find it from `current_user` alone), commented with whose it is,
    which the owner may only read (whatever default privileges on large objects granted). A
    token object that is not that any more (given to another role, or another role may write
    it) is dropped and made again; any other large object with that oid stops the run, named,
    untouched."""
    owner = sql_literal(service.owner_role)
    return f"""DO $svcmig$ DECLARE o oid := {_token_object(service.name)}; r record; BEGIN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_largeobject_metadata m
                       WHERE m.oid = o AND {_MIGRATORS_OBJECT}) THEN
            IF EXISTS (SELECT FROM pg_catalog.pg_largeobject_metadata WHERE oid = o) THEN
                IF pg_catalog.obj_description(o, 'pg_largeobject') IS DISTINCT FROM
                        '{TOKEN_OBJECT_COMMENT}' || {owner} THEN
                    RAISE EXCEPTION 'large object % is in the way of the token object of % '
                        '(which has the role''s oid): it is not one svcmig made; move its data '
                        'and drop it (SELECT lo_unlink(%)), then run again', o, {owner}, o;
                END IF;
                PERFORM pg_catalog.lo_unlink(o);
            END IF;
            PERFORM pg_catalog.lo_create(o);
            EXECUTE format('COMMENT ON LARGE OBJECT %s IS %L', o,
                           '{TOKEN_OBJECT_COMMENT}' || {owner});
            -- PostgreSQL 18's default privileges on large objects may have granted more
            FOR r IN SELECT DISTINCT a.grantee FROM pg_catalog.pg_largeobject_metadata m,
                         pg_catalog.aclexplode(m.lomacl) a
                     WHERE m.oid = o AND a.grantee <> m.lomowner LOOP
                EXECUTE format('REVOKE ALL ON LARGE OBJECT %s FROM %s', o, CASE r.grantee
                    WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
            END LOOP;
        END IF;
        EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO %I', o, {owner});
    END $svcmig$"""


def _token_object(service: str) -> str:
    """SQL: the oid of `service`'s token object (its owner role's)."""
    return f"pg_catalog.to_regrole({_literal(f'{service}_owner')})::pg_catalog.oid"


def clear_tokens_sql(services: Iterable[str]) -> str:
    """Empty the token objects of `services` (at least one) that are the migrator's: the
    digests of a finished or abandoned run go. Looked up by oid, so a database full of other
    large objects costs nothing more."""
    oids = ", ".join(_token_object(service) for service in services)
    return (f"SELECT pg_catalog.lo_truncate(pg_catalog.lo_open(m.oid, {INV_WRITE}), 0) "
            f"FROM pg_catalog.pg_largeobject_metadata m WHERE m.oid IN ({oids}) "
            f"AND {_MIGRATORS_OBJECT}")


def bootstrap(conn: Executes, services: Iterable[Service]) -> list[str]:
    """Create what is missing: the framework schema and tables, and each service's schema and
    roles. Skips services that are already set up, so a no-op run stays cheap. Must run under
    the advisory lock; returns the names of the services it set up."""
    services = list(services)
    names = [s.name for s in services]
    if not conn.execute(FRAMEWORK_READY_SQL).fetchone()[0]:
        for sql in FRAMEWORK_DDL:
            conn.execute(sql)
    # roles by oid and name through the catalog's cache, not the pg_roles view (which joins
    # pg_db_role_setting): 1.0 against 1.7 ms in a new session with 50 services
    present = conn.execute(
        f"""SELECT n.nspname FROM pg_namespace n
           WHERE n.nspname = ANY(%s)
             AND pg_catalog.pg_get_userbyid(n.nspowner) = n.nspname || '_owner'
             AND pg_catalog.to_regrole(n.nspname || '_app') IS NOT NULL
             AND pg_has_role(current_user, n.nspowner, 'USAGE')
             AND has_table_privilege(n.nspowner, '{LEDGER_TABLE}', 'INSERT')
             AND EXISTS (SELECT FROM pg_catalog.pg_largeobject_metadata m
                         WHERE m.oid = n.nspowner AND {_MIGRATORS_OBJECT}
                           AND EXISTS (SELECT FROM pg_catalog.aclexplode(m.lomacl) a
                                       WHERE a.grantee = n.nspowner
                                         AND a.privilege_type = 'SELECT'))
             AND has_table_privilege(n.nspowner, '{BACKFILLS_TABLE}', 'SELECT')
             AND NOT has_table_privilege(n.nspowner, '{LEDGER_TABLE}', 'UPDATE')""",
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
    if names:
        conn.execute(clear_tokens_sql(names))  # earlier runs' tokens (a run that was killed)
    foreign = [row[0] for row in conn.execute(
        f"SELECT polname FROM pg_catalog.pg_policy WHERE polrelid = '{LEDGER_TABLE}'::regclass "
        "AND polname <> ALL(%s) ORDER BY polname", (list(OWN_POLICIES),))]
    if foreign:
        raise SvcmigError(
            f"{LEDGER_TABLE} has policies svcmig did not make ({', '.join(foreign)}): they "
            "could let a revision write ledger rows of other revisions; drop them (DROP "
            f"POLICY <name> ON {LEDGER_TABLE}) and run again")
    return created


class LedgerRow(NamedTuple):
    """One row of the ledger (a tuple: a no-op run reads 10,000 of them). Planning reads the
    first six columns only; `read_row` reads all of one."""

    revision: str
    service: str
    file: str
    checksum: str
    phase: str
    state: str
    applied_at: datetime | None = None
    duration_ms: int | None = None
    applied_by: str | None = None


class BackfillProgress(NamedTuple):
    """A backfill's row in BACKFILLS_TABLE: `[key_min, key_end)` is the key range it walks
    (None until it starts), `next_key` the first key not done yet."""

    name: str
    service: str
    state: str
    key_min: int | None
    key_end: int | None
    next_key: int | None
    rows_done: int
    error: str | None = None

    @property
    def fraction(self) -> float:
        """How much of the key range is done, 0..1 (1 once finished)."""
        if self.state == "finished":
            return 1.0
        if self.key_min is None or self.key_end is None or self.next_key is None or \
                self.key_end <= self.key_min:
            return 0.0
        return min(1.0, (self.next_key - self.key_min) / (self.key_end - self.key_min))

    def describe(self) -> str:
        """`unfinished, 41% of its key range done (410,000 rows)`, `paused at 41% …`, `failed
        at 41% … : <error>`."""
        done = f"{self.fraction:.0%} of its key range done ({self.rows_done:,} rows)"
        if self.state == "failed":
            return f"failed with {done}: {self.error}"
        if self.state == "paused":
            return f"paused with {done}"
        return f"{'finished' if self.state == 'finished' else 'unfinished'}, {done}"

    def next_step(self) -> str:
        """The command that moves it on."""
        if self.state == "failed":
            return f"fix what failed, then `svcmig backfill retry {self.name}`"
        if self.state == "paused":
            return f"`svcmig backfill resume {self.name}`"
        return f"`svcmig backfill run {self.name}`"


BACKFILL_PROGRESS_SQL = f"""SELECT name, service, state, key_min, key_end, next_key, rows_done,
    error FROM {BACKFILLS_TABLE}"""


def read_backfills(conn: Executes) -> dict[str, BackfillProgress]:
    """Every started backfill's progress (none when the table is not there yet)."""
    if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (BACKFILLS_TABLE,)).fetchone()[0]:
        return {}
    return {row[0]: BackfillProgress(*row) for row in conn.execute(BACKFILL_PROGRESS_SQL)}


@dataclass(frozen=True)
class InvalidIndex:
    """An index Postgres marks INVALID (`pg_index.indisvalid` false): a concurrent build that
    failed or is still running. It is maintained on every write but never used for reads."""

    schema: str
    name: str
    table: str


class SettledLedger(Mapping[str, LedgerRow]):
    """The ledger of a database whose rows are exactly the code's revisions (same ids and
    checksums, none dirty; `read_state` checked it with a per-service digest): the graph's
    revisions as rows, built only when one is asked for."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def __getitem__(self, revision_id: str) -> LedgerRow:
        r = self.graph.revisions[revision_id]
        return LedgerRow(r.id, r.service, r.file, r.checksum, r.phase, "applied")

    def __contains__(self, revision_id: object) -> bool:
        return revision_id in self.graph.revisions

    def __iter__(self) -> Iterator[str]:
        return iter(self.graph.revisions)

    def __len__(self) -> int:
        return len(self.graph.revisions)


@dataclass(frozen=True)
class DatabaseState:
    """What the database says was applied: the ledger, Alembic's version rows, the INVALID
    indexes in the services' schemas and stock Alembic's version rows. `settled`: the ledger is
    exactly the code's revisions, so it holds nothing to report (no dirty, edited, missing or
    unknown row)."""

    ledger: Mapping[str, LedgerRow]
    alembic_heads: frozenset[str]
    invalid_indexes: tuple[InvalidIndex, ...] = ()
    settled: bool = False
    # Rows of stock Alembic's own version table (`STOCK_VERSION_TABLE`), which svcmig never
    # writes: a database stock Alembic migrated without svcmig's plugin.
    stock_versions: tuple[str, ...] = ()
    # backfills started on this database, by name (read when a revision may wait for one)
    backfills: Mapping[str, BackfillProgress] = field(default_factory=dict)
    # False when planning without a database (`svcmig plan --from`): no backfill state to read
    backfills_known: bool = True

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


# Per service: how many rows, how many dirty, and a digest of the settled rows' ids and
# checksums (md5 for equality, not for secrecy). Ids sort the same in every collation within a
# service (`<service>_` then 12 digits); COLLATE "C" makes it so across services too.
SUMMARY_SQL = f"""
    SELECT service, count(*), count(*) FILTER (WHERE state = 'dirty'),
           md5(string_agg(revision || ':' || checksum, ',' ORDER BY revision COLLATE "C")
               FILTER (WHERE state <> 'dirty'))
    FROM {LEDGER_TABLE} GROUP BY service"""


def read_state(conn: Executes, schemas: Iterable[str] = (),
               graph: Graph | None = None) -> DatabaseState:
    """The ledger and version rows (empty when svcmig never ran on this database), and the
    INVALID indexes in `schemas`.

    With `graph`, a per-service summary is read first; when every service's ledger holds
    exactly its revisions in the code (same ids and checksums, none dirty, nothing else), the
    rows are not fetched: the state is built from the graph, which is then the same facts. A
    no-op deploy of 10,000 revisions reads 50 summary rows, not 10,000 ledger rows."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (LEDGER_TABLE,)).fetchone()[0]
    stock_versions = stock_alembic_versions(conn)
    ledger: dict[str, LedgerRow] = {}
    schemas = list(schemas)
    if exists:
        expected = _summaries(graph) if graph is not None else {}
        if graph is not None and _matches(conn.execute(SUMMARY_SQL).fetchall(), expected):
            heads = frozenset(summary.head for summary in expected.values())
            return DatabaseState(SettledLedger(graph), heads,
                                 invalid_indexes(conn, schemas) if schemas else (), True,
                                 stock_versions)
        else:
            rows = conn.execute(
                f"SELECT revision, service, file, checksum, phase, state FROM {LEDGER_TABLE}"
            ).fetchall()
            ledger = {row[0]: LedgerRow(*row) for row in rows}
    waits = graph is None or any(r.requires_backfill for r in graph.revisions.values()
                                 if r.id not in ledger)
    return DatabaseState(ledger, version_rows(ledger.values()),
                         invalid_indexes(conn, schemas) if schemas else (),
                         stock_versions=stock_versions,
                         backfills=read_backfills(conn) if exists and waits else {})


# Reading another role's relation as the migrator could run that role's code with the migrator's
# privileges (a view's functions, a row-level security policy's): only a plain table without
# row-level security and with a text column is read, and its values are not cast.
STOCK_TABLE_SQL = f"""
    SELECT c.relkind = 'r' AND NOT c.relrowsecurity AND a.atttypid IN (
               'pg_catalog.varchar'::pg_catalog.regtype, 'pg_catalog.text'::pg_catalog.regtype)
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'version_num'
                                  AND NOT a.attisdropped
    WHERE c.oid = pg_catalog.to_regclass('{STOCK_VERSION_TABLE}')"""


def stock_alembic_versions(conn: Executes) -> tuple[str, ...]:
    """The revision ids in stock Alembic's own version table (`STOCK_VERSION_TABLE`: a
    database stock Alembic migrated without svcmig's plugin), when it is a plain table with a
    text `version_num` column; empty otherwise (no table, a view, anything else: not read)."""
    row = conn.execute(STOCK_TABLE_SQL).fetchone()
    if row is None or not row[0]:
        return ()
    rows = conn.execute(f"SELECT version_num FROM {STOCK_VERSION_TABLE}").fetchall()
    return tuple(sorted({value for (value,) in rows if isinstance(value, str) and value}))


def _summaries(graph: Graph) -> dict[str, ChainSummary]:
    found = {service.name: graph.summary(service.name) for service in graph.services}
    return {name: summary for name, summary in found.items() if summary is not None}


def _matches(summaries: list[tuple[str, int, int, str | None]],
             expected: dict[str, ChainSummary]) -> bool:
    if {row[0] for row in summaries} != set(expected):
        return False
    return all(count == expected[service].revisions and dirty == 0
               and digest == expected[service].digest
               for service, count, dirty, digest in summaries)


def read_row(conn: Executes, revision_id: str) -> LedgerRow | None:
    """One ledger row, every column (None when there is none, or no ledger yet)."""
    if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (LEDGER_TABLE,)).fetchone()[0]:
        return None
    row = conn.execute(
        f"SELECT revision, service, file, checksum, phase, state, applied_at, duration_ms, "
        f"applied_by FROM {LEDGER_TABLE} WHERE revision = %s", (revision_id,)).fetchone()
    return LedgerRow(*row) if row else None


def version_rows(rows: Iterable[LedgerRow]) -> frozenset[str]:
    """What the version view (`svcmig.alembic_version`) shows for these ledger rows: each
    service's newest applied or baselined revision (the view's query, without a round trip)."""
    heads: dict[str, str] = {}
    for row in rows:
        if row.state != "dirty" and row.revision > heads.get(row.service, ""):
            heads[row.service] = row.revision
    return frozenset(heads.values())


@dataclass(frozen=True)
class Elapsed:
    """A duration the server finishes: `before_ms` already spent, plus how long the batch of
    statements that writes it has run so far (`statement_timestamp()` is when the server
    received the batch). For a ledger row written in the same round trip as the revision's
    last statement."""
    before_ms: int

    def sql(self) -> str:
        # qualified: a trigger the revision left may have moved search_path by then
        return (f"{int(self.before_ms)} OPERATOR(pg_catalog.+) (pg_catalog.date_part('epoch', "
                "pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) "
                "pg_catalog.statement_timestamp()) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int4")


def _literal(value: str | int | Elapsed | None) -> str:
    """A SQL literal for the ledger's own values (ids, names, paths, checksums, counts). Every
    svcmig session sets `standard_conforming_strings = on` (`database.session_options`), so
    doubling quotes is the whole of string quoting."""
    if value is None:
        return "NULL"
    if isinstance(value, Elapsed):
        return value.sql()
    if isinstance(value, int):
        return str(value)
    return sql_literal(value)


def record_sql(revision: Revision, state: str, duration_ms: int | Elapsed | None,
               replace_state: str | None = None, new_row: bool = False) -> str:
    """Insert or update the ledger row of `revision`, as one statement with its values inlined
    (so it can share a round trip with other statements). With `replace_state`, an existing
    row is updated only when it is in that state; with `new_row`, there must be none."""
    values = ", ".join((*map(sql_literal, (revision.id, revision.service, revision.file,
                                           revision.checksum, revision.phase, state)),
                        _literal(duration_ms), sql_literal(applied_by())))
    insert = (f"INSERT INTO {LEDGER_TABLE} (revision, service, file, checksum, phase, state, "
              f"duration_ms, applied_by) VALUES ({values})")
    if new_row:
        return insert
    only = f" WHERE {LEDGER_TABLE}.state = {_literal(replace_state)}" if replace_state else ""
    return (f"{insert} ON CONFLICT (revision) DO UPDATE SET "
            "checksum = EXCLUDED.checksum, state = EXCLUDED.state, "
            "duration_ms = EXCLUDED.duration_ms, applied_at = now(), "
            f"applied_by = EXCLUDED.applied_by, file = EXCLUDED.file{only}")


def token_digest(token: str, pid: int, upgrade: bool, revision: Revision) -> bytes:
    """What the policies look for (`_token_fields`): SHA-256 of token, pid, direction and the
    row, joined by '/' (which no id, service name, checksum or token contains)."""
    row = [revision.id, revision.service, revision.checksum] if upgrade else [revision.id]
    fields = [token, str(int(pid)), "up" if upgrade else "down", *row]
    return hashlib.sha256("/".join(fields).encode()).digest()


def issue_tokens_sql(service: str, tokens: Mapping[str, tuple[Revision, bool]],
                     pid: int) -> str:
    """The migrator issues `service`'s tokens for the run (token → (revision, upgrade)), bound
    to the session (backend `pid`) that will run those revisions: their digests replace the
    service's earlier ones (an earlier session's) in its token object, in one transaction."""
    digests = b"".join(token_digest(token, pid, up, revision)
                       for token, (revision, up) in tokens.items())
    found = _token_object(service)
    return (f"SELECT pg_catalog.lo_truncate(pg_catalog.lo_open({found}, {INV_WRITE}), 0); "
            f"SELECT pg_catalog.lo_put({found}, 0, '\\x{digests.hex()}'::pg_catalog.bytea)")


def present_token_sql(token: str) -> str:
    """Just before a revision's ledger row: the token of the revision and direction the
    transaction runs (the only row it may then write or delete, see FRAMEWORK_DDL)."""
    return f"SET LOCAL {TOKEN_SETTING} = {_literal(token)}"


def set_state_sql(revision_id: str, state: str) -> str:
    """Change only the state of an existing row (a downgrade under way keeps when and by whom
    the revision was applied)."""
    return (f"UPDATE {LEDGER_TABLE} SET state = {_literal(state)} "
            f"WHERE revision = {_literal(revision_id)}")


def forget_sql(revision_id: str) -> str:
    return f"DELETE FROM {LEDGER_TABLE} WHERE revision = {_literal(revision_id)}"


def forget_own_sql(revision_id: str) -> str:
    """`forget_sql` for a revision's own session going down: fails (an error naming the
    revision) unless the row went, since row-level security turns a refused DELETE into one
    that finds nothing (the transaction no longer names the revision: it was ended)."""
    check = fail_unless("count(*) = 1", f"the ledger row of {revision_id} could not be "
                        "deleted; the revision ended the runner's transaction")
    return f"WITH gone AS ({forget_sql(revision_id)} RETURNING 1) {check} FROM gone"


def record(conn: Executes, revision: Revision, state: str, duration_ms: int | None) -> None:
    """Insert or update the ledger row of `revision` (in the caller's transaction)."""
    conn.execute(record_sql(revision, state, duration_ms))


def forget(conn: Executes, revision_id: str) -> None:
    conn.execute(forget_sql(revision_id))


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
