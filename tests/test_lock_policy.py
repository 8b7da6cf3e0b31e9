"""Traffic-safe deploys (issue 11), on a real Postgres and not timed: a revision waits for its
table locks in short attempts within a budget, never long enough to queue live queries for
more than the cap; it says who was in the way and what its locks cost; long or ill-placed
strong-lock holds are reported. Latency figures under load are benchmarks (bench_traffic.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from migrations_runtime.engine.apply import RunSettings, migrate
from migrations_runtime.engine.errors import MigrationFailed
from migrations_runtime.engine.lockwait import BlockerWatch, LockPolicy, split_qualified
from migrations_runtime.engine.report import RunResult
from migrations_runtime.engine.statements import quote_ident
from tests.conftest import query, run_cli, write_project

QUICK = LockPolicy(first_timeout_ms=100, max_timeout_ms=200, pause_ms=50, budget_seconds=20)


def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "p", {"shop": {
        "2026-01-01T0000__shop__items.sql":
            "CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text);"
            "\nINSERT INTO items (name) SELECT 'item ' || n FROM generate_series(1, 100) n;\n"
            "-- migrate:down\n-- irreversible: the root of a test project is never undone\n",
    }})


def add(root: Path, stamp: str, text: str) -> None:
    """A SQL revision, or a Python one when `text` is Python (it starts with `import`)."""
    ext = "py" if text.startswith("import") else "sql"
    (root / "services/shop/migrations" / f"{stamp}__shop__step.{ext}").write_text(text)


def python_revision(body: str) -> str:
    """The Python revision after the project's first one, with `body` as its upgrade."""
    return ("import sqlalchema as sa\nfrom alembic import op\n\n".replace("alchema", "alchemy")
            + "revision = 'shop_202601020000'\ndown_revision = 'shop_202601010000'\n\n\n"
            f"def upgrade():\n{body}\n")


def ledger(url: str) -> dict[str, str]:
    return dict(query(url, "SELECT revision, state FROM svcmig.schema_migrations"))


class Blocker:
    """A session holding a lock for a while, as a long read transaction would."""

    def __init__(self, url: str, statement: str, hold_seconds: float,
                 application_name: str = "long-report") -> None:
        self.conn = psycopg.connect(url, application_name=application_name)
        self.conn.execute(statement)
        self.pid = self.conn.info.backend_pid
        self.timer = threading.Timer(hold_seconds, self.release)
        self.timer.start()

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()

    def stop(self) -> None:
        self.timer.cancel()
        self.release()


def releasing_after(blocker: Blocker, attempts: int,
                    lines: list[dict[str, object]]) -> Callable[[dict[str, object]], None]:
    """A run's log that keeps every line and ends `blocker` once the run has logged `attempts`
    lock waits: what the test sees does not hang on how long the run takes to reach its first
    attempt (a busy CI machine took over 1.3 s, and a timed blocker was gone after one)."""
    def log(line: dict[str, object]) -> None:
        lines.append(line)
        if line["event"] == "lock_wait" and line["attempt"] == attempts:
            blocker.release()
    return log


def test_a_blocker_released_after_some_attempts_is_ridden_out_once(
        tmp_path: Path, database_url: str) -> None:
    root = project(tmp_path)
    migrate(database_url, root, log=lambda _: None)
    add(root, "2026-01-02T0000", "ALTER TABLE items ADD COLUMN price int;\n"
        "INSERT INTO items (name) VALUES ('added by the revision');\n")
    lines: list[dict[str, object]] = []
    blocker = Blocker(database_url, "SELECT count(*) FROM shop.items", hold_seconds=60)
    try:
        result = migrate(database_url, root, settings=RunSettings(lock=QUICK),
                         log=releasing_after(blocker, 4, lines))
    finally:
        blocker.stop()
    waits = [line for line in lines if line["event"] == "lock_wait"]
    assert len(waits) == 4  # the blocker ended after the fourth attempt gave up
    assert [line["attempt"] for line in waits] == list(range(1, len(waits) + 1))
    # what each attempt waited, measured: its timeout (100, 150, 200, 200 …) and a little more
    timeouts = [QUICK.timeout_ms(i) for i in range(len(waits))]
    assert all(t <= line["waited_ms"] < t + 250 for t, line in zip(timeouts, waits, strict=True))
    named = [b for line in waits for b in line["blockers"]]  # type: ignore[attr-defined]
    assert named and {b["pid"] for b in named} == {blocker.pid}
    assert {b["application_name"] for b in named} == {"long-report"}
    assert [r.revision for r in result.results] == ["shop_202601020000"]
    assert query(database_url, "SELECT count(*) FROM shop.items WHERE name = "
                               "'added by the revision'") == [(1,)]  # applied exactly once
    assert result.locks.attempts == len(waits)
    assert result.locks.waited_ms_total == sum(int(line["waited_ms"]) for line in waits)
    summary = [line for line in lines if line["event"] == "lock_summary"]
    assert summary and summary[0]["lock_timeouts"] == len(waits)


