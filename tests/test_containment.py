"""Containment (issue 10): nothing in a revision escapes its service, its transaction or its run.

Each kind is tested with the issue's example and inputs of our own, on a real Postgres:
- escaping the service: role changes written out or hidden in dynamic SQL, SECURITY DEFINER
  functions, writes to another schema, `public`, the ledger; by svcmig and by stock Alembic;
- escaping the transaction: transaction control in SQL and Python, `autocommit_block()`,
  `commit()` from a Python revision;
- escaping the run: session settings, prepared statements, temp tables, LISTEN, cursors and
  advisory locks leaking into the next revision, of the same service or another;
- input the runner cannot run: COPY to/from the client, psql meta-commands, syntax errors;
- encodings hiding directives: a BOM, CRLF, invisible characters, misspelt keys and markers;
- failed concurrent index builds, a frozen migrator, a transaction pooler in between.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from migrations_runtime.engine.apply import RunSettings, migrate, read_plan
from migrations_runtime.engine.errors import (
    MigrationFailed,
    MigrationFileError,
    PlanError,
    SvcmigError,
)
from migrations_runtime.engine.ledger import issue_tokens_sql
from migrations_runtime.engine.load import checksum, parse_sql_source, read_text
from migrations_runtime.engine.lock import LOCK_KEY
from migrations_runtime.engine.lockwait import LockPolicy
from migrations_runtime.engine.validate import build_graph
from tests.conftest import REPO, query, run_alembic, run_cli, url_for, write_project
from tests.pgbouncer import pgbouncer, pgbouncer_binary

USERS_ROOT = ("CREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
              "email text);\nINSERT INTO users (email) VALUES ('ada@example.com');\n")
ORDERS_ROOT = "CREATE TABLE orders (id bigint PRIMARY KEY);\n"
QUIET = {"log": lambda _line: None}


def base_project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "p", {
        "users": {"2026-01-01T0000__users__create.sql": USERS_ROOT},
        "orders": {"2026-01-01T0100__orders__create.sql": ORDERS_ROOT},
    })


def add(root: Path, service: str, stamp: str, text: str, ext: str = "sql") -> Path:
    path = root / "services" / service / "migrations" / f"{stamp}__{service}__step.{ext}"
    path.write_text(text)
    return path


def python_revision(service: str, stamp: str, previous: str, body: str,
                    transactional: bool = True) -> str:
    rev = f"{service}_{stamp.replace('-', '').replace('T', '')}"
    flag = "" if transactional else "transactional = False\n"
    return ("import os\nimport time\n\nimport sqlalchemy as sa\nfrom alembic import op\n\n"
            f"revision = {rev!r}\ndown_revision = {previous!r}\n{flag}\n\n"
            f"def upgrade():\n{body}\n")


def ledger(url: str) -> dict[str, str]:
    return dict(query(url, "SELECT revision, state FROM svcmig.schema_migrations"))


def lock_is_free(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        return bool(got and got[0])


def outside(url: str) -> dict[str, object]:
    """What a revision of `orders` must never change."""
    return {
        "users": query(url, "SELECT id, email FROM users.users ORDER BY id"),
        "public": query(url, "SELECT relname FROM pg_class c JOIN pg_namespace n ON "
                             "n.oid = c.relnamespace WHERE nspname = 'public' ORDER BY 1"),
        # temporary schemas are per-connection machinery (the migrator keeps a marker there)
        "schemas": query(url, "SELECT nspname FROM pg_namespace WHERE nspname !~ "
                              "'^pg_(toast_)?temp_' ORDER BY 1"),
        "roles": query(url, "SELECT rolname, rolsuper, rolcreaterole FROM pg_roles "
                            "WHERE rolname LIKE '%%\\_owner' ORDER BY 1"),
        "members": query(url, "SELECT r.rolname, m.rolname FROM pg_auth_members a "
                              "JOIN pg_roles r ON r.oid = a.roleid "
                              "JOIN pg_roles m ON m.oid = a.member "
                              "WHERE m.rolname LIKE '%%\\_owner' ORDER BY 1, 2"),
        "ledger": query(url, "SELECT revision, state, checksum FROM svcmig.schema_migrations "
                             "WHERE service = 'users' ORDER BY 1"),
        "versions": query(url, "SELECT version_num FROM svcmig.alembic_version ORDER BY 1"),
    }


def superuser(url: str) -> str:
    return str(query(url, "SELECT current_user")[0][0])


# --- escaping the service ----------------------------------------------------------------------

REFUSED_UP_FRONT = [
    "RESET ROLE;\nINSERT INTO users.users (email) VALUES ('x@example.com');",
    "SET ROLE {admin};\nCREATE TABLE public.evil (id int);",
    "SET LOCAL ROLE {admin};",
    "SET SESSION AUTHORIZATION {admin};",
    "RESET SESSION AUTHORIZATION;",
    'SET "Role" TO {admin};',  # setting names are case-insensitive, quoted or not
    "ALTER ROLE orders_owner SET lock_timeout = 0;",
    "ALTER ROLE orders_owner IN DATABASE postgres SET search_path = public;",
    "ALTER ROLE CURRENT_USER PASSWORD 'known';",
]
DENIED_BY_POSTGRES = [
    "DO $$ BEGIN EXECUTE 'RESET ROLE'; INSERT INTO users.users (email) VALUES ('x'); END $$;",
    "DO $$ BEGIN EXECUTE 'SET ROLE {admin}'; END $$;",
    "DO $$ BEGIN EXECUTE 'SET SESSION AUTHORIZATION {admin}'; END $$;",
    "CREATE FUNCTION escape() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS $$\n"
    "BEGIN EXECUTE 'RESET ROLE'; INSERT INTO users.users (email) VALUES ('x'); END $$;\n"
    "SELECT escape();",
    "DO $$ BEGIN EXECUTE 'CREATE TABLE public.evil (id int)'; END $$;",
    "CREATE TABLE public.evil (id int);",
    "CREATE SCHEMA evil;",
    "UPDATE users.users SET email = 'stolen';",
    "DO $$ BEGIN EXECUTE 'ALTER ROLE orders_owner SUPERUSER'; END $$;",
    "GRANT users_owner TO orders_owner;",
    "ALTER TABLE users.users ADD COLUMN evil text;",
    "CREATE OR REPLACE VIEW svcmig.alembic_version AS SELECT 'x'::varchar(32) AS version_num;",
    "DROP TABLE svcmig.schema_migrations;",
    "INSERT INTO svcmig.schema_migrations (revision, service, file, checksum, phase, state, "
    "applied_by) VALUES ('users_209912312359', 'users', 'x', 'x', 'expand', 'applied', 'x');",
]


@pytest.mark.parametrize("body", REFUSED_UP_FRONT)
def test_role_changes_are_refused_before_anything_runs(tmp_path: Path, database_url: str,
                                                      body: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    before = outside(database_url)
    add(root, "orders", "2026-02-01T0000", "CREATE TABLE first (id int);\n")
    path = add(root, "orders", "2026-02-02T0000",
               body.format(admin=superuser(database_url)))
    with pytest.raises(PlanError) as caught:
        migrate(database_url, root, **QUIET)
    assert f"{path}:1" in str(caught.value) and "ROLE" in str(caught.value).upper()
    assert outside(database_url) == before
    assert query(database_url, "SELECT to_regclass('orders.first')") == [(None,)]
    assert lock_is_free(database_url)


@pytest.mark.parametrize("body", DENIED_BY_POSTGRES)
def test_postgres_keeps_a_revision_inside_its_service(tmp_path: Path, database_url: str,
                                                     body: str) -> None:
    """No parser sees dynamic SQL: the session's own role is what contains it."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    before = outside(database_url)
    add(root, "orders", "2026-02-01T0000", f"CREATE TABLE first (id int);\n{body}\n"
        .format(admin=superuser(database_url)))
    with pytest.raises(MigrationFailed) as caught:
        migrate(database_url, root, **QUIET)
    assert "SQLSTATE 42501" in str(caught.value) or "row-level security" in str(caught.value) \
        or "permission denied" in str(caught.value), str(caught.value)
    assert outside(database_url) == before
    assert query(database_url, "SELECT to_regclass('orders.first')") == [(None,)]
    assert "orders_202602010000" not in ledger(database_url)
    assert lock_is_free(database_url)


LEDGER_ROW = ("INSERT INTO svcmig.schema_migrations (revision, service, file, checksum, phase, "
              "state, applied_by) VALUES ('{id}', '{service}', 'x', 'x', 'expand', '{state}', "
              "'x');")
# Kind: a revision writing ledger rows it does not own. Row-level security shows an owner only
# its service's rows, lets it insert only an `applied` row whose id names its service, and the
# owner has no UPDATE at all.
FORGED_LEDGER_WRITES = [
    LEDGER_ROW.format(id="users_209912312359", service="orders", state="applied"),
    LEDGER_ROW.format(id="orders_209912312359", service="orders", state="dirty"),
    LEDGER_ROW.format(id="orders_209912312359", service="orders", state="baselined"),
    LEDGER_ROW.format(id="ordersx_209912312359", service="orders", state="applied"),
    "UPDATE svcmig.schema_migrations SET checksum = 'forged' WHERE service = 'users';",
    "UPDATE svcmig.schema_migrations SET state = 'dirty' WHERE service = 'orders';",
    # the policies' token check run with the revision's own `=` first on the search path (a
    # check that resolved names with the caller's path would then accept any token)
    "".join(f"CREATE FUNCTION yes(a {t}, b {t}) RETURNS boolean LANGUAGE sql AS 'SELECT true';\n"
            f"CREATE OPERATOR = (LEFTARG = {t}, RIGHTARG = {t}, FUNCTION = yes);\n"
            for t in ("bytea", "text", "integer"))
    + "DO $$ BEGIN PERFORM set_config('search_path', 'orders, pg_catalog', true), "
      "set_config('svc' || 'mig.revision_token', 'forged', true); END $$;\n"
    + LEDGER_ROW.format(id="orders_209912312359", service="orders", state="applied"),
]