def test_a_blocker_longer_than_the_budget_fails_cleanly_naming_it(
        tmp_path: Path, database_url: str) -> None:
    root = project(tmp_path)
    migrate(database_url, root, log=lambda _: None)
    add(root, "2026-01-02T0000", "ALTER TABLE items ADD COLUMN price int;\n")
    blocker = Blocker(database_url, "SELECT count(*) FROM shop.items", hold_seconds=60,
                      application_name="nightly-export")
    try:
        done = run_cli(root, "migrate", "--json", "--lock-timeout-ms", "100",
                       "--lock-timeout-max-ms", "200", "--lock-budget", "2",
                       database_url=database_url)
    finally:
        blocker.stop()
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["outcome"] == "failed" and result["applied"] == []
    assert result["locks"]["lock_timeouts"] >= 3
    assert 200 <= result["locks"]["lock_wait_ms_max"] < 450  # the cap, measured
    error = result["failed"]["error"]
    assert "2 s lock budget" in error
    assert f"pid {blocker.pid} (nightly-export, idle in transaction" in error
    assert "SELECT count(*) FROM shop.items" in error
    assert "shop_202601020000" not in ledger(database_url)
    assert query(database_url, "SELECT count(*) FROM information_schema.columns WHERE "
                               "table_name = 'items' AND column_name = 'price'") == [(0,)]
    assert "Traceback" not in done.stderr


# Kind: a revision whose lock request could queue traffic, including ones that lift their own
# lock_timeout where no check of the text sees it; the runner holds each to the policy (the
# blocker watch cancels a wait that outlives its attempt).
ADD_PRICE = "ALTER TABLE items ADD COLUMN price int;\n"
QUEUEING_REVISIONS = {
    "alter": ADD_PRICE,
    "do-block-lifts-lock-timeout": "DO $$ BEGIN SET LOCAL lock_timeout = 0; END $$;\n" + ADD_PRICE,
    "function-set-clause": (
        "CREATE FUNCTION add_price() RETURNS void LANGUAGE plpgsql SET lock_timeout = 0 AS $$\n"
        "BEGIN ALTER TABLE shop.items ADD COLUMN price int; END $$;\nSELECT add_price();\n"),
    "no-transaction-do-block": ("-- migrate:no-transaction\n"
                                "DO $$ BEGIN SET lock_timeout = 0; END $$;\n" + ADD_PRICE),
    # the wait starts late in the attempt: the cancel counts from when it began
    "do-block-waits-late": ("DO $$ BEGIN SET LOCAL lock_timeout = 0; PERFORM pg_sleep(0.3); "
                            "ALTER TABLE shop.items ADD COLUMN price int; END $$;\n"),
    "python-op": python_revision("    op.add_column('items', sa.Column('price', sa.Integer))"),
    # the raw driver connection passes no SQLAlchemy hook
    "python-raw-connection": python_revision(
        "    raw = op.get_bind().connection.driver_connection\n"
        "    raw.execute(\"SELECT set_config(%s, '0', true)\", ('lock' + '_timeout',))\n"
        "    raw.execute('ALTER TABLE shop.items ADD COLUMN price int')"),
}


@pytest.mark.parametrize("body", QUEUEING_REVISIONS.values(), ids=QUEUEING_REVISIONS.keys())
def test_queries_queued_behind_a_waiting_revision_wait_no_longer_than_the_cap(
        tmp_path: Path, database_url: str, body: str) -> None:
    """A probe reading the table the whole time: each read waits at most one attempt's
    timeout (plus a margin for a loaded machine), never the blocker's full 3 s."""
    root = project(tmp_path)
    migrate(database_url, root, log=lambda _: None)
    add(root, "2026-01-02T0000", body)
    waits: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            while not stop.is_set():
                started = time.monotonic()
                conn.execute("SELECT count(*) FROM shop.items")
                waits.append(time.monotonic() - started)
                time.sleep(0.02)

    reader = threading.Thread(target=probe)
    blocker = Blocker(database_url, "SELECT count(*) FROM shop.items", hold_seconds=3)
    reader.start()
    try:
        migrate(database_url, root, settings=RunSettings(lock=QUICK), log=lambda _: None)
    finally:
        stop.set()
        reader.join()
        blocker.stop()
    assert len(waits) > 20
    assert max(waits) < QUICK.max_timeout_ms / 1000 + 1.0, max(waits)
    assert ledger(database_url)["shop_202601020000"] == "applied"  # once the blocker ended


def old_snapshot(url: str, seconds: float) -> threading.Timer:
    """A transaction holding a snapshot, which every concurrent index build waits for."""
    old = psycopg.connect(url, application_name="old-snapshot")
    old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    old.execute("SELECT 1")
    timer = threading.Timer(seconds, lambda: (old.rollback(), old.close()))
    timer.start()
    return timer


def test_a_short_attempt_after_a_long_one_is_watched_in_its_own_time(
        tmp_path: Path, database_url: str) -> None:
    """The watch thread is woken only when an attempt must be looked at sooner than it will
    look anyway: after a 60 s attempt (first look at 36 s), a 400 ms attempt still has its
    blocker named before it times out."""
    root = project(tmp_path)
    migrate(database_url, root, log=lambda _: None)
    blocker = Blocker(database_url, "SELECT count(*) FROM shop.items", hold_seconds=60)
    with psycopg.connect(database_url, autocommit=True) as watcher_conn, \
            psycopg.connect(database_url, autocommit=True) as waiter:
        watch = BlockerWatch(watcher_conn)
        try:
            pid = waiter.info.backend_pid
            watch.watch(pid, 60_000)
            waiter.execute("SELECT 1")
            assert watch.done() == []
            watch.watch(pid, 400)
            with pytest.raises(psycopg.errors.LockNotAvailable):
                waiter.execute("SET lock_timeout = 400; LOCK TABLE shop.items")
            assert {b.pid for b in watch.done()} == {blocker.pid}
        finally:
            watch.close()
            blocker.stop()