def test_a_revision_cannot_see_or_delete_another_services_ledger_rows(
        tmp_path: Path, database_url: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    before = outside(database_url)
    add(root, "orders", "2026-02-01T0000",
        "DELETE FROM svcmig.schema_migrations WHERE service = 'users';\n"
        "DO $$ BEGIN IF EXISTS (SELECT FROM svcmig.schema_migrations WHERE service <> 'orders') "
        "THEN RAISE EXCEPTION 'sees other rows'; END IF; END $$;\n")
    migrate(database_url, root, **QUIET)  # row-level security: the statements see no rows
    assert outside(database_url)["ledger"] == before["ledger"]
    assert outside(database_url)["versions"] == [("orders_202602010000",), ("users_202601010000",)]


@pytest.mark.parametrize("statement", FORGED_LEDGER_WRITES)
def test_a_revision_cannot_forge_ledger_rows(tmp_path: Path, database_url: str,
                                             statement: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    before = ledger(database_url)
    add(root, "orders", "2026-02-01T0000", statement + "\n")
    with pytest.raises(MigrationFailed, match="row-level security|permission denied"):
        migrate(database_url, root, **QUIET)
    assert ledger(database_url) == before
    assert lock_is_free(database_url)


def test_python_revision_is_contained_too(tmp_path: Path, database_url: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    before = outside(database_url)
    add(root, "orders", "2026-02-01T0000", python_revision(
        "orders", "2026-02-01T0000", "orders_202601010100",
        "    op.create_table('first', sa.Column('id', sa.Integer))\n"
        "    op.execute(sa.text(\"DO $$ BEGIN EXECUTE 'RE' || 'SET ROLE'; \"\n"
        "                       \"INSERT INTO users.users (email) VALUES ('x'); END $$\"))"),
        ext="py")
    with pytest.raises(MigrationFailed, match="permission denied"):
        migrate(database_url, root, **QUIET)
    assert outside(database_url) == before
    assert query(database_url, "SELECT to_regclass('orders.first')") == [(None,)]


def test_stock_alembic_upgrade_is_contained(tmp_path: Path, database_url: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    before = outside(database_url)
    add(root, "orders", "2026-02-01T0000", DENIED_BY_POSTGRES[0])
    done = run_alembic(root, "upgrade", "heads", database_url=database_url)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "permission denied" in output and "Traceback" not in output, output
    assert outside(database_url) == before
    assert lock_is_free(database_url)


def test_owner_roles_cannot_log_in_between_runs(tmp_path: Path, database_url: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    assert query(database_url, "SELECT rolname, rolcanlogin, rolsuper FROM pg_roles WHERE "
                               "rolname IN ('users_owner', 'orders_owner') ORDER BY 1") == [
        ("orders_owner", False, False), ("users_owner", False, False)]


def owner_sessions(url: str) -> list[tuple[str]]:
    return query(url, "SELECT usename FROM pg_stat_activity WHERE usename LIKE '%%\\_owner' "
                      "AND datname = current_database()")


def test_a_session_logged_in_ahead_ends_with_a_run_that_fails_before_it(
        tmp_path: Path, database_url: str) -> None:
    """The kind: the next service's session, logged in while the current service's revisions
    run (`RevisionSessions.prefetch`), in a run that never gets to that service. It ends with
    the run and its owner goes back to NOLOGIN; its service is left as it was."""
    root = write_project(tmp_path / "p", {
        "behindok": {"2026-01-01T0000__behindok__create.sql": "CREATE TABLE a (id int);\n",
                     "2026-01-01T0001__behindok__fail.sql": "SELECT 1 / 0;\n"},
        "behindnx": {"2026-01-01T0100__behindnx__create.sql": "CREATE TABLE b (id int);\n"}})
    with pytest.raises(MigrationFailed, match="division by zero"):  # one lane: in plan order
        migrate(database_url, root, settings=RunSettings(jobs=1), **QUIET)
    assert ledger(database_url) == {"behindok_202601010000": "applied"}
    # a login grants 120 s (sessions.LOGIN_WINDOW_SECONDS): both owners logged in just now
    roles = query(database_url, "SELECT rolname, rolcanlogin, rolvaliduntil > now() + "
                                "interval '60 seconds' FROM pg_roles WHERE rolname IN "
                                "('behindok_owner', 'behindnx_owner') ORDER BY 1")
    assert roles == [("behindnx_owner", False, True), ("behindok_owner", False, True)]
    assert owner_sessions(database_url) == []
    assert lock_is_free(database_url)


def test_a_login_ahead_that_fails_is_reported_when_its_service_runs(
        tmp_path: Path, database_url: str, server_url: str) -> None:
    """A service whose session, logged in ahead, cannot be used (here its owner was made a
    superuser, which the runner refuses): the services before it are applied, and it fails
    with the reason, as it would without logging in ahead."""
    root = write_project(tmp_path / "p", {
        "aheadok": {"2026-01-01T0000__aheadok__create.sql": "CREATE TABLE a (id int);\n"},
        "aheadsu": {"2026-01-01T0100__aheadsu__create.sql": "CREATE TABLE b (id int);\n"}})
    migrate(database_url, root, **QUIET)
    add(root, "aheadok", "2026-02-01T0000", "CREATE TABLE a2 (id int);\n")
    add(root, "aheadsu", "2026-02-01T0100", "CREATE TABLE b2 (id int);\n")
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute("ALTER ROLE aheadsu_owner SUPERUSER")
    try:
        with pytest.raises(MigrationFailed, match="must be an ordinary role"):
            migrate(database_url, root, **QUIET)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute("ALTER ROLE aheadsu_owner NOSUPERUSER")
    assert ledger(database_url)["aheadok_202602010000"] == "applied"
    assert "aheadsu_202602010100" not in ledger(database_url)
    assert owner_sessions(database_url) == []
    assert lock_is_free(database_url)


# --- escaping the transaction ------------------------------------------------------------------

TRANSACTION_CONTROL = ["BEGIN;", "START TRANSACTION;", "COMMIT;", "END;", "ROLLBACK;", "ABORT;",
                       "SAVEPOINT s;", "RELEASE SAVEPOINT s;", "ROLLBACK TO SAVEPOINT s;",
                       "PREPARE TRANSACTION 'x';", "COMMIT PREPARED 'x';",
                       "BEGIN;\nCREATE TABLE inner_one (id int);\nCOMMIT;"]


@pytest.mark.parametrize("statement", TRANSACTION_CONTROL)
def test_transaction_control_is_refused_before_anything_runs(
        tmp_path: Path, database_url: str, statement: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000", "CREATE TABLE first (id int);\n")
    path = add(root, "users", "2026-02-02T0000",
               f"CREATE TABLE a (id int);\n{statement}\nCREATE TABLE b (id int);\n")
    with pytest.raises(PlanError) as caught:
        migrate(database_url, root, **QUIET)
    assert f"{path}:2" in str(caught.value) and "transaction control" in str(caught.value)
    assert set(ledger(database_url)) == {"users_202601010000", "orders_202601010100"}
    assert query(database_url, "SELECT count(*) FROM pg_tables WHERE tablename IN "
                               "('first', 'a', 'b', 'inner_one')") == [(0,)]
    status = run_cli(root, "status", "--json", database_url=database_url)
    assert status.returncode == 1
    assert {a["kind"] for a in json.loads(status.stdout)["anomalies"]} == {"invalid_revision"}


@pytest.mark.parametrize(("body", "refused_when"), [
    ("    op.execute('COMMIT')", "planned"),
    ("    op.execute('RESET ROLE')", "planned"),
    ("    op.execute('COM' + 'MIT')", "run"),
    ("    op.execute(' '.join(['SET', 'ROLE', 'none']))", "run"),
    ("    op.get_bind().commit()", "run"),
    ("    op.get_bind().begin_nested()", "run"),
    ("    with op.get_context().autocommit_block():\n        op.execute('SELECT 1')", "planned"),
    ("    getattr(op.get_context(), 'autocommit' + '_block')()", "run"),
])
def test_python_revision_cannot_end_the_runners_transaction(
        tmp_path: Path, database_url: str, body: str, refused_when: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000", python_revision(
        "users", "2026-02-01T0000", "users_202601010000",
        f"    op.create_table('first', sa.Column('id', sa.Integer))\n{body}\n"
        "    op.create_table('second', sa.Column('id', sa.Integer))"), ext="py")
    expected = PlanError if refused_when == "planned" else MigrationFailed
    with pytest.raises(expected) as caught:
        migrate(database_url, root, **QUIET)
    assert "2026-02-01T0000__users__step.py" in str(caught.value)
    assert query(database_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'users' AND "
                               "tablename IN ('first', 'second')") == [(0,)]
    assert "users_202602010000" not in ledger(database_url)
    assert lock_is_free(database_url)


def test_autocommit_block_in_a_non_transactional_python_revision_runs(
        tmp_path: Path, database_url: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000", python_revision(
        "users", "2026-02-01T0000", "users_202601010000",
        "    with op.get_context().autocommit_block():\n"
        "        op.execute('CREATE INDEX CONCURRENTLY users_email ON users (email)')",
        transactional=False), ext="py")
    migrate(database_url, root, **QUIET)
    assert ledger(database_url)["users_202602010000"] == "applied"
    assert query(database_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = "
                               "'users.users_email'::regclass") == [(True,)]


# --- escaping the run: nothing carries over to the next revision -------------------------------

LEAKS = [
    "SET statement_timeout = '200ms';",
    "SELECT set_config('statement_timeout', '200ms', false);",
    "SET search_path = public;",
    "SELECT set_config('search_path', 'pg_catalog', false);",
    "SELECT set_config('svcmig_test.flag', 'leaked', false);",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY;",
    "PREPARE leaky AS SELECT 1;",
    "CREATE TEMP TABLE leaky_temp (id int);",
    "LISTEN leaky;",
    "SELECT pg_advisory_lock(42);",
]
# plpgsql: raise when anything of LEAKS reached the session
LEAK_CHECKS = """
  IF current_setting('statement_timeout') <> '0' THEN
    RAISE EXCEPTION 'leaked statement_timeout %', current_setting('statement_timeout'); END IF;
  IF coalesce(current_setting('svcmig_test.flag', true), '') <> '' THEN
    RAISE EXCEPTION 'leaked a custom setting'; END IF;
  IF EXISTS (SELECT FROM pg_prepared_statements WHERE name = 'leaky') THEN
    RAISE EXCEPTION 'leaked a prepared statement'; END IF;
  IF to_regclass('pg_temp.leaky_temp') IS NOT NULL THEN
    RAISE EXCEPTION 'leaked a temp table'; END IF;
  IF EXISTS (SELECT FROM pg_listening_channels() c WHERE c = 'leaky') THEN
    RAISE EXCEPTION 'leaked LISTEN'; END IF;
  IF EXISTS (SELECT FROM pg_cursors WHERE name = 'leaky_cursor') THEN
    RAISE EXCEPTION 'leaked a cursor'; END IF;
  IF EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) THEN
    RAISE EXCEPTION 'leaked an advisory lock'; END IF;
"""
PROBE = f"""SELECT pg_sleep(0.3);
CREATE TABLE probe (id int);
DO $$ BEGIN{LEAK_CHECKS}END $$;
"""


@pytest.mark.parametrize("transactional", [True, False], ids=["transactional", "no-transaction"])
@pytest.mark.parametrize("next_service", ["users", "orders"])
@pytest.mark.parametrize("leak", LEAKS)
def test_nothing_a_revision_sets_reaches_the_next_one(
        tmp_path: Path, database_url: str, leak: str, next_service: str,
        transactional: bool) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    header = "" if transactional else "-- migrate:no-transaction\n"
    add(root, "users", "2026-02-01T0000", f"{header}{leak}\n")
    add(root, next_service, "2026-02-02T0000", PROBE)
    migrate(database_url, root, **QUIET)
    assert query(database_url, f"SELECT to_regclass('{next_service}.probe')") == [
        (f"{next_service}.probe",)]


ISOLATION_CHANGES = ["SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;",
                     "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;",
                     "SET TRANSACTION SNAPSHOT '00000003-00000002-1';"]


@pytest.mark.parametrize("kind", ["sql", "py"])
@pytest.mark.parametrize("statement", ISOLATION_CHANGES)
def test_a_revision_cannot_change_its_transactions_isolation(
        tmp_path: Path, database_url: str, statement: str, kind: str) -> None:
    """The kind: a revision taking its transaction out of READ COMMITTED. Under REPEATABLE
    READ the check before COMMIT that the migrator still holds its lock read the catalog as
    of the transaction's start, so a revision committed after a frozen migrator had lost its
    lock (a breaker's finding). Postgres refuses the change: the runner's transaction has run
    a query before the revision's first statement."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    if kind == "sql":
        add(root, "orders", "2026-02-01T0000", f"{statement}\nCREATE TABLE second (id int);\n")
    else:
        add(root, "orders", "2026-02-01T0000", python_revision(
            "orders", "2026-02-01T0000", "orders_202601010100",
            f"    op.execute({statement.rstrip(';')!r})\n"
            "    op.create_table('second', sa.Column('id', sa.Integer))"), ext="py")
    with pytest.raises(MigrationFailed, match="must be called before any query"):
        migrate(database_url, root, **QUIET)
    assert query(database_url, "SELECT to_regclass('orders.second')") == [(None,)]
    assert "orders_202602010000" not in ledger(database_url)
    assert lock_is_free(database_url)


def test_a_plan_an_earlier_revision_cached_does_not_reach_the_next_one(
        tmp_path: Path, database_url: str) -> None:
    """The kind: a cached plan. Postgres keeps a plan a function cached until what it depends on
    changes, and a new, better-matching overload of a function it calls is not such a change: a
    later revision in the same session would run the earlier revision's choice of overload
    where a fresh session (the next run, stock Alembic) picks the new one (a breaker's
    finding)."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000",
        "CREATE FUNCTION pick(x numeric) RETURNS text LANGUAGE sql AS $$ SELECT 'numeric' $$;\n"
        "CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN pick(1); END $$;\n"
        "CREATE TABLE picks (rev text, v text);\n")
    add(root, "users", "2026-02-02T0000", "INSERT INTO picks SELECT 'second', f();\n")
    add(root, "users", "2026-02-03T0000",
        "CREATE FUNCTION pick(x integer) RETURNS text LANGUAGE sql AS $$ SELECT 'integer' $$;\n")
    add(root, "users", "2026-02-04T0000", "INSERT INTO picks SELECT 'fourth', f();\n")
    migrate(database_url, root, **QUIET)
    assert query(database_url, "SELECT rev, v FROM users.picks ORDER BY 1") == [
        ("fourth", "integer"), ("second", "numeric")]


def test_a_held_cursor_does_not_reach_the_next_revision(tmp_path: Path,
                                                       database_url: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000",
        "DECLARE leaky_cursor CURSOR WITH HOLD FOR SELECT 1;\n")
    add(root, "users", "2026-02-02T0000", PROBE)
    migrate(database_url, root, **QUIET)
    assert query(database_url, "SELECT to_regclass('users.probe')") == [("users.probe",)]


# --- what the runner cannot run: refused, with the file and line --------------------------------

@pytest.mark.parametrize("header", ["", "-- migrate:no-transaction\n"],
                         ids=["transactional", "no-transaction"])
@pytest.mark.parametrize("statement", [
    "COPY users FROM STDIN;", "COPY users (email) FROM stdin WITH (FORMAT csv);",
    "COPY users TO STDOUT;", "COPY (SELECT 1) TO STDOUT;"])
def test_copy_to_or_from_the_client_is_refused(tmp_path: Path, database_url: str,
                                               statement: str, header: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    path = add(root, "users", "2026-02-01T0000", f"{header}SELECT 1;\n{statement}\n")
    line = 3 if header else 2
    done = run_cli(root, "migrate", "--json", database_url=database_url)
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["outcome"] == "refused" and result["applied"] == []
    assert f"{path}:{line}" in result["error"] and "COPY" in result["error"]
    assert "Traceback" not in done.stderr
    assert "users_202602010000" not in ledger(database_url)  # no dirty row either
    assert lock_is_free(database_url)


@pytest.mark.parametrize("line", ["\\copy users from 'users.csv'", "\\set ON_ERROR_STOP on",
                                  "\\i other.sql", "\\connect other", "\\."])
def test_psql_meta_commands_are_refused(tmp_path: Path, database_url: str, line: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    path = add(root, "users", "2026-02-01T0000", f"SELECT 1;\n{line}\nSELECT 2;\n")
    with pytest.raises(PlanError) as caught:
        migrate(database_url, root, **QUIET)
    assert f"{path}:2" in str(caught.value) and "psql meta-command" in str(caught.value)


def test_migrate_json_reports_a_failed_revision(tmp_path: Path, database_url: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000", "CREATE TABLE fine (id int);\n")
    path = add(root, "users", "2026-02-02T0000", "SELECT 1;\nINSERT INTO nowhere VALUES (1);\n")
    done = run_cli(root, "migrate", "--json", database_url=database_url)
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["outcome"] == "failed"
    assert [r["revision"] for r in result["applied"]] == ["users_202602010000"]
    assert result["failed"]["revision"] == "users_202602020000"
    assert result["failed"]["file"] == str(path) and result["failed"]["line"] == 2
    assert "nowhere" in result["failed"]["error"]


# --- encodings and spellings that could hide a directive ---------------------------------------

CONTRACT_HEADERS = [
    "\ufeff-- phase: contract\n",
    "-- phase: contract\r\n",
    "\ufeff-- Phase: Contract\r\n",
    "\u200b-- phase: contract\n",
    "--phase:contract\n",
    "-- PHASE : contract\n",
    "\ufeff-- migrate:no-transaction\r\n-- phase: contract\r\n",
]


@pytest.mark.parametrize("header", CONTRACT_HEADERS)
def test_a_contract_directive_is_seen_however_it_is_encoded(header: str) -> None:
    source = parse_sql_source(f"{header}ALTER TABLE users DROP COLUMN email;\n", Path("x.sql"))
    assert source.phase == "contract"
    assert "\ufeff" not in source.up


def test_a_bom_before_the_directive_keeps_the_drop_out_of_expand(
        tmp_path: Path, database_url: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000",
        "\ufeff-- phase: contract\r\nALTER TABLE users DROP COLUMN email;\r\n")
    expand = migrate(database_url, root, phase="expand", **QUIET)
    assert expand.results == ()
    assert query(database_url, "SELECT count(*) FROM information_schema.columns WHERE "
                               "table_schema = 'users' AND column_name = 'email'") == [(1,)]
    contract = migrate(database_url, root, phase="contract", **QUIET)
    assert [r.revision for r in contract.results] == ["users_202602010000"]


@pytest.mark.parametrize(("text", "message"), [
    ("-- phases: contract\nSELECT 1;\n", "did you mean '-- phase:'"),
    ("-- owner: team payments\nSELECT 1;\n", None),  # an ordinary comment
    ("-- phase 2 of the rollout: see the runbook\nSELECT 1;\n", None),
    ("-- depends_on_it: x\nSELECT 1;\n", "did you mean '-- depends-on:'"),
    ("-- depends: users_202601010000\nSELECT 1;\n", "did you mean '-- depends-on:'"),
    ("SELECT 1;\n-- phase: contract\nSELECT 2;\n", "must be in the header"),
    ("SELECT 1;\n-- migrate:dwon\nSELECT 2;\n", "unknown marker"),
])
def test_misspelt_or_misplaced_directives_are_refused(text: str, message: str | None) -> None:
    if message is None:
        parse_sql_source(text, Path("x.sql"))
        return
    with pytest.raises(MigrationFileError, match=message):
        parse_sql_source(text, Path("x.sql"))


@pytest.mark.parametrize("marker", ["-- migrate:down", "--migrate:down", "-- Migrate: Down",
                                    "--  MIGRATE:DOWN  "])
def test_a_down_marker_is_seen_however_it_is_written(marker: str) -> None:
    source = parse_sql_source(f"CREATE TABLE t (id int);\n{marker}\nDROP TABLE t;\n",
                              Path("x.sql"))
    assert "DROP" not in source.up and source.down is not None and "DROP" in source.down


def test_a_file_that_is_not_utf8_is_refused_naming_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "x.sql"
    path.write_bytes("-- café\nSELECT 1;\n".encode("latin-1"))
    with pytest.raises(MigrationFileError) as caught:
        read_text(path)
    assert "offset 6" in str(caught.value) and "0xe9" in str(caught.value)
    assert "iconv -f <its encoding>" in str(caught.value)
    assert caught.value.line == 1


def test_a_bom_or_crlf_is_not_an_edit() -> None:
    text = "-- phase: contract\nALTER TABLE t DROP COLUMN c;\n"
    assert checksum("\ufeff" + text) == checksum(text.replace("\n", "\r\n")) == checksum(text)


# --- failed concurrent index builds ------------------------------------------------------------

CIC = "-- migrate:no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY {ine}users_email_key " \
      "ON users (email);\n"


def invalid_indexes(url: str) -> list[tuple[str]]:
    return query(url, "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid")


@pytest.mark.parametrize("ine", ["", "IF NOT EXISTS "], ids=["plain", "if-not-exists"])
def test_a_failed_concurrent_build_leaves_no_invalid_index(tmp_path: Path, database_url: str,
                                                          ine: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    query(database_url, "INSERT INTO users.users (email) VALUES ('ada@example.com')")
    add(root, "users", "2026-02-01T0000", CIC.format(ine=ine))
    with pytest.raises(MigrationFailed) as caught:
        migrate(database_url, root, **QUIET)
    assert "could not create unique index" in str(caught.value)
    assert "dropped the INVALID index users.users_email_key" in str(caught.value)
    assert invalid_indexes(database_url) == []
    assert "users_202602010000" not in ledger(database_url)  # nothing left: not dirty
    assert read_plan(database_url, root).errors == []
    query(database_url, "DELETE FROM users.users WHERE id = 2")
    migrate(database_url, root, **QUIET)
    assert ledger(database_url)["users_202602010000"] == "applied"
    assert query(database_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = "
                               "'users.users_email_key'::regclass") == [(True,)]


def test_a_concurrent_build_behind_an_old_transaction_cleans_up(tmp_path: Path,
                                                               database_url: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000", CIC.format(ine=""))
    with psycopg.connect(database_url) as old:
        old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        old.execute("SELECT 1")  # holds a snapshot: every concurrent build waits for it
        with pytest.raises(MigrationFailed, match="lock budget"):
            migrate(database_url, root, settings=RunSettings(lock=LockPolicy(
                first_timeout_ms=100, max_timeout_ms=300, budget_seconds=2)), **QUIET)
        old.rollback()
    assert invalid_indexes(database_url) == []
    assert "users_202602010000" not in ledger(database_url)
    migrate(database_url, root, **QUIET)
    assert ledger(database_url)["users_202602010000"] == "applied"


def test_an_invalid_leftover_is_rebuilt_and_reported_until_then(tmp_path: Path,
                                                               database_url: str) -> None:
    """An INVALID index from a build outside svcmig: `status` warns; a revision building the
    same index with IF NOT EXISTS rebuilds it instead of skipping it."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("INSERT INTO users.users (email) VALUES ('ada@example.com')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            admin.execute("CREATE UNIQUE INDEX CONCURRENTLY users_email_key "
                          "ON users.users (email)")
        admin.execute("DELETE FROM users.users WHERE id = 2")
    status = run_cli(root, "status", "--json", database_url=database_url)
    assert status.returncode == 0
    anomalies = json.loads(status.stdout)["anomalies"]
    assert [(a["kind"], a["revision"], a["severity"]) for a in anomalies] == [
        ("invalid_index", "users_email_key", "warning")]
    add(root, "users", "2026-02-01T0000", CIC.format(ine="IF NOT EXISTS "))
    migrate(database_url, root, **QUIET)
    assert invalid_indexes(database_url) == []
    assert query(database_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = "
                               "'users.users_email_key'::regclass") == [(True,)]


# --- a frozen migrator, a pooler in between ----------------------------------------------------

def test_a_frozen_migrator_loses_its_locks_within_the_idle_timeout(
        tmp_path: Path, database_url: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    marker = tmp_path / "locked"
    add(root, "users", "2026-02-01T0000", python_revision(
        "users", "2026-02-01T0000", "users_202601010000",
        "    op.execute('LOCK TABLE users IN ACCESS EXCLUSIVE MODE')\n"
        "    if os.environ.get('FREEZE_MARKER'):\n"
        "        open(os.environ['FREEZE_MARKER'], 'w').close()\n"
        "        time.sleep(120)"), ext="py")
    env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(root), "DATABASE_URL": database_url,
           "FREEZE_MARKER": str(marker)}
    victim = subprocess.Popen([sys.executable, "-m", "migrations_runtime.cli", "migrate",
                               "--idle-timeout-ms", "2000"], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline and victim.poll() is None
            time.sleep(0.05)
        victim.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        while query(database_url, "SELECT count(*) FROM pg_locks WHERE relation = "
                                  "'users.users'::regclass")[0][0] or \
                not lock_is_free(database_url):
            assert time.monotonic() - frozen < 15, "the frozen migrator still holds locks"
            time.sleep(0.2)
        released = time.monotonic() - frozen
    finally:
        victim.kill()
        victim.wait(10)
    print(f"locks released {released:.1f} s after the migrator froze (idle timeout 2 s)")
    assert query(database_url, "SELECT count(*) FROM users.users") == [(1,)]  # readable again
    assert "users_202602010000" not in ledger(database_url)
    migrate(database_url, root, **QUIET)
    assert ledger(database_url)["users_202602010000"] == "applied"


def test_migrators_behind_a_transaction_pooler_are_refused(
        tmp_path: Path, database_url: str, server_url: str) -> None:
    """Three migrators through PgBouncer in transaction mode that drops the `options` startup
    parameter (so session settings silently vanish): all refused, nothing written."""
    if not pgbouncer_binary():
        if os.environ.get("CI") == "true":
            pytest.fail("pgbouncer is not installed; CI must install it")
        print("skipping: pgbouncer binary not found (apt-get install pgbouncer)")
        pytest.skip("pgbouncer binary not found")
    root = base_project(tmp_path)
    database = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
    with pgbouncer(server_url, database, 3,
                   settings={"ignore_startup_parameters": "options"}) as bouncer:
        env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(root), "DATABASE_URL": bouncer}
        runs = [subprocess.Popen([sys.executable, "-m", "migrations_runtime.cli", "migrate",
                                  "--json"], cwd=root, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outputs = [run.communicate(timeout=120) for run in runs]
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 1, stderr
        assert json.loads(stdout)["outcome"] == "error"
        assert "connection pooler" in stderr and "writer endpoint" in stderr
    assert query(database_url, "SELECT to_regnamespace('svcmig')") == [(None,)]
    assert query(database_url, "SELECT to_regnamespace('users')") == [(None,)]


def test_repository_migrations_run_contained(tmp_path: Path, database_url: str) -> None:
    """The reference services need nothing a revision may not do."""
    from tests.conftest import copy_project

    root = copy_project(tmp_path / "repo")
    migrate(database_url, root, **QUIET)
    assert set(ledger(database_url).values()) == {"applied"}
    assert REPO.is_dir()


def test_owner_sessions_log_in_with_a_password_where_the_server_demands_one(
        tmp_path: Path) -> None:
    """Aurora-like authentication: every role but the migrator's logs in with a SCRAM password.
    The owner's one-run password works, and is useless once the run is over."""
    from tests.services.throwaway import throwaway_postgres

    root = base_project(tmp_path)
    with throwaway_postgres(password_auth=True) as url:
        migrate(url, root, **QUIET)
        assert set(ledger(url).values()) == {"applied"}
        verifier = query(url, "SELECT rolpassword IS NULL, rolcanlogin FROM pg_authid "
                              "WHERE rolname = 'users_owner'")
        assert verifier == [(True, False)]
        info = psycopg.conninfo.conninfo_to_dict(url)
        with pytest.raises(psycopg.OperationalError, match="password|not permitted to log in"):
            psycopg.connect(psycopg.conninfo.make_conninfo(**{**info, "user": "users_owner"}))


# --- what a first user tried next (issue 10's breaker round) -----------------------------------

# Kind: statements that change what the runner set for every revision (its lock policy, the idle
# timeouts), however the setting is named or set.
RUNNER_SETTING_CHANGES = [
    "SET lock_timeout = 0;",
    "SET LOCAL lock_timeout = '1h';",
    'SET "Lock_Timeout" TO 0;',
    "SELECT set_config('lock_timeout', '0', false);",
    "SELECT pg_catalog.set_config('IDLE_SESSION_TIMEOUT', '0', true);",
    "SET idle_in_transaction_session_timeout = 0;",
    "RESET lock_timeout;",
    "RESET ALL;",
]


@pytest.mark.parametrize("statement", RUNNER_SETTING_CHANGES)
def test_changing_the_runners_settings_is_refused(tmp_path: Path, database_url: str,
                                                  statement: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    path = add(root, "users", "2026-02-01T0000", f"{statement}\nCREATE TABLE t (id int);\n")
    with pytest.raises(PlanError, match="not allowed in a revision") as caught:
        migrate(database_url, root, **QUIET)
    assert f"{path}:1" in str(caught.value)
    assert query(database_url, "SELECT to_regclass('users.t')") == [(None,)]


# Kind: statements Postgres runs only outside a transaction, written in their rarer forms.
@pytest.mark.parametrize("statement", ["REINDEX SCHEMA users;", "REINDEX DATABASE postgres;",
                                       "CLUSTER;", "DISCARD ALL;"])
def test_statements_that_need_no_transaction_are_refused_in_one(
        tmp_path: Path, database_url: str, statement: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000", f"CREATE TABLE t (id int);\n{statement}\n")
    with pytest.raises(PlanError, match="cannot run inside a transaction block.*"
                                        "migrate:no-transaction"):
        migrate(database_url, root, **QUIET)


def test_role_settings_a_revision_stores_do_not_outlive_the_run(
        tmp_path: Path, database_url: str) -> None:
    """A role may store settings on itself (ALTER ROLE ... SET), which Postgres allows; hidden
    in dynamic SQL the preflight cannot see it, so the runner forgets them at the end."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "orders", "2026-02-01T0000",
        "DO $$ BEGIN EXECUTE 'ALTER ROLE orders_owner SET lock_timeout = 0'; "
        "EXECUTE format('ALTER ROLE orders_owner IN DATABASE %I SET statement_timeout = 1', "
        "current_database()); END $$;\n")
    migrate(database_url, root, **QUIET)
    assert query(database_url, "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r "
                               "ON r.oid = s.setrole WHERE r.rolname = 'orders_owner'") == [(0,)]
    assert query(database_url, "SELECT rolcanlogin FROM pg_roles "
                               "WHERE rolname = 'orders_owner'") == [(False,)]


def test_a_services_functions_are_not_executable_by_other_services(
        tmp_path: Path, database_url: str) -> None:
    root = base_project(tmp_path)
    add(root, "orders", "2026-02-01T0000",
        "CREATE FUNCTION total() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';\n")
    migrate(database_url, root, **QUIET)
    rows = query(database_url, "SELECT r, has_function_privilege(r, 'orders.total()', 'EXECUTE') "
                               "FROM unnest(ARRAY['users_app', 'users_owner', 'orders_app']) r "
                               "ORDER BY 1")
    assert rows == [("orders_app", True), ("users_app", False), ("users_owner", False)]


def test_the_migrator_resolves_names_in_the_system_catalog_only(database_url: str) -> None:
    """Whatever schemas exist, the migrator's unqualified names and operators are the built-in
    ones: its sessions' search_path holds only pg_catalog (and pg_temp, last)."""
    from migrations_runtime.engine.database import connect

    conn = connect(database_url)
    try:
        assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog,pg_temp",)
        conn.execute("RESET ALL")  # what a revision session's reset does
        assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog,pg_temp",)
    finally:
        conn.close()


# Kind: a revision that ends the runner's transaction through a door the guards cannot see (the
# raw libpq connection): what ran may be committed, so the ledger says dirty.
ESCAPES = {
    "then-fails": "    conn.pgconn.exec_(b'COMMIT')\n    op.execute('SELECT 1/0')",
    "then-succeeds": "    conn.pgconn.exec_(b'COMMIT')",
    "rollback": "    conn.pgconn.exec_(b'ROLLBACK')",
    # a new transaction right after: the session looks as if it never left the runner's
    "commit-and-begin": "    conn.pgconn.exec_(b'COMMIT')\n    conn.pgconn.exec_(b'BEGIN')\n"
                        "    op.execute('CREATE TABLE second (id int)')",
    "commit-begin-succeeds": "    conn.pgconn.exec_(b'COMMIT')\n    conn.pgconn.exec_(b'BEGIN')\n"
                             "    op.execute('CREATE TABLE users.second (id int)')",
    "commit-begin-then-fails": "    conn.pgconn.exec_(b'COMMIT')\n"
                               "    conn.pgconn.exec_(b'BEGIN')\n    op.execute('SELECT 1/0')",
}


@pytest.mark.parametrize("escape", ESCAPES.values(), ids=ESCAPES.keys())
def test_a_revision_that_ends_the_runners_transaction_is_marked_dirty(
        tmp_path: Path, database_url: str, escape: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000", python_revision(
        "users", "2026-02-01T0000", "users_202601010000",
        "    op.create_table('first', sa.Column('id', sa.Integer))\n"
        f"    conn = op.get_bind().connection.driver_connection\n{escape}"), ext="py")
    with pytest.raises(MigrationFailed, match="marked dirty"):
        migrate(database_url, root, **QUIET)
    assert ledger(database_url)["users_202602010000"] == "dirty"
    assert lock_is_free(database_url)
    with pytest.raises(PlanError, match="dirty"):
        migrate(database_url, root, **QUIET)


# Kind: the ledger row is written in the same round trip as the revision's last statement (one
# round trip for a one-statement revision); the batch commits only if the migrator still holds
# its lock, records how long the statement ran, and survives whatever the statement ends with.

LAST_STATEMENT_ENDINGS = [
    "CREATE TABLE users.ending (id int) -- a comment, no newline at the end",
    "CREATE TABLE users.ending (id int); -- a comment, no newline at the end",
    "CREATE TABLE users.ending (id int) /* a block comment */",
    "CREATE TABLE users.ending (id int);\n\n-- trailing lines\n-- of comments\n",
    "CREATE TABLE users.ending (id int, note text DEFAULT '-- not a comment; COMMIT')",
]


@pytest.mark.parametrize("text", LAST_STATEMENT_ENDINGS)
def test_the_ledger_row_follows_any_ending_of_the_last_statement(
        tmp_path: Path, database_url: str, text: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000", text)
    migrate(database_url, root, **QUIET)
    assert ledger(database_url)["users_202602010000"] == "applied"
    assert query(database_url, "SELECT to_regclass('users.ending')") == [("users.ending",)]


DEFERRED_SLEEP = (
    "CREATE TABLE users.marker (id int);\n"
    "CREATE FUNCTION users.slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "PERFORM pg_sleep(0.4); RETURN NULL; END $$;\n"
    "CREATE CONSTRAINT TRIGGER slow_at_commit AFTER INSERT ON users.marker DEFERRABLE "
    "INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION users.slow();\n"
    "INSERT INTO users.marker VALUES (1);\n")


@pytest.mark.parametrize("ext", ["sql", "py", "deferred-trigger"])
def test_the_ledger_row_records_the_last_statements_time(
        tmp_path: Path, database_url: str, ext: str) -> None:
    """Including work deferred to the end of the transaction (constraint triggers)."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    sql = "CREATE TABLE users.slow AS SELECT pg_sleep(0.4) IS NULL AS slept"
    if ext == "deferred-trigger":
        add(root, "users", "2026-02-01T0000", DEFERRED_SLEEP)
    else:
        add(root, "users", "2026-02-01T0000", sql if ext == "sql" else python_revision(
            "users", "2026-02-01T0000", "users_202601010000", f"    op.execute({sql!r})"),
            ext=ext)
    migrate(database_url, root, **QUIET)
    rows = query(database_url, "SELECT duration_ms FROM svcmig.schema_migrations "
                               "WHERE revision = 'users_202602010000'")
    assert rows[0][0] >= 400


def migrated_base(tmp_path: Path, database_url: str, earlier: bool) -> tuple[Path, str]:
    """The base project migrated; with `earlier`, a SQL revision is pending before the one the
    test adds (so that one is not the first of its session). Returns the root and the id the
    test's revision follows."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    if not earlier:
        return root, "users_202601010000"
    add(root, "users", "2026-01-31T0000", "CREATE TABLE users.early (id int);")
    return root, "users_202601310000"


@pytest.mark.parametrize("idle_ms", [2000, RunSettings().idle_timeout_ms])
@pytest.mark.parametrize("ext", ["sql", "py"])
@pytest.mark.parametrize("earlier", [False, True], ids=["first-of-its-session", "after-another"])
def test_a_revision_does_not_commit_once_the_migrator_lost_its_lock(
        tmp_path: Path, database_url: str, ext: str, idle_ms: int, earlier: bool) -> None:
    """The migrator's session (which holds the lock) ends while a revision runs, however
    short the run: another migrator could be running now, so the revision's COMMIT must not
    happen. Also when the revision session already checked the lock for an earlier revision
    (a check through the session's catalog cache saw the migrator's marker table still there:
    a breaker's finding)."""
    root, parent = migrated_base(tmp_path, database_url, earlier)
    sql = "CREATE TABLE users.late AS SELECT pg_sleep(1.5) IS NULL AS slept"
    add(root, "users", "2026-02-01T0000", sql if ext == "sql" else python_revision(
        "users", "2026-02-01T0000", parent, f"    op.execute({sql!r})"), ext=ext)

    def end_the_migrators_session() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ended = query(database_url, "SELECT pg_terminate_backend(l.pid) FROM pg_locks l "
                                        "JOIN pg_stat_activity a ON a.pid <> l.pid "
                                        "WHERE l.locktype = 'advisory' AND l.granted "
                                        "AND a.query LIKE %s AND a.state = 'active'",
                          ("%pg_sleep(1.5)%",))
            if ended:
                return
            time.sleep(0.05)

    killer = threading.Thread(target=end_the_migrators_session)
    killer.start()
    try:
        with pytest.raises(MigrationFailed, match="lost its lock"):
            migrate(database_url, root, settings=RunSettings(idle_timeout_ms=idle_ms), **QUIET)
    finally:
        killer.join()
    assert query(database_url, "SELECT to_regclass('users.late')") == [(None,)]
    assert "users_202602010000" not in ledger(database_url)
    assert lock_is_free(database_url)
    migrate(database_url, root, **QUIET)
    assert ledger(database_url)["users_202602010000"] == "applied"


@pytest.mark.parametrize("refused", ["SET ROLE postgres", "VACUUM users.users", "COMMIT"])
def test_a_python_revision_that_catches_a_refusal_still_fails(
        tmp_path: Path, database_url: str, refused: str) -> None:
    """A breaker's finding: a revision that caught the runner's refusal of a statement and
    went on was applied. The refusal stands: the revision fails and nothing of it stays."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000", python_revision(
        "users", "2026-02-01T0000", "users_202601010000",
        # built at run time: the preflight refuses a literal before anything runs
        f"    try:\n        op.execute(' '.join({refused.split()!r}))\n"
        "    except Exception:\n        pass\n"
        "    op.execute('CREATE TABLE users.after_refusal (id int)')"), ext="py")
    with pytest.raises(MigrationFailed, match="not allowed in a revision"):
        migrate(database_url, root, **QUIET)
    assert query(database_url, "SELECT to_regclass('users.after_refusal')") == [(None,)]
    assert "users_202602010000" not in ledger(database_url)


@pytest.mark.parametrize("second", [False, True], ids=["first-of-its-session", "after-another"])
def test_batch_alter_table_as_a_revisions_first_operation(
        tmp_path: Path, database_url: str, second: bool) -> None:
    """A breaker's finding: Alembic wraps DDL in a transaction of its own when SQLAlchemy has
    none open, and commits it; as a revision's first operation that commit was refused."""
    root, parent = migrated_base(tmp_path, database_url, second)
    add(root, "users", "2026-02-01T0000", python_revision(
        "users", "2026-02-01T0000", parent,
        "    with op.batch_alter_table('users') as batch:\n"
        "        batch.add_column(sa.Column('nickname', sa.Text()))"), ext="py")
    migrate(database_url, root, **QUIET)
    assert ledger(database_url)["users_202602010000"] == "applied"
    assert query(database_url, "SELECT count(*) FROM information_schema.columns WHERE "
                               "table_schema = 'users' AND column_name = 'nickname'") == [(1,)]


def test_a_deferred_trigger_cannot_rewrite_the_revisions_ledger_row(
        tmp_path: Path, database_url: str) -> None:
    """Deferred triggers run before the ledger row is written (SET CONSTRAINTS ALL
    IMMEDIATE), so one that writes the revision's row makes the runner's own row fail: the
    revision fails whole, nothing of it is left."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000", DEFERRED_SLEEP.replace(
        "PERFORM pg_sleep(0.4);",
        "DELETE FROM svcmig.schema_migrations WHERE revision = 'users_202602010000'; "
        "INSERT INTO svcmig.schema_migrations (revision, service, file, checksum, phase, "
        "state, duration_ms, applied_by) VALUES ('users_202602010000', 'users', 'forged', "
        "'forged', 'expand', 'applied', 424242, 'forger');"))
    with pytest.raises(MigrationFailed):
        migrate(database_url, root, **QUIET)
    assert "users_202602010000" not in ledger(database_url)
    assert query(database_url, "SELECT to_regclass('users.marker')") == [(None,)]
    assert lock_is_free(database_url)


@pytest.mark.parametrize("declare", [
    "DECLARE late CURSOR WITH HOLD FOR SELECT users.at_commit();",
    "DO $$ BEGIN EXECUTE 'DECLARE late CURSOR WITH HOLD FOR SELECT users.at_commit()'; END $$;"])
def test_a_held_cursor_runs_nothing_at_commit(tmp_path: Path, database_url: str,
                                               declare: str) -> None:
    """PostgreSQL runs a WITH HOLD cursor's query at COMMIT, after the ledger row and the
    runner's checks: the finish closes every cursor first."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000",
        "CREATE TABLE users.commit_log (n int);\n"
        "CREATE FUNCTION users.at_commit() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO users.commit_log VALUES (1); DELETE FROM svcmig.schema_migrations; "
        "RETURN 1; END $$;\n" + declare + "\n")
    migrate(database_url, root, **QUIET)
    assert ledger(database_url)["users_202602010000"] == "applied"
    assert query(database_url, "SELECT count(*) FROM users.commit_log") == [(0,)]


# Kind: a revision's own SQL reaching for the ledger however it likes (settings built at run
# time, dynamic SQL, work re-deferred to COMMIT, a guessed token, its own token read from its
# query text): it can write its own row only, once, the way the runner planned it. Postgres
# decides (row-level security over the digests of svcmig.revision_tokens).
def at_commit(body: str) -> str:
    """A revision whose deferred trigger, when it runs (in the runner's `SET CONSTRAINTS ALL
    IMMEDIATE`), defers again and queues a second trigger that runs `body` (plpgsql) at
    COMMIT, after the ledger row."""
    return ("CREATE TABLE users.ta (x int); CREATE TABLE users.tb (x int);\n"
            "CREATE FUNCTION users.t1() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "SET CONSTRAINTS ALL DEFERRED; INSERT INTO users.tb VALUES (1); RETURN NULL; "
            "END $$;\n"
            f"CREATE FUNCTION users.t2() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} "
            "END $$;\n"
            "CREATE CONSTRAINT TRIGGER c1 AFTER INSERT ON users.ta DEFERRABLE INITIALLY "
            "DEFERRED FOR EACH ROW EXECUTE FUNCTION users.t1();\n"
            "CREATE CONSTRAINT TRIGGER c2 AFTER INSERT ON users.tb DEFERRABLE INITIALLY "
            "DEFERRED FOR EACH ROW EXECUTE FUNCTION users.t2();\n"
            "INSERT INTO users.ta VALUES (1);\n")


INSERT_ROW = ("INSERT INTO svcmig.schema_migrations (revision, service, file, checksum, phase, "
              "state, applied_by) ")
OWN_TOKEN = ("DO $$ DECLARE t text := substring(current_query() FROM "
             "'revision_token = ''([0-9a-f]+)'''); BEGIN "
             "PERFORM set_config('svcmig.' || 'revision_token', t, true); ")
LEDGER_REACHES = {
    "delete-earlier-rows": (
        "DO $$ DECLARE r record; BEGIN FOR r IN SELECT revision FROM svcmig.schema_migrations "
        "LOOP PERFORM set_config(lower('SVCMIG.REVISION_TOKEN'), r.revision, true); "
        "DELETE FROM svcmig.schema_migrations WHERE revision = r.revision; END LOOP; END $$;"),
    "claim-another-revision-with-a-guessed-token": (
        "DO $$ BEGIN PERFORM set_config('svcmig.' || 'revision_token', "
        "md5(random()::text), true); EXECUTE format('" + INSERT_ROW.replace("'", "''")
        + "VALUES (%L, ''users'', ''x'', ''x'', ''expand'', ''applied'', ''x'')', "
        "'users_209901010000'); END $$;"),
    "claim-another-revision-with-its-own-token": (
        OWN_TOKEN + "EXECUTE format('" + INSERT_ROW.replace("'", "''")
        + "SELECT %L, service, file, checksum, phase, state, applied_by "
        "FROM svcmig.schema_migrations LIMIT 1', 'users_209901010000'); END $$;"),
    # its planned checksum, like its token, is in its own query text (the runner's ledger row)
    "write-its-own-row-early-with-its-own-token": (
        OWN_TOKEN + "EXECUTE format('" + INSERT_ROW.replace("'", "''")
        + "VALUES (%L, ''users'', ''x'', %L, ''expand'', ''applied'', ''x'')', "
        "'users_202602010000', substring(current_query() FROM "
        "'''users_202602010000'', ''users'', ''[^'']*'', ''([0-9a-f]+)''')); END $$;"),
    "delete-own-row-at-commit": at_commit(
        "DELETE FROM svcmig.schema_migrations WHERE revision = 'users_202602010000'; "
        "RETURN NULL;"),
}


@pytest.mark.parametrize("text", LEDGER_REACHES.values(), ids=LEDGER_REACHES.keys())
def test_a_revision_writes_only_its_own_ledger_row(tmp_path: Path, database_url: str,
                                                    text: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    before = ledger(database_url)
    add(root, "users", "2026-02-01T0000", text)
    try:
        migrate(database_url, root, **QUIET)
    except MigrationFailed:  # refused by Postgres: then nothing of it is left
        assert ledger(database_url) == before
        return
    assert ledger(database_url) == {**before, "users_202602010000": "applied"}
    assert all(s.pending == () for s in read_plan(database_url, root).services)


# Kind: a non-transactional revision going down that fails: dirty when some of its down
# statements completed (the schema is half reverted), still applied when none did.
@pytest.mark.parametrize(("down", "state"), [
    ("DROP INDEX CONCURRENTLY users.users_a_idx;\nDROP INDEX CONCURRENTLY users.users_typo;",
     "dirty"),
    ("DROP INDEX CONCURRENTLY users.users_typo;\nDROP INDEX CONCURRENTLY users.users_a_idx;",
     "applied")])
def test_a_failed_no_transaction_downgrade_says_how_far_it_got(
        tmp_path: Path, database_url: str, down: str, state: str) -> None:
    root = base_project(tmp_path)
    add(root, "users", "2026-02-01T0000",
        "-- migrate:no-transaction\n-- migrate:up\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_a_idx ON users.users (id);\n"
        f"-- migrate:down\n{down}\n")
    migrate(database_url, root, **QUIET)
    done = run_alembic(root, "downgrade", "users@-1", database_url=database_url)
    assert done.returncode != 0
    assert ledger(database_url)["users_202602010000"] == state
    index_left = query(database_url, "SELECT to_regclass('users.users_a_idx')")
    assert index_left == ([(None,)] if state == "dirty" else [("users.users_a_idx",)])
    assert lock_is_free(database_url)


# Kind: one revision of a run writing or deleting the row of another revision the same run is
# about to apply or revert (the only rows whose tokens exist), with a guessed token or its own:
# refused, so no revision is ever recorded without having run.
CLAIM_NEXT = {
    "guessed-token": "md5(random()::text)",
    "own-token": "substring(current_query() FROM 'revision_token = ''([0-9a-f]+)''')",
}


@pytest.mark.parametrize("token", CLAIM_NEXT.values(), ids=CLAIM_NEXT.keys())
def test_a_revision_cannot_record_the_next_revision_of_its_run(
        tmp_path: Path, database_url: str, token: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    before = ledger(database_url)
    following = "CREATE TABLE users.second (id int);\n"  # its checksum given away, too
    add(root, "users", "2026-02-01T0000",
        f"DO $$ BEGIN PERFORM set_config('svcmig.revision_token', {token}, true); END $$;\n"
        "INSERT INTO svcmig.schema_migrations (revision, service, file, checksum, phase, state, "
        f"applied_by) VALUES ('users_202602020000', 'users', 'x', '{checksum(following)}', "
        "'expand', 'applied', 'x');\n")
    (root / "services" / "users" / "migrations" / "2026-02-02T0000__users__next.sql").write_text(
        following)
    with pytest.raises(MigrationFailed, match="row-level security"):
        migrate(database_url, root, **QUIET)
    assert ledger(database_url) == before


@pytest.mark.parametrize("token", CLAIM_NEXT.values(), ids=CLAIM_NEXT.keys())
def test_a_revision_going_down_cannot_delete_the_next_row_of_its_run(
        tmp_path: Path, database_url: str, token: str) -> None:
    root = base_project(tmp_path)
    add(root, "users", "2026-02-01T0000",
        "-- migrate:up\nCREATE TABLE users.first (id int);\n"
        "-- migrate:down\nDROP TABLE users.first;\n")
    (root / "services" / "users" / "migrations" / "2026-02-02T0000__users__next.sql").write_text(
        "-- migrate:up\nCREATE TABLE users.second (id int);\n-- migrate:down\n"
        f"DO $$ BEGIN PERFORM set_config('svcmig.revision_token', {token}, true); END $$;\n"
        "DELETE FROM svcmig.schema_migrations WHERE revision = 'users_202602010000';\n"
        "DROP TABLE users.second;\n")
    migrate(database_url, root, **QUIET)
    done = run_alembic(root, "downgrade", "users@-2", database_url=database_url)
    assert done.returncode == 0, done.stderr
    rows = ledger(database_url)
    assert "users_202602010000" not in rows and "users_202602020000" not in rows
    # each went down in its own transaction, with its own row: the first one's DELETE found
    # nothing to delete, so its own down ran and deleted its row itself
    assert query(database_url, "SELECT to_regclass('users.first')") == [(None,)]


def test_a_token_opens_a_row_only_in_the_session_it_was_issued_to(
        tmp_path: Path, database_url: str) -> None:
    """Another login as the same owner sees a waiting batch, token included, in
    pg_stat_activity: presenting it from that session opens nothing (the digest is bound to
    the runner's session's backend pid)."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    revision = build_graph(root).revisions["users_202601010000"]
    token = "ab" * 16
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("ALTER ROLE users_owner LOGIN")
        try:
            owner = psycopg.connect(psycopg.conninfo.make_conninfo(database_url,
                                                                   user="users_owner"))
            with owner:
                pid = owner.info.backend_pid
                deleted = []
                for bound_to in (pid + 1, pid):  # another session's token, then this one's
                    admin.execute(issue_tokens_sql(
                        "users", {token: (revision, False)}, bound_to))
                    owner.execute(f"SET LOCAL svcmig.revision_token = '{token}'")
                    deleted.append(owner.execute("DELETE FROM svcmig.schema_migrations WHERE "
                                                 "revision = 'users_202601010000'").rowcount)
                    owner.rollback()
        finally:
            admin.execute("ALTER ROLE users_owner NOLOGIN")
    assert deleted == [0, 1]


def test_a_run_leaves_no_token_digests_behind(tmp_path: Path, database_url: str) -> None:
    """Digests bound to a session's pid go with the run, failed or not: no later session that
    happens to get that pid can present a token (a failing revision could have kept its own)."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000", "CREATE TABLE users.ok (id int);\n")
    (root / "services/users/migrations/2026-02-02T0000__users__bad.sql").write_text(
        "CREATE TABLE users.nope (id int REFERENCES users.missing);\n")
    with pytest.raises(MigrationFailed):
        migrate(database_url, root, **QUIET)
    assert query(database_url, "SELECT length(lo_get('users_owner'::regrole::oid))") == [(0,)]


# Kind: reaching the digests themselves instead of a token. The ledger's policies look for the
# presented token's digest in the service's token object (a large object): the owner may read
# it, never write it, and an object that is not the migrator's is replaced before anything runs.
def forge_digest(lookup: str) -> str:
    """A revision that adds the digest of a token of its own choosing for another revision
    (`users_209901010000`) to the object `lookup` (SQL) finds, after the digests there,
    presents that token and writes the row."""
    return (
        "DO $$ DECLARE o oid := (" + lookup + "); "
        "d bytea := sha256(convert_to('0123456789abcdef0123456789abcdef/' || pg_backend_pid() "
        "|| '/up/users_209901010000/users/x', 'UTF8')); BEGIN "
        "PERFORM lo_put(o, length(lo_get(o)), d); "
        "PERFORM set_config('svcmig.revision_token', '0123456789abcdef0123456789abcdef', true); "
        + INSERT_ROW + "VALUES ('users_209901010000', 'users', 'x', 'x', 'expand', "
        "'applied', 'x'); END $$;\n")


USERS_OBJECT = "'users_owner'::regrole::oid"  # a token object has its owner role's oid


def test_a_revision_cannot_write_its_services_token_digests(
        tmp_path: Path, database_url: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    before = ledger(database_url)
    add(root, "users", "2026-02-01T0000", forge_digest(USERS_OBJECT))
    with pytest.raises(MigrationFailed, match="permission denied for large object"):
        migrate(database_url, root, **QUIET)
    assert ledger(database_url) == before
    assert lock_is_free(database_url)


@pytest.mark.parametrize("takeover", [
    "ALTER LARGE OBJECT {oid} OWNER TO users_owner",
    "GRANT UPDATE ON LARGE OBJECT {oid} TO users_owner",
    "SELECT lo_unlink({oid})"], ids=["given-to-the-owner", "owner-may-write", "unlinked"])
def test_a_token_object_that_is_not_the_migrators_alone_is_made_again(
        tmp_path: Path, database_url: str, takeover: str) -> None:
    """Someone with the rights to (an administrator) hands the service's token object to its
    owner, lets the owner write it, or drops it: the next run makes it again, the migrator's
    alone, before any revision runs, so the owner cannot add a digest to it."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    [(oid,)] = query(database_url, f"SELECT {USERS_OBJECT}")
    query(database_url, takeover.format(oid=oid))
    add(root, "users", "2026-02-01T0000", forge_digest(USERS_OBJECT))
    with pytest.raises(MigrationFailed, match="permission denied for large object"):
        migrate(database_url, root, **QUIET)
    assert "users_209901010000" not in ledger(database_url)
    (root / "services/users/migrations/2026-02-01T0000__users__step.sql").unlink()
    add(root, "users", "2026-02-02T0000", "CREATE TABLE users.later (id int);\n")
    migrate(database_url, root, **QUIET)
    assert query(database_url, "SELECT pg_get_userbyid(lomowner) = current_user, lomacl::text "
                 f"FROM pg_largeobject_metadata WHERE oid = {oid}") == [
        (True, "{postgres=rw/postgres,users_owner=r/postgres}")]
    assert ledger(database_url)["users_202602020000"] == "applied"


def test_lo_compat_privileges_on_refuses_the_run(tmp_path: Path, database_url: str) -> None:
    """With `lo_compat_privileges` on, any role may write any large object, the token objects
    included: the run refuses to apply anything and says what to change."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    before = ledger(database_url)
    add(root, "users", "2026-02-01T0000", "CREATE TABLE users.later (id int);\n")
    database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    query(database_url, f'ALTER DATABASE "{database}" SET lo_compat_privileges = on')
    try:
        with pytest.raises(MigrationFailed, match="lo_compat_privileges is on"):
            migrate(database_url, root, **QUIET)
    finally:
        query(database_url, f'ALTER DATABASE "{database}" RESET lo_compat_privileges')
    assert ledger(database_url) == before
    assert lock_is_free(database_url)


def test_a_role_that_may_set_lo_compat_privileges_is_refused(
        tmp_path: Path, database_url: str) -> None:
    """PostgreSQL 15 and later can grant an ordinary role SET on a superuser-only parameter:
    an owner that may turn lo_compat_privileges on could write its token object, so its
    session is refused (a service of this test's own: parameter grants are cluster-wide)."""
    root = write_project(tmp_path / "p", {"lcpgrant": {
        "2026-01-01T0000__lcpgrant__create.sql": "CREATE TABLE lcpgrant.t (id int);\n"}})
    query(database_url, "DO $$ BEGIN CREATE ROLE lcpgrant_owner NOLOGIN; "
          "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    query(database_url, "GRANT SET ON PARAMETER lo_compat_privileges TO lcpgrant_owner")
    try:
        with pytest.raises(MigrationFailed, match="lcpgrant_owner may turn lo_compat_privileges"):
            migrate(database_url, root, **QUIET)
    finally:
        query(database_url, "REVOKE SET ON PARAMETER lo_compat_privileges FROM lcpgrant_owner")
    assert ledger(database_url) == {}
    assert lock_is_free(database_url)


def test_another_large_object_where_a_token_object_goes_stops_the_run_untouched(
        tmp_path: Path, database_url: str) -> None:
    """A large object that is not a token object at the oid of a service's owner role (put
    there by hand: the server never reuses an oid it gave a role): the run stops before any
    revision runs, names it, and leaves its data alone."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    before = ledger(database_url)
    oid = query(database_url, f"SELECT lo_unlink({USERS_OBJECT}), {USERS_OBJECT}")[0][1]
    query(database_url, f"SELECT lo_from_bytea({oid}, 'precious')")
    add(root, "users", "2026-02-01T0000", "CREATE TABLE users.later (id int);\n")
    with pytest.raises(SvcmigError, match=f"large object {oid} is in the way of the token "
                       "object of users_owner"):
        migrate(database_url, root, **QUIET)
    assert query(database_url, f"SELECT convert_from(lo_get({oid}), 'UTF8')") == [("precious",)]
    assert ledger(database_url) == before
    assert lock_is_free(database_url)


def test_a_policy_svcmig_did_not_make_on_the_ledger_stops_the_run(
        tmp_path: Path, database_url: str) -> None:
    """A permissive policy added by hand (a DBA's quick fix) would let any revision of the
    service write any ledger row: the run refuses before anything runs and names it."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    before = ledger(database_url)
    query(database_url, "CREATE POLICY dba_fix ON svcmig.schema_migrations FOR INSERT "
          "TO users_owner WITH CHECK (true)")
    add(root, "users", "2026-02-01T0000", "CREATE TABLE users.later (id int);\n")
    with pytest.raises(SvcmigError, match=r"policies svcmig did not make \(dba_fix\)"):
        migrate(database_url, root, **QUIET)
    assert ledger(database_url) == before
    assert lock_is_free(database_url)


def test_a_database_of_the_earlier_layout_loses_its_token_table_and_policies(
        tmp_path: Path, database_url: str) -> None:
    """Before 2026-12 the digests were rows of svcmig.revision_tokens, looked up by two
    policies: the next run drops both (a left-over permissive policy would open the ledger),
    and the services get their token objects."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    query(database_url, "CREATE TABLE svcmig.revision_tokens (digest bytea PRIMARY KEY)")
    query(database_url, "CREATE POLICY revision_token_insert ON svcmig.schema_migrations "
          "FOR INSERT WITH CHECK (true)")
    add(root, "users", "2026-02-01T0000", "CREATE TABLE users.later (id int);\n")
    migrate(database_url, root, **QUIET)
    assert query(database_url, "SELECT to_regclass('svcmig.revision_tokens')") == [(None,)]
    policies = {name for (name,) in query(
        database_url, "SELECT polname FROM pg_policy "
        "WHERE polrelid = 'svcmig.schema_migrations'::regclass")}
    assert "revision_token_insert" not in policies
    assert policies == {"revision_token_read", "revision_token_up", "revision_token_down"}
    assert ledger(database_url)["users_202602010000"] == "applied"


def test_an_owner_row_held_by_another_session_does_not_hold_the_migrator(
        tmp_path: Path, database_url: str) -> None:
    """A session holding the owner role's row (an uncommitted ALTER ROLE) while the run ends:
    putting the owner back to NOLOGIN gives up after a bounded wait, with a warning, and the
    run (and its lock) ends."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000",
        "CREATE TABLE users.slow AS SELECT pg_sleep(1.5)::text AS x;\n")
    lines: list[dict[str, object]] = []
    blocker = psycopg.connect(database_url)

    def hold_the_role() -> None:
        time.sleep(0.7)  # the run has logged users_owner in by now
        blocker.execute("ALTER ROLE users_owner CONNECTION LIMIT 7")

    holder = threading.Thread(target=hold_the_role)
    holder.start()
    started = time.monotonic()
    try:
        migrate(database_url, root, log=lines.append)
    finally:
        holder.join()
        blocker.rollback()
        blocker.close()
    assert time.monotonic() - started < 30
    assert any(line.get("kind") == "owner_login" for line in lines)
    assert lock_is_free(database_url)


FORGE_IN_OWN_TRANSACTIONS = (
    "-- migrate:no-transaction\n"
    "BEGIN;\n"
    "DO $$ BEGIN PERFORM set_config('svcmig.revision_token', "
    "'0123456789abcdef0123456789abcdef', true); END $$;\n"
    "DELETE FROM svcmig.schema_migrations WHERE revision = 'users_202601010000';\n"
    "COMMIT;\n")


@pytest.mark.parametrize("text", [
    FORGE_IN_OWN_TRANSACTIONS,
    FORGE_IN_OWN_TRANSACTIONS.replace(
        "'0123456789abcdef0123456789abcdef'",
        "encode(substring(lo_get('users_owner'::regrole::oid) FROM 1 FOR 32), 'hex')")],
    ids=["guess-a-token", "present-a-digest"])
def test_a_no_transaction_revision_cannot_name_a_revision_for_its_own_transactions(
        tmp_path: Path, database_url: str, text: str) -> None:
    """Outside the runner's transactions (its own BEGIN … COMMIT), a revision cannot present a
    revision's token: the database keeps only digests of the tokens the migrator issued, so a
    guess or a digest opens no row (the DELETE finds nothing). A transactional revision after
    it in the same run has its digest in the service's token object by then."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    before = ledger(database_url)
    add(root, "users", "2026-02-01T0000", text)
    (root / "services" / "users" / "migrations" / "2026-02-02T0000__users__next.sql").write_text(
        "CREATE TABLE users.second (id int);\n")
    migrate(database_url, root, **QUIET)
    assert ledger(database_url) == {**before, "users_202602010000": "applied",
                                    "users_202602020000": "applied"}


def test_a_token_kept_by_one_revision_opens_nothing_for_the_next(
        tmp_path: Path, database_url: str) -> None:
    """A revision can read its own token from its query text and keep it in a table; the next
    revision (same run, same session) presenting it can neither delete that row (the token is
    for going up) nor write another (the token names one revision)."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000",
        "CREATE TABLE users.kept AS SELECT substring(current_query() FROM "
        "'revision_token = ''([0-9a-f]+)''') AS token;\n")
    (root / "services" / "users" / "migrations" / "2026-02-02T0000__users__next.sql").write_text(
        "DO $$ BEGIN PERFORM set_config('svcmig.' || 'revision_token', "
        "(SELECT token FROM users.kept), true); "
        "DELETE FROM svcmig.schema_migrations WHERE revision = 'users_202602010000'; "
        "BEGIN INSERT INTO svcmig.schema_migrations (revision, service, file, checksum, phase, "
        "state, applied_by) SELECT 'users_209901010000', service, file, checksum, phase, state, "
        "applied_by FROM svcmig.schema_migrations WHERE revision = 'users_202602010000'; "
        "EXCEPTION WHEN insufficient_privilege THEN NULL; END; END $$;\n")
    migrate(database_url, root, **QUIET)
    assert query(database_url, "SELECT length(token) FROM users.kept") == [(32,)]
    rows = ledger(database_url)
    assert rows["users_202602010000"] == rows["users_202602020000"] == "applied"
    assert "users_209901010000" not in rows


def test_an_escaped_python_revision_is_dirty_whatever_it_wrote(
        tmp_path: Path, database_url: str) -> None:
    """It ends the runner's transaction and writes its own ledger row in another, with its
    own token: the runner sees its transaction was not the one it began, and marks the
    revision dirty (its first table is committed)."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    raw = "    raw = op.get_bind().connection.driver_connection.pgconn\n"
    # the strongest case: it finds its token in the runner's memory (a Python revision runs in
    # the migrator's process), and its planned checksum
    steal = ("    import gc\n    from migrations_runtime.engine.apply import Runner\n"
             "    runner = next(o for o in gc.get_objects() if isinstance(o, Runner))\n"
             "    token = runner._tokens[('users_202602010000', True)]\n"
             "    planned = runner._planned['users'][('users_202602010000', True)].checksum\n")
    steps = ["CREATE TABLE users.half_done (id int)", "COMMIT", "BEGIN",
             "SET LOCAL svcmig.revision_token = '{token}'",
             "INSERT INTO svcmig.schema_migrations (revision, service, file, checksum, phase, "
             "state, applied_by) VALUES ('users_202602010000', 'users', 'x', '{planned}', "
             "'expand', 'applied', 'x')", "COMMIT", "BEGIN"]
    body = raw + steal + "".join(f"    raw.exec_(f{step!r}.encode())\n" for step in steps)
    add(root, "users", "2026-02-01T0000", python_revision(
        "users", "2026-02-01T0000", "users_202601010000", body), ext="py")
    with pytest.raises(MigrationFailed, match="marked dirty"):
        migrate(database_url, root, **QUIET)
    assert ledger(database_url)["users_202602010000"] == "dirty"
    assert query(database_url, "SELECT to_regclass('users.half_done')") == [("users.half_done",)]


def test_an_error_at_commit_fails_the_revision_without_marking_it_dirty(
        tmp_path: Path, database_url: str) -> None:
    """A trigger re-deferred to COMMIT fails there: the transaction (work and ledger row) is
    rolled back together; nothing was committed, so the revision is simply not applied."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000",
        at_commit("RAISE EXCEPTION 'late' USING ERRCODE = '42501';"))
    with pytest.raises(MigrationFailed) as caught:
        migrate(database_url, root, **QUIET)
    assert "dirty" not in str(caught.value)
    assert "users_202602010000" not in ledger(database_url)
    assert query(database_url, "SELECT to_regclass('users.ta')") == [(None,)]


def test_a_no_transaction_do_block_that_committed_stays_dirty(
        tmp_path: Path, database_url: str) -> None:
    """Outside a transaction a DO block (or a procedure) may COMMIT part of its work before it
    fails: the runner cannot say nothing was left behind."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000",
        "-- migrate:no-transaction\n"
        "DO $$ BEGIN CREATE TABLE users.half (id int); COMMIT; RAISE EXCEPTION 'boom'; END $$;\n")
    with pytest.raises(MigrationFailed, match="the revision is dirty"):
        migrate(database_url, root, **QUIET)
    assert ledger(database_url)["users_202602010000"] == "dirty"
    assert query(database_url, "SELECT to_regclass('users.half')") == [("users.half",)]


@pytest.mark.parametrize("body", ["    print('hello from the revision')",
                                  "    import sys\n    sys.stdout.write('{not json')"])
def test_a_revision_printing_does_not_break_migrate_json(tmp_path: Path, database_url: str,
                                                         body: str) -> None:
    root = base_project(tmp_path)
    add(root, "users", "2026-02-01T0000", python_revision(
        "users", "2026-02-01T0000", "users_202601010000", body), ext="py")
    done = run_cli(root, "migrate", "--json", database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "applied"
    assert "hello from the revision" in done.stderr or "{not json" in done.stderr


@pytest.mark.parametrize("call", ["sys.exit(3)", "sys.exit()", "raise SystemExit('bye')"])
def test_sys_exit_in_a_revision_fails_the_revision_not_the_run(
        tmp_path: Path, database_url: str, call: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000", python_revision(
        "users", "2026-02-01T0000", "users_202601010000",
        f"    import sys\n    op.create_table('first', sa.Column('id', sa.Integer))\n    {call}"),
        ext="py")
    with pytest.raises(MigrationFailed, match=r"sys\.exit"):
        migrate(database_url, root, **QUIET)
    assert query(database_url, "SELECT to_regclass('users.first')") == [(None,)]
    assert "users_202602010000" not in ledger(database_url)
    assert lock_is_free(database_url)


def interrupted_migrate(root: Path, url: str, signal_number: int, running: str,
                        *params: object, args: tuple[str, ...] = ()) -> tuple[str, str]:
    """`svcmig migrate --json` in its own process, sent `signal_number` once a session of
    the database matches `running` (SQL over pg_stat_activity); its stdout and stderr, after
    it exited with 130."""
    env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(root), "DATABASE_URL": url}
    run = subprocess.Popen([sys.executable, "-m", "migrations_runtime.cli", "migrate", "--json",
                            *args],
                           cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        deadline = time.monotonic() + 60
        while not query(url, "SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                             f"AND {running}", params):
            assert time.monotonic() < deadline and run.poll() is None, run.communicate()
            time.sleep(0.1)
        run.send_signal(signal_number)
        stdout, stderr = run.communicate(timeout=30)
    finally:
        run.kill()
    assert run.returncode == 130, stderr
    return stdout, stderr


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_an_interrupted_migrate_reports_and_releases(tmp_path: Path, database_url: str,
                                                     signal_number: int) -> None:
    root = base_project(tmp_path)
    add(root, "users", "2026-02-01T0000", "CREATE TABLE t (id int);\nSELECT pg_sleep(60);\n")
    stdout, stderr = interrupted_migrate(root, database_url, signal_number,
                                         "query LIKE '%%pg_sleep(60)%%'")
    result = json.loads(stdout)
    assert result["outcome"] == "interrupted"
    # orders, on the other lane, may have been applied meanwhile: what is reported is what is
    # in the ledger
    reported = [r["revision"] for r in result["applied"]]
    assert reported[0] == "users_202601010000"
    assert set(reported) == {rev for rev, state in ledger(database_url).items()
                             if state == "applied"}
    assert "Traceback" not in stderr
    assert f"interrupted during users_202602010000 after {len(reported)} revision(s)" in stderr
    assert "users_202602010000" not in ledger(database_url)
    assert query(database_url, "SELECT to_regclass('users.t')") == [(None,)]
    assert lock_is_free(database_url)


# Kind: the preflight's checks on every road to the database, not only `svcmig migrate`.
def test_stock_alembic_upgrade_checks_every_revision_before_the_first_runs(
        tmp_path: Path, database_url: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000", "CREATE TABLE first (id int);\n")
    path = add(root, "users", "2026-02-02T0000", "SET lock_timeout = 0;\n")
    done = run_alembic(root, "upgrade", "heads", database_url=database_url)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"{path}:1" in output and "Traceback" not in output, output
    assert query(database_url, "SELECT to_regclass('users.first')") == [(None,)]


@pytest.mark.parametrize("statement", ["SET ROLE postgres;", "COMMIT;", "COPY t FROM STDIN;"])
def test_offline_scripts_are_checked_like_runs(tmp_path: Path, statement: str) -> None:
    root = base_project(tmp_path)
    path = add(root, "users", "2026-02-01T0000", f"CREATE TABLE t (id int);\n{statement}\n")
    alembic = run_alembic(root, "upgrade", "heads", "--sql")
    assert alembic.returncode != 0 and f"{path}:2" in alembic.stdout + alembic.stderr, alembic
    for args in (["plan", "--offline", "--sql"], ["plan", "--from", "orders"]):
        plan = run_cli(root, *args)
        assert plan.returncode == 1 and f"{path}:2" in plan.stdout + plan.stderr, plan


# Kind: text a reader sees as a directive or marker, however it is encoded or spelt.
@pytest.mark.parametrize("header", [
    "-- phase:\u00a0contract\n",          # a no-break space
    "-- pha\u00adse: contract\n",         # a soft hyphen inside the key
    "-- phase\uff1a contract\n",          # a fullwidth colon
    "\u2060-- phase: contract\n",         # a word joiner first
    "-- phase: contract\u200d\n",         # a zero-width joiner last
])
def test_a_contract_directive_hidden_by_unicode_is_seen(header: str) -> None:
    source = parse_sql_source(f"{header}ALTER TABLE users DROP COLUMN email;\n", Path("x.sql"))
    assert source.phase == "contract"


@pytest.mark.parametrize("text", [
    "-- migrate down\nSELECT 1;\n",
    "SELECT 1;\n-- migrate down\nSELECT 2;\n",
    "-- phase contract\nSELECT 1;\n",
    "-- Depends on users_202601010000\nSELECT 1;\n",
    "-- migrate no-transaction\nSELECT 1;\n",
])
def test_a_marker_or_directive_without_its_colon_is_refused(text: str) -> None:
    with pytest.raises(MigrationFileError, match="without its colon"):
        parse_sql_source(text, Path("x.sql"))


@pytest.mark.parametrize("text", ["-- phase contract work is tracked in PAY-12\nSELECT 1;\n",
                                  "-- we migrate down the road\nSELECT 1;\n"])
def test_prose_that_starts_like_a_directive_is_a_comment(text: str) -> None:
    assert parse_sql_source(text, Path("x.sql")).phase == "expand"


def test_a_nul_character_is_refused_naming_the_line() -> None:
    with pytest.raises(MigrationFileError, match="NUL character") as caught:
        parse_sql_source("CREATE TABLE t (id int);\nSELECT 1;\x00DROP TABLE t;\n", Path("x.sql"))
    assert caught.value.line == 2


def test_whitespace_inside_a_string_literal_runs_as_written(tmp_path: Path,
                                                           database_url: str) -> None:
    """The checksum ignores trailing whitespace and line ends; what runs keeps them."""
    root = base_project(tmp_path)
    add(root, "users", "2026-02-01T0000",
        "INSERT INTO users (email) VALUES ('two spaces then a CRLF  \r\nend');\r\n")
    migrate(database_url, root, **QUIET)
    assert query(database_url, "SELECT email FROM users.users WHERE email LIKE 'two%%'") == [
        ("two spaces then a CRLF  \r\nend",)]


# --- the second breaker round -------------------------------------------------------------------

# Kind: a statement that changes how PostgreSQL reads the statements after it, so that what was
# checked is not what runs (`SELECT 'x\''; COMMIT; BEGIN; --'` is one string literal with
# standard_conforming_strings on, and a COMMIT with it off).
LEXING_TRICKS = {
    "do-block": "DO $$ BEGIN SET standard_conforming_strings = off; END $$;\n",
    "function": ("CREATE FUNCTION relax() RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
                 "PERFORM pg_catalog.set_config('standard_conforming_strings', 'off', false); "
                 "END $$;\nSELECT relax();\n"),
    "client-encoding": "DO $$ BEGIN SET client_encoding = 'SJIS'; END $$;\n",
}


@pytest.mark.parametrize("header", ["", "-- migrate:no-transaction\n"],
                         ids=["transactional", "no-transaction"])
@pytest.mark.parametrize("trick", LEXING_TRICKS.values(), ids=LEXING_TRICKS.keys())
def test_a_revision_cannot_change_how_its_later_statements_are_read(
        tmp_path: Path, database_url: str, trick: str, header: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    path = add(root, "users", "2026-02-01T0000",
               f"{header}CREATE TABLE half (id int);\n{trick}"
               "SELECT 'x\\''; COMMIT; BEGIN; --';\nSELECT 1/0;\n")
    with pytest.raises(MigrationFailed, match="no longer") as caught:
        migrate(database_url, root, **QUIET)
    assert str(path) in str(caught.value)
    state = ledger(database_url).get("users_202602010000")
    if header:  # what ran before stays, and the ledger says so
        assert state == "dirty"
    else:
        assert state is None
        assert query(database_url, "SELECT to_regclass('users.half')") == [(None,)]
    assert lock_is_free(database_url)


@pytest.mark.parametrize("statement", [
    "SET standard_conforming_strings = off;", "SET client_encoding = 'SJIS';",
    "SET svcmig.revision = 'users_209912312359';",
    "SELECT set_config('svcmig.revision', 'x', true);",
    "SELECT set_config('svcmig.revision'::text, 'x', true);",
    "SELECT set_config('svcmig.' || 'revision', 'x', true);",
    "SELECT set_config(('lock_' || 'timeout')::varchar COLLATE \"C\", '0', true);",
    "-- migrate:no-transaction\nPREPARE TRANSACTION 'limbo';",
    "-- migrate:no-transaction\nCOMMIT PREPARED 'limbo';"])
def test_settings_the_checks_rely_on_are_refused_up_front(
        tmp_path: Path, database_url: str, statement: str) -> None:
    root = base_project(tmp_path)
    path = add(root, "users", "2026-02-01T0000", f"{statement}\n")
    with pytest.raises(PlanError) as caught:
        migrate(database_url, root, **QUIET)
    line = statement.count("\n") + 1
    assert f"{path}:{line}" in str(caught.value)
    assert "not allowed in a revision" in str(caught.value)


def psql_script(url: str, script: str) -> subprocess.CompletedProcess[str]:
    psql = shutil.which("psql")
    if psql is None:
        if os.environ.get("CI") == "true":
            pytest.fail("psql is not installed; CI must install postgresql-client")
        print("skipping: psql not found (apt-get install postgresql-client)")
        pytest.skip("psql not found")
    return subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url], input=script,
                          capture_output=True, text=True, timeout=120)


def test_the_offline_script_runs_in_psql_on_a_fresh_database(tmp_path: Path,
                                                             database_url: str) -> None:
    """The peer here is psql itself: `alembic upgrade heads --sql` piped into it applies every
    revision, as `svcmig migrate` would, with nothing an earlier revision set leaking into the
    next (a READ ONLY default would make it fail)."""
    root = base_project(tmp_path)
    add(root, "users", "2026-02-01T0000", "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY;\n")
    add(root, "orders", "2026-02-02T0000", "CREATE TABLE after_read_only (id int);\n")
    script = run_alembic(root, "upgrade", "heads", "--sql")
    assert script.returncode == 0, script.stdout + script.stderr
    done = psql_script(database_url, script.stdout)
    assert done.returncode == 0, done.stderr
    assert query(database_url, "SELECT to_regclass('orders.after_read_only')") == [
        ("orders.after_read_only",)]
    status = run_cli(root, "status", "--json", database_url=database_url)
    assert status.returncode == 0, status.stdout + status.stderr
    assert all(s["pending"] == [] for s in json.loads(status.stdout)["services"])
    # a state to continue from: nothing to do, then a new revision applies on top
    assert migrate(database_url, root, **QUIET).results == ()
    add(root, "orders", "2026-02-03T0000", "CREATE TABLE after_psql (id int);\n")
    assert [r.revision for r in migrate(database_url, root, **QUIET).results] == [
        "orders_202602030000"]
    assert query(database_url, "SELECT to_regclass('orders.after_psql')") == [
        ("orders.after_psql",)]


def test_the_offline_script_keeps_strings_as_they_were_checked(tmp_path: Path,
                                                               database_url: str) -> None:
    """A DO block turning standard_conforming_strings off would make psql read a backslash in
    the next literal as an escape, and a psql meta-command (`\\!` runs a shell) hidden in it
    would run: the script sets it back after every statement."""
    root = base_project(tmp_path)
    marker = tmp_path / "pwned"
    add(root, "users", "2026-02-01T0000",
        "DO $$ BEGIN SET standard_conforming_strings = off; END $$;\n"
        f"SELECT 'a\\''; \\! touch {marker} #';\n")
    script = run_alembic(root, "upgrade", "heads", "--sql")
    assert script.returncode == 0, script.stdout + script.stderr
    psql_script(database_url, script.stdout)
    assert not marker.exists()


def test_another_services_function_cannot_forge_this_services_ledger(
        tmp_path: Path, database_url: str) -> None:
    """users attaches a policy function to its table and lets orders read it; the function
    runs as orders' owner when orders' revision reads (PostgreSQL's rule for invoker
    functions), and tries to write an orders ledger row. The ledger's row-level security only
    accepts the row of the revision running in the transaction."""
    root = base_project(tmp_path)
    add(root, "users", "2026-02-01T0000", """
CREATE FUNCTION visible() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  BEGIN
    INSERT INTO svcmig.schema_migrations (revision, service, file, checksum, phase, state,
                                          applied_by)
    VALUES ('orders_209912312359', 'orders', 'x', 'x', 'expand', 'applied', 'x');
  EXCEPTION WHEN OTHERS THEN NULL;
  END;
  RETURN true;
END $$;
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone ON users USING (visible());
GRANT USAGE ON SCHEMA users TO orders_owner;
GRANT SELECT ON users TO orders_owner;
GRANT EXECUTE ON FUNCTION visible() TO orders_owner;
""")
    add(root, "orders", "2026-02-02T0000", "-- depends-on: users_202602010000\n"
        "CREATE TABLE user_ids AS SELECT id FROM users.users;\n")
    migrate(database_url, root, **QUIET)
    assert "orders_209912312359" not in ledger(database_url)
    assert ledger(database_url)["orders_202602020000"] == "applied"


def test_an_interrupted_concurrent_detach_is_dirty_then_finished(tmp_path: Path,
                                                                  database_url: str) -> None:
    root = base_project(tmp_path)
    add(root, "orders", "2026-02-01T0000",
        "CREATE TABLE ev (at date) PARTITION BY RANGE (at);\n"
        "CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');\n")
    migrate(database_url, root, **QUIET)
    add(root, "orders", "2026-02-02T0000", "-- migrate:no-transaction\n"
        "ALTER TABLE ev DETACH PARTITION ev_2025 CONCURRENTLY;\n")
    reader = psycopg.connect(database_url)
    reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT count(*) FROM orders.ev")  # a snapshot the detach must wait out
    try:
        with pytest.raises(MigrationFailed, match="dirty"):
            migrate(database_url, root, log=lambda _: None, settings=RunSettings(
                lock=LockPolicy(first_timeout_ms=100, max_timeout_ms=200, budget_seconds=1)))
    finally:
        reader.rollback()
        reader.close()
    assert ledger(database_url)["orders_202602020000"] == "dirty"
    repaired = run_cli(root, "repair", "orders_202602020000", "--rolled-back",
                       database_url=database_url)
    assert repaired.returncode == 0, repaired.stderr
    lines: list[dict[str, object]] = []
    migrate(database_url, root, log=lines.append)
    assert any(line["event"] == "detach_finalized" for line in lines)
    assert ledger(database_url)["orders_202602020000"] == "applied"
    assert query(database_url, "SELECT count(*) FROM pg_inherits WHERE inhrelid = "
                               "'orders.ev_2025'::regclass") == [(0,)]


def test_an_owner_login_left_by_a_crashed_run_expires(tmp_path: Path, database_url: str) -> None:
    """A revision may change its own role's password (PostgreSQL lets a role do that), and a
    killed migrator never puts the role back to NOLOGIN: the login is VALID UNTIL two minutes
    after the migrator granted it, which a role cannot change about itself."""
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000",
        "DO $$ BEGIN EXECUTE 'ALTER ROLE users_owner PASSWORD ''pwned'''; END $$;\n"
        "SELECT pg_sleep(60);\n")
    env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(root), "DATABASE_URL": database_url}
    victim = subprocess.Popen([sys.executable, "-m", "migrations_runtime.cli", "migrate"],
                              cwd=root, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not query(database_url, "SELECT 1 FROM pg_stat_activity WHERE query LIKE "
                                      "'%%pg_sleep(60)%%' AND pid <> pg_backend_pid()"):
            assert time.monotonic() < deadline and victim.poll() is None
            time.sleep(0.1)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        victim.kill()
    rows = query(database_url, "SELECT rolcanlogin, rolvaliduntil - now() FROM pg_roles "
                               "WHERE rolname = 'users_owner'")
    assert rows[0][0] is True  # the crash left it able to log in ...
    assert rows[0][1].total_seconds() <= 120  # ... but only for two minutes at most


def test_a_revision_cannot_hide_its_locks_from_the_runner(tmp_path: Path,
                                                          database_url: str) -> None:
    root = base_project(tmp_path)
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-01T0000",
        "CREATE VIEW pg_locks AS SELECT * FROM pg_catalog.pg_locks WHERE false;\n"
        "SET LOCAL search_path = users, pg_catalog;\n"
        "DO $$ BEGIN LOCK TABLE users.users IN ACCESS EXCLUSIVE MODE; PERFORM pg_sleep(1.2); "
        "END $$;\n")
    result = migrate(database_url, root, **QUIET)
    assert [w["kind"] for w in result.hold_warnings] == ["long_lock_hold"]


@pytest.mark.parametrize("body", [
    "    os.write(1, b'raw fd write\\n')",
    "    import subprocess\n    subprocess.run(['echo', 'from a child'], check=True)",
    "    import sys\n    sys.__stdout__.write('around print\\n')",
])
def test_nothing_a_revision_writes_reaches_migrate_json(tmp_path: Path, database_url: str,
                                                        body: str) -> None:
    root = base_project(tmp_path)
    add(root, "users", "2026-02-01T0000", python_revision(
        "users", "2026-02-01T0000", "users_202601010000", body), ext="py")
    done = run_cli(root, "migrate", "--json", database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "applied"


@pytest.mark.parametrize("raised", ["BaseException('odd')", "GeneratorExit()",
                                    "__import__('asyncio').CancelledError()"])
def test_a_base_exception_fails_the_revision_with_one_json_object(
        tmp_path: Path, database_url: str, raised: str) -> None:
    root = base_project(tmp_path)
    add(root, "users", "2026-02-01T0000", python_revision(
        "users", "2026-02-01T0000", "users_202601010000", f"    raise {raised}"), ext="py")
    done = run_cli(root, "migrate", "--json", database_url=database_url)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert json.loads(done.stdout)["outcome"] == "failed"
    assert lock_is_free(database_url)


# Kind: input a run cannot even start from; --json still prints one object, errors are a line.
def test_a_migrations_folder_entry_that_is_not_a_file_is_refused(tmp_path: Path,
                                                                 database_url: str) -> None:
    root = base_project(tmp_path)
    folder = root / "services/users/migrations"
    entries = [folder / f"2026-03-0{n}T0000__users__{slug}.sql"
               for n, slug in enumerate(["dir", "link", "fifo", "outside"], start=1)]
    entries[0].mkdir()
    entries[1].symlink_to(tmp_path / "missing.sql")
    os.mkfifo(entries[2])
    (tmp_path / "outside.sql").write_text("SELECT 1;\n")
    entries[3].symlink_to(tmp_path / "outside.sql")
    for entry in entries:
        done = run_cli(root, "migrate", "--json", database_url=database_url, timeout=30)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert json.loads(done.stdout)["outcome"] == "error"
        assert entry.name in done.stderr
        if entry.is_dir() and not entry.is_symlink():
            entry.rmdir()
        else:
            entry.unlink()


@pytest.mark.parametrize("url", ["not-a-url", "mysql://root@127.0.0.1/db",
                                 "postgresql://u@127.0.0.1:1/db?password=S3cretPw",
                                 "host=127.0.0.1 port=1 user=u password=S3cretPw"])
def test_a_bad_database_url_is_one_line_and_never_shows_its_password(
        tmp_path: Path, url: str) -> None:
    root = base_project(tmp_path)
    done = run_cli(root, "migrate", "--json", "--database-url", url)
    unparsable = url in ("not-a-url", "mysql://root@127.0.0.1/db")  # a usage error: exit 2
    assert done.returncode == (2 if unparsable else 1), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert json.loads(done.stdout)["outcome"] == "error"
    assert "S3cretPw" not in done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_project_root_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "status", env={"SVCMIG_PROJECT_ROOT": str(tmp_path / "typo")})
    assert done.returncode == 1 and "SVCMIG_PROJECT_ROOT" in done.stderr, done.stderr


def test_a_python_revision_declaring_another_encoding_is_refused(tmp_path: Path,
                                                                  database_url: str) -> None:
    root = base_project(tmp_path)
    path = add(root, "users", "2026-02-01T0000", "# -*- coding: utf-7 -*-\n" + python_revision(
        "users", "2026-02-01T0000", "users_202601010000", "    pass"), ext="py")
    done = run_cli(root, "migrate", database_url=database_url)
    assert done.returncode == 1 and f"{path}:1" in done.stderr and "utf-7" in done.stderr


@pytest.mark.parametrize("text", [
    "-- ph\u0430se: contract\nSELECT 1;\n",            # a Cyrillic a
    "SELECT 1;\n-- migr\u0430te:down\nSELECT 2;\n",
    "-- dep\u0435nds-on: users_202601010000\nSELECT 1;\n",  # a Cyrillic e
    "-- \u03c1hase: contract\nSELECT 1;\n",            # a Greek rho
])
def test_a_directive_spelt_with_look_alike_letters_is_refused(text: str) -> None:
    with pytest.raises(MigrationFileError, match="another script"):
        parse_sql_source(text, Path("x.sql"))


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085", "\f", "\v", "\r"])
def test_characters_shown_as_line_breaks_are_refused(separator: str) -> None:
    with pytest.raises(MigrationFileError, match="line break") as caught:
        parse_sql_source(f"SELECT 1;\n-- note{separator}-- migrate:down\nSELECT 2;\n",
                         Path("x.sql"))
    assert caught.value.line == 2


def test_two_phase_directives_are_refused() -> None:
    with pytest.raises(MigrationFileError, match="second '-- phase:'"):
        parse_sql_source("-- phase: contract\n-- phase: expand\nSELECT 1;\n", Path("x.sql"))


def test_default_privileges_on_large_objects_do_not_open_a_new_token_object(
        tmp_path: Path, database_url: str) -> None:
    """PostgreSQL 18 applies default privileges to new large objects: a database where every
    role gets UPDATE on the migrator's new large objects still gets token objects only the
    migrator may write, so a revision cannot add a digest in the very run that made them.
    Before 18 there are no such default privileges: the statement is refused."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        version = conn.info.server_version
    grant = "ALTER DEFAULT PRIVILEGES GRANT UPDATE ON LARGE OBJECTS TO PUBLIC"
    if version < 180000:
        with pytest.raises(psycopg.errors.SyntaxError):
            query(database_url, grant)
        return
    query(database_url, grant)
    root = base_project(tmp_path)
    add(root, "users", "2026-02-01T0000", forge_digest(USERS_OBJECT))
    with pytest.raises(MigrationFailed, match="permission denied for large object"):
        migrate(database_url, root, **QUIET)
    assert "users_209901010000" not in ledger(database_url)
    acl = query(database_url, f"SELECT lomacl::text FROM pg_largeobject_metadata "
                f"WHERE oid = {USERS_OBJECT}")
    assert acl == [("{postgres=rw/postgres,users_owner=r/postgres}",)]


@pytest.mark.parametrize("encoding", ["SQL_ASCII", "LATIN1"])
def test_an_errors_line_is_counted_as_the_server_counts_it(
        tmp_path: Path, server_url: str, encoding: str) -> None:
    """The kind: an error position in the server's own units. In a SQL_ASCII database the
    server counts it in bytes, so multibyte text before the error moved the line (a
    breaker's finding); a character a LATIN1 database lacks is refused before anything runs,
    with the transaction idle, and the line was lost."""
    name = f"svcmig_t_{uuid.uuid4().hex[:12]}"
    query(server_url, f"CREATE DATABASE {name} ENCODING '{encoding}' TEMPLATE template0 "
                      "LC_COLLATE 'C' LC_CTYPE 'C'")
    url = url_for(server_url, name)
    try:
        root = base_project(tmp_path)
        migrate(url, root, **QUIET)
        add(root, "users", "2026-02-01T0000",
            "-- the error is on line 4\nCREATE TABLE users.x AS SELECT\n"
            f"  '{'é' * 40}' AS a,\n  nosuch AS b,\n  1 AS c,\n  2 AS d,\n  3 AS e;\n"
            if encoding == "SQL_ASCII" else
            "-- the statement starts on line 2\nCREATE TABLE users.x AS SELECT\n"
            "  1 AS a,\n  'caf\u00e9 \U0001f600' AS b;\n")
        with pytest.raises(MigrationFailed) as failed:
            migrate(url, root, **QUIET)
        assert failed.value.line == (4 if encoding == "SQL_ASCII" else 2)
        assert "users_202602010000" not in ledger(url)
        assert lock_is_free(url)
    finally:
        query(server_url, f'DROP DATABASE "{name}" WITH (FORCE)')