def test_a_concurrent_index_build_waits_out_an_old_transaction_in_one_attempt(
        tmp_path: Path, database_url: str) -> None:
    """A concurrent build takes SHARE UPDATE EXCLUSIVE, which no read or write queues behind:
    it waits in one attempt (a build retried from scratch would only cost), and is valid."""
    root = project(tmp_path)
    migrate(database_url, root, log=lambda _: None)
    add(root, "2026-01-02T0000", "-- migrate:no-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_name ON items (name);\n")
    lines: list[dict[str, object]] = []
    timer = old_snapshot(database_url, 1.5)
    started = time.monotonic()
    try:
        migrate(database_url, root, settings=RunSettings(lock=QUICK), log=lines.append)
    finally:
        timer.join()
    assert time.monotonic() - started > 1.0  # it did wait for the old transaction
    assert not [line for line in lines if line["event"] == "lock_wait"]
    assert query(database_url, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == [(0,)]
    assert query(database_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = "
                               "'shop.items_name'::regclass") == [(True,)]
    assert ledger(database_url)["shop_202601020000"] == "applied"


def test_a_concurrent_build_past_the_budget_leaves_no_invalid_index(
        tmp_path: Path, database_url: str) -> None:
    root = project(tmp_path)
    migrate(database_url, root, log=lambda _: None)
    add(root, "2026-01-02T0000", "-- migrate:no-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_name ON items (name);\n")
    timer = old_snapshot(database_url, 4)
    planned: list[float] = []  # when the run logged its plan, just before the revision starts

    def log(line: dict[str, object]) -> None:
        if line["event"] == "plan":
            planned.append(time.monotonic())
    try:
        with pytest.raises(MigrationFailed, match="1 s lock budget.*old-snapshot"):
            migrate(database_url, root, log=log, settings=RunSettings(
                lock=LockPolicy(first_timeout_ms=100, max_timeout_ms=200, budget_seconds=1)))
        failed_after = time.monotonic() - planned[0]
    finally:
        timer.join()
    assert failed_after < 2.5  # no pause after the last attempt: nothing follows it
    assert query(database_url, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == [(0,)]
    assert "shop_202601020000" not in ledger(database_url)


def test_a_strong_lock_held_through_a_backfill_is_reported(tmp_path: Path,
                                                           database_url: str) -> None:
    root = project(tmp_path)
    migrate(database_url, root, log=lambda _: None)
    query(database_url, "INSERT INTO shop.items (name) SELECT 'more ' || n "
                        "FROM generate_series(1, 50000) n")
    add(root, "2026-01-02T0000", "ALTER TABLE items ADD COLUMN plan text;\n"
        "UPDATE items SET plan = 'free' WHERE plan IS NULL;\n")
    lines: list[dict[str, object]] = []
    result = migrate(database_url, root, settings=RunSettings(long_hold_ms=10),
                     log=lines.append)
    kinds = {str(w["kind"]) for w in result.hold_warnings}
    assert kinds == {"long_lock_hold", "lock_held_across_statements"}
    across = next(w for w in result.hold_warnings if w["kind"] == "lock_held_across_statements")
    assert across["table"] == "shop.items" and across["mode"] == "AccessExclusiveLock"
    assert "2026-01-02T0000__shop__step.sql:1" in str(across["message"])
    assert "UpdateStmt (line 2)" in str(across["message"])
    assert result.locks.longest_hold_table == "shop.items"
    assert result.locks.longest_hold_revision == "shop_202601020000"
    assert result.locks.longest_hold_ms > 10


@pytest.mark.parametrize(("text", "expected"), [
    ("ALTER TABLE items ADD COLUMN a int;\nALTER TABLE items ADD COLUMN b int;\n", set()),
    ("CREATE TABLE fresh (id int);\nINSERT INTO fresh SELECT generate_series(1, 10);\n", set()),
    ("CREATE INDEX items_name_plain ON items (name);\nUPDATE items SET name = name;\n",
     {"lock_held_across_statements"}),
    ("LOCK TABLE items IN SHARE MODE;\nSELECT count(*) FROM items;\n",
     {"lock_held_across_statements"}),
    ("DO $$ BEGIN EXECUTE 'LOCK TABLE shop.items IN ACCESS EXCLUSIVE MODE'; "
     "PERFORM pg_sleep(1); END $$;\n", {"long_lock_hold"}),
])
def test_which_holds_are_reported(tmp_path: Path, database_url: str, text: str,
                                  expected: set[str]) -> None:
    """Catalog-only changes and new tables are quiet; a strong lock followed by work on rows
    is reported whatever the table's size; a lock taken where the text cannot tell (DO) is
    found in pg_locks."""
    result = applied_with_holds(tmp_path, database_url, text)
    assert {str(w["kind"]) for w in result.hold_warnings} == expected


def applied_with_holds(tmp_path: Path, database_url: str, text: str) -> RunResult:
    """The project migrated, then `text` as the next revision, held to a 500 ms long hold:
    far above what catalog-only statements hold even on a loaded CI machine (two ADD COLUMNs
    held their lock over 30 ms with 4 test workers on 2 cores), far below the 1 s sleeps under
    a lock of the revisions that must be reported."""
    root = project(tmp_path)
    migrate(database_url, root, log=lambda _: None)
    add(root, "2026-01-02T0000", text)
    return migrate(database_url, root, settings=RunSettings(long_hold_ms=500),
                   log=lambda _: None)


# A Python revision's statements, by the way they reach the server: through Alembic's `op`
# (SQLAlchemy's hook parses each, as for a SQL revision), with bound parameters (not parseable
# alone) or through the raw driver connection (no hook): the last two are read from pg_locks.
PYTHON_HOLDS = {
    "op-catalog-only": (python_revision(
        "    op.add_column('items', sa.Column('price', sa.Integer))"), set(), None),
    "op-then-whole-table-update": (python_revision(
        "    op.add_column('items', sa.Column('price', sa.Integer))\n"
        "    op.execute('UPDATE items SET price = 1')"), {"lock_held_across_statements"}, 9),
    "op-then-update-with-parameters": (python_revision(
        "    op.add_column('items', sa.Column('price', sa.Integer))\n"
        "    op.execute(sa.text(\"UPDATE items SET price = :p WHERE name NOT LIKE 'x%'\")"
        ".bindparams(p=1))"), {"lock_held_across_statements"}, 9),
    "driver-sql-lock-then-sleep-with-parameters": (python_revision(
        "    bind = op.get_bind()\n"
        "    bind.exec_driver_sql('LOCK TABLE items IN SHARE MODE')\n"
        "    bind.exec_driver_sql('SELECT pg_sleep(%(s)s)', {'s': 1})"),
        {"long_lock_hold", "lock_held_across_statements"}, 10),
    "raw-connection-lock-then-sleep": (python_revision(
        "    raw = op.get_bind().connection.driver_connection\n"
        "    raw.execute('LOCK TABLE shop.items IN ACCESS EXCLUSIVE MODE')\n"
        "    raw.execute('SELECT pg_sleep(1)')"), {"long_lock_hold"}, None),
    "raw-cursor-lock-then-op": (python_revision(
        "    raw = op.get_bind().connection.driver_connection\n"
        "    raw.cursor().execute('LOCK TABLE shop.items IN SHARE MODE')\n"
        "    op.execute('SELECT pg_sleep(1)')"), {"long_lock_hold"}, None),
    # from a breaker: past every psycopg cursor, and locks no parse tree shows
    "libpq-connection-lock": (python_revision(
        "    raw = op.get_bind().connection.driver_connection\n"
        "    raw.pgconn.exec_(b'LOCK TABLE shop.items IN ACCESS EXCLUSIVE MODE')\n"
        "    op.execute('SELECT pg_sleep(1)')"), {"long_lock_hold"}, None),
    "cursor-built-by-hand": (python_revision(
        "    import psycopg\n"
        "    raw = op.get_bind().connection.driver_connection\n"
        "    psycopg.ClientCursor(raw).execute('LOCK TABLE shop.items IN SHARE MODE')\n"
        "    op.execute('SELECT pg_sleep(1)')"), {"long_lock_hold"}, None),
    "a-trigger-that-locks": (python_revision(
        "    op.execute('CREATE TABLE audit (x int)')\n"
        "    op.execute('CREATE FUNCTION lock_items() RETURNS trigger LANGUAGE plpgsql AS '\n"
        "               '$$ BEGIN LOCK TABLE shop.items IN SHARE MODE; RETURN NEW; END $$')\n"
        "    op.execute('CREATE TRIGGER t BEFORE INSERT ON audit FOR EACH ROW '\n"
        "               'EXECUTE FUNCTION lock_items()')\n"
        "    op.execute('INSERT INTO audit VALUES (1)')\n"
        "    op.execute('SELECT pg_sleep(1)')"), {"long_lock_hold"}, None),
    "reindex": (python_revision(
        "    op.execute('REINDEX TABLE items')\n"
        "    op.execute('SELECT pg_sleep(1)')"), {"long_lock_hold"}, None),
    # from a breaker: the probe must read the catalog's pg_locks, not the revision's
    "a-temporary-view-named-pg_locks": (python_revision(
        "    op.execute('CREATE TEMP VIEW pg_locks AS SELECT * FROM pg_catalog.pg_locks "
        "WHERE false')\n"
        "    raw = op.get_bind().connection.driver_connection\n"
        "    raw.execute('LOCK TABLE shop.items IN ACCESS EXCLUSIVE MODE')\n"
        "    raw.execute('SELECT pg_sleep(1)')"), {"long_lock_hold"}, None),
}


@pytest.mark.parametrize(("text", "expected", "line"), PYTHON_HOLDS.values(),
                         ids=PYTHON_HOLDS.keys())
def test_a_python_revisions_holds_are_found_however_its_statements_are_sent(
        tmp_path: Path, database_url: str, text: str, expected: set[str],
        line: int | None) -> None:
    """The kind: a strong lock a Python revision holds is reported however it was taken:
    through `op` (parsed, at the revision's line that sent it), with bound parameters, past
    SQLAlchemy through the raw connection or libpq, by a trigger or a statement whose parse
    tree does not show it (read from pg_locks, counted from the attempt's start)."""
    result = applied_with_holds(tmp_path, database_url, text)
    assert {str(w["kind"]) for w in result.hold_warnings} == expected
    path = tmp_path / "p/services/shop/migrations/2026-01-02T0000__shop__step.py"
    for warning in result.hold_warnings:
        where = str(warning["message"]).split(": revision")[0]
        assert where == (f"{path}:{line}" if line else str(path)), warning


def test_check_and_strict_migrate_report_a_backfill_in_the_same_transaction(
        tmp_path: Path, database_url: str, server_url: str) -> None:
    root = project(tmp_path)
    add(root, "2026-01-02T0000", "-- migrate:up\nALTER TABLE items ADD COLUMN plan text;\n"
        "UPDATE items SET plan = 'free' WHERE plan IS NULL;\n"
        "-- migrate:down\nALTER TABLE items DROP COLUMN plan;\n")
    checked = run_cli(root, "check", "--json", "--quiet", "--no-trace",
                      "--database-url", server_url)
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert any("ACCESS" in w or "AccessExclusiveLock" in w for w in report["warnings"])
    strict = run_cli(root, "check", "--strict", "--quiet", "--no-trace",
                     "--database-url", server_url)
    assert strict.returncode == 1 and "lock" in strict.stdout
    traced = run_cli(root, "check", "--json", "--quiet", "--database-url", server_url)
    assert traced.returncode == 1  # the trace sees the backfill under the ADD COLUMN's lock
    assert any("traced-lock-held-during-work" in p
               for p in json.loads(traced.stdout)["problems"])
    migrated = run_cli(root, "migrate", "--strict", database_url=database_url)
    assert migrated.returncode == 1
    assert "lock_held_across_statements" in migrated.stderr or "--strict" in migrated.stderr
    assert ledger(database_url)["shop_202601020000"] == "applied"  # strict fails, keeps it


def test_the_worker_budget_is_bounded_by_its_remaining_time() -> None:
    from infra.migrator.handler import SAFETY_MARGIN_SECONDS, run_settings

    settings = run_settings(SAFETY_MARGIN_SECONDS + 30)
    assert settings.lock.budget_seconds == pytest.approx(30)
    assert settings.lock.first_timeout_ms == LockPolicy().first_timeout_ms


@pytest.mark.parametrize(("first", "cap", "message"), [("0", "500", "0 < first"),
                                                        ("300", "-1", "Invalid value")])
def test_bad_lock_settings_are_usage_errors(tmp_path: Path, first: str, cap: str,
                                            message: str) -> None:
    root = project(tmp_path)
    done = run_cli(root, "migrate", "--lock-timeout-ms", first, "--lock-timeout-max-ms", cap,
                   env={"DATABASE_URL": "postgresql://nobody@invalid.invalid/none"})
    assert done.returncode == 2 and "Traceback" not in done.stderr


# Kind: statements whose text hides a lock that queues traffic (a trigger switch, a new
# partition, a cascade, a database-wide VACUUM FULL) get short attempts, never one attempt with
# the whole budget; work that queues nobody keeps its one patient attempt.
QUEUES = {
    "ALTER TABLE items DISABLE TRIGGER audit": True,  # SHARE ROW EXCLUSIVE: writes queue
    "CREATE TABLE events_2026 PARTITION OF events FOR VALUES IN (2026)": True,
    "ALTER TABLE events ATTACH PARTITION events_old FOR VALUES IN (2025)": True,
    "DROP TYPE mood CASCADE": True,
    "DROP SEQUENCE items_seq CASCADE": True,
    "VACUUM FULL": True,
    "VACUUM (FULL) items": True,
    "ALTER TABLE items SET (user_catalog_table = true)": True,
    "ALTER TABLE items ALTER COLUMN name SET COMPRESSION pglz": True,  # ACCESS EXCLUSIVE
    # DML: a wait for one row holds every row already changed; a trigger may lock anything
    "UPDATE items SET name = 'x'": True,
    "DELETE FROM items WHERE id < 10": True,
    "INSERT INTO items (name) SELECT name FROM items": True,
    "CREATE TABLE copy AS SELECT * FROM items": True,
    "CREATE INDEX CONCURRENTLY items_name ON items (name)": False,
    "ALTER TABLE items VALIDATE CONSTRAINT items_name_check": False,
    "DROP TYPE mood": False,
    "VACUUM items": False,
    "CREATE TABLE fresh (id int)": False,
}


@pytest.mark.parametrize(("sql", "queues"), QUEUES.items(), ids=list(QUEUES))
def test_which_statements_wait_in_short_attempts(sql: str, queues: bool) -> None:
    from migrations_runtime.engine.statements import queues_traffic, split_statements

    assert queues_traffic(split_statements(sql, 1, Path("x.sql"))[0]) is queues


def test_a_prepared_transaction_in_the_way_is_named_and_cannot_hold_the_revision(
        tmp_path: Path) -> None:
    """A prepared transaction has no session (pg_blocking_pids says pid 0): the error names it
    by its gid, and a revision that lifted its own lock_timeout is still cancelled."""
    from tests.services.throwaway import throwaway_postgres

    root = project(tmp_path)
    with throwaway_postgres(settings={"max_prepared_transactions": "5"}) as url:
        migrate(url, root, log=lambda _: None)
        add(root, "2026-01-02T0000", QUEUEING_REVISIONS["do-block-lifts-lock-timeout"])
        with psycopg.connect(url) as holder:
            holder.execute("SELECT count(*) FROM shop.items")
            holder.execute("PREPARE TRANSACTION 'nightly-export'")
        started = time.monotonic()
        try:
            with pytest.raises(MigrationFailed, match="prepared transaction nightly-export"):
                migrate(url, root, log=lambda _: None, settings=RunSettings(
                    lock=LockPolicy(first_timeout_ms=100, max_timeout_ms=200,
                                    budget_seconds=2)))
            assert time.monotonic() - started < 5
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ROLLBACK PREPARED 'nightly-export'")
        assert "shop_202601020000" not in ledger(url)


@pytest.mark.parametrize("flag", [("--lock-budget", "nan"), ("--lock-budget", "inf"),
                                  ("--lock-wait", "nan"), ("--lock-wait", "-5"),
                                  ("--lock-budget", "1e9"), ("--lock-timeout-ms", "3000000000"),
                                  ("--lock-timeout-max-ms", "3000000000")])
def test_lock_settings_out_of_range_are_usage_errors(tmp_path: Path,
                                                     flag: tuple[str, str]) -> None:
    root = project(tmp_path)
    done = run_cli(root, "migrate", *flag,
                   env={"DATABASE_URL": "postgresql://nobody@invalid.invalid/none"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


def test_a_hold_read_from_the_server_counts_from_the_attempt_that_took_it(
        tmp_path: Path, database_url: str) -> None:
    """A DO block's locks are read from pg_locks: after attempts that gave up, the hold is
    timed from the attempt that succeeded, not from the revision's first attempt."""
    root = project(tmp_path)
    migrate(database_url, root, log=lambda _: None)
    add(root, "2026-01-02T0000", "DO $$ BEGIN LOCK TABLE shop.items IN SHARE MODE; END $$;\n")
    lines: list[dict[str, object]] = []
    blocker = Blocker(database_url, "INSERT INTO shop.items (name) VALUES ('in flight')",
                      hold_seconds=60)
    try:
        result = migrate(database_url, root, settings=RunSettings(lock=QUICK),
                         log=releasing_after(blocker, 3, lines))
    finally:
        blocker.stop()
    assert [line for line in lines if line["event"] == "lock_wait"]  # it did wait
    assert result.hold_warnings == ()
    assert result.locks.longest_hold_ms < 1000


# Kind: relation names as `regclass` prints them, which the pg_locks probe reads back.
ODD_NAMES = [("shop", "plain"), ("My Schema", "UPPER"), ("My Schema", "dotted.name"),
             ("we\"ird", "quo\"te"), ("shop", "select"), ("shop", "ünïcode")]


def test_the_probes_relation_names_are_read_back_as_postgres_prints_them(
        database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET search_path = pg_catalog, pg_temp")  # as the runner's finish does
        for schema, name in ODD_NAMES:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            conn.execute(f"CREATE TABLE {quote_ident(schema)}.{quote_ident(name)} ()")
            printed = conn.execute("SELECT %s::regclass::text", (
                f"{quote_ident(schema)}.{quote_ident(name)}",)).fetchone()
            assert printed is not None
            assert split_qualified(printed[0]) == (schema, name), printed[0]
