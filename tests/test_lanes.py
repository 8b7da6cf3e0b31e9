"""Lanes (`engine/lanes.py`): services that do not depend on each other are applied at once
(`--jobs`, default 2), and a run on lanes keeps every promise a serial run makes.

Kinds, each on real Postgres:
- concurrency is real: a service blocked on a table lock does not hold back another service
  (and with `--jobs 1` it does: plan order);
- order is kept where it is declared: a `depends-on` on another lane's revision waits for that
  revision's COMMIT, whether the target is blocked or slow;
- the first failure stops every lane after the revision it is running; the ledger matches
  what is in the database, the lock is released and a rerun finishes;
- process-wide state shared by lanes: Python revisions on both lanes (Alembic's `op`, stdout),
  log lines written whole, `--json` stdout one object;
- an interrupt (SIGINT, SIGTERM) stops both lanes at once, the other lane's statement too;
- bad input: `--jobs 0`.

Plan order puts `users` (the earliest revision) first, so it is lane 0, on the calling thread,
and `orders` lane 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from migrations_runtime.engine.apply import RunSettings, migrate
from migrations_runtime.engine.errors import MigrationFailed
from migrations_runtime.engine.lanes import assign_lanes
from migrations_runtime.engine.lockwait import LockPolicy
from migrations_runtime.engine.validate import build_graph
from tests.conftest import fresh_database, query, run_cli, write_project
from tests.test_containment import (
    add,
    base_project,
    interrupted_migrate,
    ledger,
    lock_is_free,
    python_revision,
)

PATIENT = LockPolicy(budget_seconds=120)  # a revision blocked by the test waits for it


def applied(url: str) -> set[str]:
    return {rev for rev, state in ledger(url).items() if state == "applied"}


def tables(url: str, schema: str) -> set[str]:
    return {name for (name,) in query(url, "SELECT tablename FROM pg_tables WHERE schemaname "
                                           "= %s", (schema,))}


@contextmanager
def table_locked(url: str, table: str) -> Iterator[Callable[[], None]]:
    """ACCESS EXCLUSIVE on `table` until the yielded function (or the block's end) lets go."""
    conn = psycopg.connect(url)
    conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def release() -> None:
        if not conn.closed:
            conn.rollback()
            conn.close()

    try:
        yield release
    finally:
        release()


class Background:
    """`migrate` on a thread of its own: its result or its exception, and its log."""

    def __init__(self, root: Path, url: str, jobs: int) -> None:
        self.lines: list[dict[str, object]] = []
        self.result: object = None
        self.error: BaseException | None = None
        settings = RunSettings(lock=PATIENT, jobs=jobs)

        def run() -> None:
            try:
                self.result = migrate(url, root, settings=settings, log=self.lines.append)
            except BaseException as err:
                self.error = err

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()

    def logged(self, event: str, revision: str) -> bool:
        """`event` (or, for a revision's line, its outcome) was logged for `revision`."""
        return any(event in (line.get("event"), line.get("outcome"))
                   and line.get("revision") == revision for line in self.lines)


def wait_until(condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def applied_base(tmp_path: Path, url: str) -> Path:
    root = base_project(tmp_path)
    migrate(url, root, log=lambda _line: None)
    return root


# Kind: a service blocked on a lock does not hold back the others (with one job it does).
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_blocked_service_holds_back_the_others_only_with_one_job(
        tmp_path: Path, database_url: str, jobs: int) -> None:
    root = applied_base(tmp_path, database_url)
    add(root, "users", "2026-02-01T0000", "ALTER TABLE users ADD COLUMN nick text;\n")
    orders = [f"orders_20260201{hour:02d}00" for hour in (1, 2, 3)]
    for number, hour in enumerate((1, 2, 3)):
        add(root, "orders", f"2026-02-01T{hour:02d}00", f"CREATE TABLE o{number} (id int);\n")
    with table_locked(database_url, "users.users") as release:
        run = Background(root, database_url, jobs)
        wait_until(lambda: run.logged("lock_wait", "users_202602010000"))
        if jobs == 2:
            wait_until(lambda: set(orders) <= applied(database_url))
        else:
            time.sleep(1.5)
            assert not set(orders) & applied(database_url)
        assert "users_202602010000" not in applied(database_url)
        release()
        run.join()
    assert run.error is None
    assert [r.revision for r in run.result.results] == ["users_202602010000", *orders]  # type: ignore[attr-defined]
    assert {"users_202602010000", *orders} <= applied(database_url)
    assert {"o0", "o1", "o2"} <= tables(database_url, "orders")
    assert lock_is_free(database_url)


# Kind: services linked by a `depends-on` share a lane: they run in plan order, as serially,
# while an unlinked service runs beside them.
@pytest.mark.parametrize("slow", ["blocked", "sleeping"])
def test_a_dependency_puts_both_services_on_one_lane_in_plan_order(
        tmp_path: Path, database_url: str, slow: str) -> None:
    root = applied_base(tmp_path, database_url)
    (root / "services" / "billing" / "migrations").mkdir(parents=True)
    text = (root / "alembic.ini").read_text()
    (root / "alembic.ini").write_text(text.replace(
        "/orders/migrations", "/orders/migrations %(here)s/services/billing/migrations"))
    target = "users_202602010000"
    if slow == "blocked":
        add(root, "users", "2026-02-01T0000", "ALTER TABLE users ADD COLUMN nick text;\n")
    else:
        add(root, "users", "2026-02-01T0000",
            "ALTER TABLE users ADD COLUMN nick text;\nSELECT pg_sleep(2);\n")
    add(root, "orders", "2026-02-01T0100", "CREATE TABLE early (id int);\n")
    add(root, "orders", "2026-02-01T0200",
        f"-- depends-on: {target}\nCREATE TABLE late (id int);\n")
    add(root, "billing", "2026-02-01T0300", "CREATE TABLE invoices (id int);\n")
    with table_locked(database_url, "users.users") as release:
        if slow == "sleeping":
            release()
        run = Background(root, database_url, jobs=2)
        wait_until(lambda: "billing_202602010300" in applied(database_url))
        done = applied(database_url)
        assert target not in done  # still blocked, or sleeping
        assert "orders_202602010100" not in done  # on users' lane, after it
        release()
        run.join()
    assert run.error is None
    rows = dict(query(database_url, "SELECT revision, applied_at FROM svcmig.schema_migrations"))
    assert rows["orders_202602010100"] > rows[target]  # plan order: users first
    assert "late" in tables(database_url, "orders")


# Kind: services that can see each other's schema (a grant, in the database or pending) share
# a lane, so what one sees of the other is what a serial run shows it (breaker: a view over
# another service's table missed a column a later revision of that service added).
GRANTS = {  # how users lets orders read its table: each must put both on one lane
    "pending": "GRANT USAGE ON SCHEMA users TO orders_owner;\nGRANT SELECT ON t TO orders_owner;\n",
    "in the database": "GRANT USAGE ON SCHEMA users TO orders_owner;\n"
                       "GRANT SELECT ON t TO orders_owner;\n",
    "upper case": "GRANT USAGE ON SCHEMA users TO ORDERS_OWNER;\n"
                  "GRANT SELECT ON t TO Orders_Owner;\n",
    "dynamic": "DO $$ BEGIN EXECUTE format('GRANT USAGE ON SCHEMA users TO %I', 'orders' || "
               "'_owner'); EXECUTE format('GRANT SELECT ON users.t TO %I', 'orders' || "
               "'_owner'); END $$;\n",
    "public in a list": "GRANT USAGE ON SCHEMA users TO users_app, /* all */ PUBLIC;\n"
                        "GRANT SELECT ON t TO users_app, PUBLIC;\n",
}


@pytest.mark.parametrize("grant", list(GRANTS))
def test_services_that_share_a_schema_get_the_serial_result(
        tmp_path: Path, server_url: str, grant: str) -> None:
    columns = {}
    for jobs in (1, 2):
        with fresh_database(server_url) as url:
            root = write_project(tmp_path / f"p{jobs}", {
                "users": {"2026-01-01T0000__users__create.sql": "CREATE TABLE t (id int);\n"},
                "orders": {"2026-01-01T0100__orders__create.sql": "CREATE TABLE o (id int);\n"},
            })
            granting = GRANTS[grant]
            if grant == "in the database":
                add(root, "users", "2026-01-01T0001", granting)
                migrate(url, root, settings=RunSettings(jobs=jobs), log=lambda _line: None)
            else:
                add(root, "users", "2026-02-01T0000", granting)
            add(root, "users", "2026-02-01T0001",
                "SELECT pg_sleep(0.5);\nALTER TABLE t ADD COLUMN extra text;\n")
            add(root, "orders", "2026-02-01T0100",
                "CREATE VIEW v AS SELECT * FROM users.t;\n")
            migrate(url, root, settings=RunSettings(jobs=jobs), log=lambda _line: None)
            columns[jobs] = query(url, "SELECT column_name FROM information_schema.columns "
                                       "WHERE table_schema = 'orders' AND table_name = 'v' "
                                       "ORDER BY ordinal_position")
    assert columns[2] == columns[1] == [("id",), ("extra",)]


# Kind: the first failure stops every lane once its running revision has ended; a revision
# waiting for its locks stops waiting.
def test_a_failure_stops_the_other_lane_after_its_running_revision(
        tmp_path: Path, database_url: str) -> None:
    root = applied_base(tmp_path, database_url)
    failing = add(root, "users", "2026-02-01T0000",
                  "DO $$ BEGIN PERFORM pg_sleep(1); PERFORM 1 / 0; END $$;\n")
    add(root, "orders", "2026-02-01T0100", "ALTER TABLE orders ADD COLUMN note text;\n")
    add(root, "orders", "2026-02-01T0200", "CREATE TABLE later (id int);\n")
    with table_locked(database_url, "orders.orders"):
        run = Background(root, database_url, jobs=2)
        # the revision waiting for its lock stops waiting, not applied (its budget is 120 s)
        run.join()
        assert run.logged("failed", "orders_202602010100")
    assert isinstance(run.error, MigrationFailed)
    assert run.error.revision == "users_202602010000"
    assert "division by zero" in str(run.error)
    assert any("the run stopped" in str(line.get("error")) for line in run.lines)
    assert [r.revision for r in run.error.applied] == []
    state = ledger(database_url)
    assert not {"orders_202602010100", "orders_202602010200", "users_202602010000"} & set(state)
    assert "later" not in tables(database_url, "orders")
    assert "dirty" not in state.values()
    assert lock_is_free(database_url)
    failing.write_text("ALTER TABLE users ADD COLUMN nick text;\n")
    again = migrate(database_url, root, log=lambda _line: None)
    assert [r.revision for r in again.results] == [
        "users_202602010000", "orders_202602010100", "orders_202602010200"]


# Kind: whatever fails, what each lane committed is in the ledger and nothing else is.
@pytest.mark.parametrize("failing", ["users", "orders", "both"])
def test_the_ledger_matches_the_database_after_a_failure_on_either_lane(
        tmp_path: Path, database_url: str, failing: str) -> None:
    root = applied_base(tmp_path, database_url)
    for service in ("users", "orders"):
        for minute in range(20):
            bad = minute == 10 and failing in (service, "both")
            add(root, service, f"2026-02-01T{1 if service == 'orders' else 0:02d}{minute:02d}",
                "SELECT 1 / 0;\n" if bad else f"CREATE TABLE {service}_t{minute} (id int);\n")
    with pytest.raises(MigrationFailed) as caught:
        migrate(database_url, root, settings=RunSettings(jobs=2), log=lambda _line: None)
    assert caught.value.revision.endswith("0010") or caught.value.revision.endswith("0110")
    state = ledger(database_url)
    reported = [r.revision for r in caught.value.applied]
    assert reported == sorted(reported, key=lambda rev: (not rev.startswith("users"), rev))
    for service in ("users", "orders"):
        made = tables(database_url, service)
        for minute in range(20):
            revision = f"{service}_20260201{1 if service == 'orders' else 0:02d}{minute:02d}"
            assert (f"{service}_t{minute}" in made) == (state.get(revision) == "applied") \
                == (revision in reported), revision
    assert "dirty" not in state.values()
    assert lock_is_free(database_url)


# Kind: process-wide state the lanes share: Alembic's `op`, stdout, the log.
def test_python_revisions_on_both_lanes_change_only_their_own_service(
        tmp_path: Path, database_url: str) -> None:
    root = applied_base(tmp_path, database_url)
    for service, table, hour in (("users", "users", 0), ("orders", "orders", 1)):
        previous = f"{service}_20260101{hour:02d}00"
        for minute in range(8):
            stamp = f"2026-02-01T{hour:02d}{minute:02d}"
            if minute % 2:
                add(root, service, stamp, f"CREATE TABLE {service}_sql{minute} (id int);\n")
            else:
                body = ("    import sys\n"
                        f"    op.add_column({table!r}, sa.Column('a{minute}', sa.Integer()))\n"
                        f"    print('printed by {service} {minute}', end='', flush=True)\n"
                        "    time.sleep(0.05)\n"
                        "    print(' in two parts')\n"
                        "    print('no newline', end='')\n"
                        "    print('to stderr', end=' ', file=sys.stderr, flush=True)\n"
                        "    time.sleep(0.05)\n"
                        "    print('in two parts', file=sys.stderr)\n"
                        "    sys.stdout.buffer.write(b'')\n"
                        f"    op.add_column({table!r}, sa.Column('b{minute}', sa.Integer()))\n")
                add(root, service, stamp, python_revision(service, stamp, previous, body), "py")
            previous = f"{service}_{stamp.replace('-', '').replace('T', '')}"
    done = run_cli(root, "migrate", "--json", "--log-format", "json",
                   database_url=database_url)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "applied"
    assert len(result["applied"]) == 16
    printed = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert sorted(printed) == sorted(
        [f"printed by {service} {minute} in two parts" for service in ("users", "orders")
         for minute in (0, 2, 4, 6)] + ["no newline", "to stderr in two parts"] * 8)
    for line in done.stderr.splitlines():
        if line.startswith("{"):
            json.loads(line)  # every log line whole
    for service, table in (("users", "users"), ("orders", "orders")):
        columns = {name for (name,) in query(
            database_url, "SELECT column_name FROM information_schema.columns WHERE "
            "table_schema = %s AND table_name = %s", (service, table))}
        assert {f"{kind}{minute}" for kind in "ab" for minute in (0, 2, 4, 6)} <= columns
    assert "dirty" not in ledger(database_url).values()


# Kind: an interrupt stops both lanes now: the other lane's statement is cancelled.
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_an_interrupt_stops_both_lanes(tmp_path: Path, database_url: str,
                                       signal_number: int) -> None:
    root = applied_base(tmp_path, database_url)
    add(root, "users", "2026-02-01T0000", "CREATE TABLE u (id int);\nSELECT pg_sleep(60);\n")
    add(root, "orders", "2026-02-01T0100", "CREATE TABLE o (id int);\nSELECT pg_sleep(61);\n")
    started = time.monotonic()
    stdout, stderr = interrupted_migrate(
        root, database_url, signal_number,
        "query LIKE '%%pg_sleep(61)%%' AND EXISTS (SELECT FROM pg_stat_activity "
        "WHERE query LIKE '%%pg_sleep(60)%%')")
    assert time.monotonic() - started < 30  # not the 60 s the other lane's statement takes
    assert json.loads(stdout)["outcome"] == "interrupted"
    assert "Traceback" not in stderr
    state = ledger(database_url)
    assert "users_202602010000" not in state and "orders_202602010100" not in state
    assert "u" not in tables(database_url, "users") and "o" not in tables(database_url, "orders")
    assert lock_is_free(database_url)


# Kind: how services are spread over lanes.
def test_each_service_is_on_one_lane_and_lanes_are_balanced(tmp_path: Path) -> None:
    root = base_project(tmp_path)
    for minute in range(6):
        add(root, "users", f"2026-02-01T00{minute:02d}", f"CREATE TABLE t{minute} (id int);\n")
    steps = build_graph(root).ordered()
    for jobs in (1, 2, 3, 8):
        lanes = assign_lanes(steps, jobs)
        assert len(lanes) == min(jobs, 2)
        assert sorted(i for lane in lanes for i in lane) == list(range(len(steps)))
        for lane in lanes:
            assert lane == sorted(lane)
            assert len({steps[i].service for i in lane}) == (2 if jobs == 1 else 1)
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        assign_lanes(steps, 0)
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        RunSettings(jobs=0)


def test_jobs_below_one_is_refused_on_the_command_line(tmp_path: Path) -> None:
    root = base_project(tmp_path)
    done = run_cli(root, "migrate", "--jobs", "0", database_url="postgresql://unused/x")
    assert done.returncode == 2
    assert "--jobs" in done.stderr and "Traceback" not in done.stderr


# Kind: an interrupt stops the run whatever the other lane is doing when it comes, after the
# calling thread's lane has finished: in SQL, waiting for a lock, in a Python revision (which
# runs on the calling thread). Breaker: exit 0 with pending revisions, `failed` instead of
# `interrupted`, and 30 s waits for a sleeping or lock-waiting lane.
@pytest.mark.parametrize("doing", ["sql", "lock wait", "python"])
def test_an_interrupt_stops_whatever_the_other_lane_does(
        tmp_path: Path, database_url: str, doing: str) -> None:
    root = applied_base(tmp_path, database_url)
    add(root, "users", "2026-02-01T0000", "CREATE TABLE u (id int);\n")
    if doing == "sql":
        add(root, "orders", "2026-02-01T0100", "CREATE TABLE o (id int);\nSELECT pg_sleep(60);\n")
        running = "query LIKE '%%pg_sleep(60)%%'"
    elif doing == "lock wait":
        add(root, "orders", "2026-02-01T0100", "ALTER TABLE orders ADD COLUMN x int;\n")
        running = "usename = 'orders_owner' AND wait_event_type = 'Lock'"
    else:
        body = ("    op.execute('CREATE TABLE o (id int)')\n"
                "    op.execute(\"SELECT 'lanes-marker'\")\n"
                "    time.sleep(60)\n")
        add(root, "orders", "2026-02-01T0100",
            python_revision("orders", "2026-02-01T0100", "orders_202601010100", body), "py")
        running = "query LIKE '%%lanes-marker%%' AND usename = 'orders_owner'"
    with table_locked(database_url, "orders.orders") as release:
        if doing != "lock wait":
            release()
        started = time.monotonic()
        stdout, stderr = interrupted_migrate(root, database_url, signal.SIGTERM, running)
        assert time.monotonic() - started < 30
    result = json.loads(stdout)  # one object, on stdout
    assert result["outcome"] == "interrupted"
    assert "Traceback" not in stderr
    state = ledger(database_url)
    assert "orders_202602010100" not in state
    assert "o" not in tables(database_url, "orders")
    assert [r["revision"] for r in result["applied"]] == [
        rev for rev in ("users_202602010000",) if state.get(rev) == "applied"]
    assert lock_is_free(database_url)


# Kind: what a Python revision may do on the main thread of a serial run it may do on any lane
# (breaker: `signal.signal` failed off the main thread).
def test_a_python_revision_on_another_lane_may_set_a_signal_handler(
        tmp_path: Path, database_url: str) -> None:
    root = applied_base(tmp_path, database_url)
    add(root, "users", "2026-02-01T0000", "SELECT pg_sleep(0.5);\n")
    body = ("    import signal\n"
            "    previous = signal.signal(signal.SIGALRM, lambda *_: None)\n"
            "    signal.alarm(60)\n"
            "    op.execute('CREATE TABLE o (id int)')\n"
            "    signal.alarm(0)\n"
            "    signal.signal(signal.SIGALRM, previous)\n")
    add(root, "orders", "2026-02-01T0100",
        python_revision("orders", "2026-02-01T0100", "orders_202601010100", body), "py")
    done = run_cli(root, "migrate", "--json", "--jobs", "2", database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert "o" in tables(database_url, "orders")


# Kind: a deadlock the server breaks ends the attempt like a lock timeout: tried again (a
# concurrent index build and another lane's, or live traffic's, transaction can deadlock).
def test_a_deadlock_is_tried_again(tmp_path: Path, database_url: str) -> None:
    root = applied_base(tmp_path, database_url)
    query(database_url, "CREATE TABLE users.a (id int); CREATE TABLE users.b (id int); "
                        "ALTER TABLE users.a OWNER TO users_owner; "
                        "ALTER TABLE users.b OWNER TO users_owner")
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    query(database_url, f'ALTER DATABASE "{dbname}" SET deadlock_timeout = \'200ms\'')
    add(root, "users", "2026-02-01T0000", "LOCK TABLE a IN ACCESS EXCLUSIVE MODE;\n"
                                           "LOCK TABLE b IN ACCESS EXCLUSIVE MODE;\n")
    other = psycopg.connect(database_url)
    other.execute("SET deadlock_timeout = '30s'")
    other.execute("LOCK TABLE users.b IN ACCESS EXCLUSIVE MODE")
    settings = RunSettings(lock=LockPolicy(first_timeout_ms=2000, max_timeout_ms=2000,
                                           budget_seconds=60), jobs=1)
    lines: list[dict[str, object]] = []
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(
        migrate(database_url, root, settings=settings, log=lines.append)))
    thread.start()
    try:
        # the revision holds a and waits for b: ask for a, and the revision's deadlock check
        # (200 ms) finds the cycle
        wait_until(lambda: bool(query(
            database_url, "SELECT 1 FROM pg_stat_activity WHERE usename = 'users_owner' AND "
                          "wait_event_type = 'Lock'")))
        other.execute("LOCK TABLE users.a IN ACCESS EXCLUSIVE MODE")
        other.commit()
    finally:
        other.close()
        thread.join(timeout=60)
    assert done, lines
    assert any(line.get("event") == "lock_wait" for line in lines)
    assert applied(database_url) >= {"users_202602010000"}


# Kind: access through a service outside the plan links the services at both ends (breaker:
# orders copied a view of billing's over users' table before users' new row was in).
def test_access_through_a_service_outside_the_plan_links_both_ends(
        tmp_path: Path, server_url: str) -> None:
    copied = {}
    for jobs in (1, 2):
        with fresh_database(server_url) as url:
            root = write_project(tmp_path / f"p{jobs}", {
                "users": {"2026-01-01T0000__users__create.sql":
                          "CREATE TABLE t (id int);\nINSERT INTO t VALUES (1);\n"
                          "GRANT USAGE ON SCHEMA users TO billing_owner;\n"
                          "GRANT SELECT ON t TO billing_owner;\n"},
                "billing": {"2026-01-01T0100__billing__create.sql":
                            "CREATE VIEW v AS SELECT id FROM users.t;\n"
                            "GRANT USAGE ON SCHEMA billing TO orders_owner;\n"
                            "GRANT SELECT ON v TO orders_owner;\n"},
                "orders": {"2026-01-01T0200__orders__create.sql": "CREATE TABLE o (id int);\n"},
            })
            migrate(url, root, settings=RunSettings(jobs=jobs), log=lambda _line: None)
            add(root, "users", "2026-02-01T0000",
                "SELECT pg_sleep(0.5);\nINSERT INTO t VALUES (2);\n")
            add(root, "orders", "2026-02-01T0100",
                "CREATE TABLE snap AS SELECT id FROM billing.v;\n")
            migrate(url, root, settings=RunSettings(jobs=jobs), log=lambda _line: None)
            copied[jobs] = query(url, "SELECT id FROM orders.snap ORDER BY id")
    assert copied[2] == copied[1] == [(1,), (2,)]


# Kind: every lane's failure is reported, not only the first (breaker: a revision that failed
# on the other lane appeared only in the log).
def test_every_lanes_failure_is_reported(tmp_path: Path, database_url: str) -> None:
    root = applied_base(tmp_path, database_url)
    add(root, "users", "2026-02-01T0000", "SELECT pg_sleep(0.3);\nSELECT 1 / 0;\n")
    add(root, "orders", "2026-02-01T0100",
        "CREATE TABLE r (id int);\nSELECT pg_sleep(0.6);\nSELECT 1 / 0;\n")
    with pytest.raises(MigrationFailed) as caught:
        migrate(database_url, root, settings=RunSettings(jobs=2), log=lambda _line: None)
    message = str(caught.value)
    assert caught.value.revision == "users_202602010000"
    assert "meanwhile, on another lane" in message and "orders_202602010100" in message
    assert not {"users_202602010000", "orders_202602010100"} & set(ledger(database_url))
    assert lock_is_free(database_url)


# Kind: a revision without a transaction runs alone, so another lane's transaction does not
# hold up its concurrent index build (breaker: out of lock budget, blocked by its own run).
def test_a_concurrent_index_build_runs_alone(tmp_path: Path, database_url: str) -> None:
    root = applied_base(tmp_path, database_url)
    add(root, "users", "2026-02-01T0000", "SELECT pg_sleep(0.3);\n")
    add(root, "users", "2026-02-01T0001", "-- migrate:no-transaction\n"
        "CREATE INDEX CONCURRENTLY users_email ON users (email);\n")
    add(root, "orders", "2026-02-01T0100", "CREATE TABLE u (id int);\nSELECT pg_sleep(4);\n")
    settings = RunSettings(lock=LockPolicy(budget_seconds=2), jobs=2)
    result = migrate(database_url, root, settings=settings, log=lambda _line: None)
    assert {r.revision for r in result.results} == {
        "users_202602010000", "users_202602010001", "orders_202602010100"}
    assert query(database_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = "
                               "'users.users_email'::regclass") == [(True,)]


# Kind: a grant to a role of no service, which another service's owner is a member of.
def test_a_grant_to_a_role_of_no_service_links_every_service(
        tmp_path: Path, database_url: str) -> None:
    root = applied_base(tmp_path, database_url)
    readers = f"readers_{uuid.uuid4().hex[:8]}"
    query(database_url, f"CREATE ROLE {readers}; GRANT {readers} TO orders_owner")
    try:
        add(root, "users", "2026-02-01T0000", f"SELECT pg_sleep(0.5);\nGRANT USAGE ON SCHEMA "
            f"users TO {readers};\nGRANT SELECT ON users TO {readers};\n")
        add(root, "orders", "2026-02-01T0100", "CREATE VIEW v AS SELECT id FROM users.users;\n")
        migrate(database_url, root, settings=RunSettings(jobs=2), log=lambda _line: None)
        assert "orders_202602010100" in applied(database_url)
    finally:
        query(database_url, f"DROP OWNED BY {readers}; DROP ROLE {readers}")


# Kind: an interrupt that lands after a revision's COMMIT, before the runner heard back: the
# revision is reported applied, as the ledger says (breaker: "rolled back", left out).
def test_an_interrupt_after_commit_reports_the_revision_applied(
        tmp_path: Path, database_url: str) -> None:
    root = applied_base(tmp_path, database_url)
    add(root, "users", "2026-02-01T0000",  # the reset after COMMIT drops 3000 temp tables
        "DO $$ BEGIN FOR i IN 1..3000 LOOP EXECUTE format('CREATE TEMP TABLE t%s (id int)', i);"
        " END LOOP; END $$;\n")
    add(root, "users", "2026-02-01T0001", "SELECT pg_sleep(30);\n")
    stdout, stderr = interrupted_migrate(
        root, database_url, signal.SIGINT,
        "EXISTS (SELECT FROM svcmig.schema_migrations WHERE revision = 'users_202602010000')")
    result = json.loads(stdout)
    state = ledger(database_url)
    reported = [r["revision"] for r in result["applied"]]
    assert set(reported) == {rev for rev, value in state.items() if value == "applied"} - {
        "users_202601010000", "orders_202601010100"}
    assert "users_202602010000" in reported


# Kind: a second signal while the run cleans up after the first one.
def test_a_second_signal_does_not_cut_the_clean_up_short(
        tmp_path: Path, database_url: str) -> None:
    root = applied_base(tmp_path, database_url)
    add(root, "users", "2026-02-01T0000", "CREATE TABLE u (id int);\nSELECT pg_sleep(60);\n")
    add(root, "orders", "2026-02-01T0100", "CREATE TABLE o (id int);\nSELECT pg_sleep(61);\n")
    env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(root), "DATABASE_URL": database_url}
    run = subprocess.Popen([sys.executable, "-m", "migrations_runtime.cli", "migrate", "--json"],
                           cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        wait_until(lambda: len(query(database_url, "SELECT 1 FROM pg_stat_activity WHERE "
                                                   "query LIKE '%%pg_sleep(6%%'")) >= 3)
        run.send_signal(signal.SIGINT)
        for _ in range(40):  # more, while it cleans up and reports
            time.sleep(0.01)
            if run.poll() is not None:
                break
            run.send_signal(signal.SIGTERM)
        stdout, stderr = run.communicate(timeout=30)
    finally:
        run.kill()
    assert run.returncode == 130, stderr
    assert json.loads(stdout)["outcome"] == "interrupted"
    assert "Traceback" not in stderr
    assert query(database_url, "SELECT rolname FROM pg_roles WHERE rolname IN "
                               "('users_owner', 'orders_owner') AND rolcanlogin") == []
    assert lock_is_free(database_url)


# Kind: a lane's log line written while a Python revision has half a line out on stderr
# (breaker: `print(..., end='', file=sys.stderr)` then a lane's JSON line on the same line).
def test_a_lanes_log_line_never_joins_a_revisions_half_line(
        tmp_path: Path, database_url: str) -> None:
    root = applied_base(tmp_path, database_url)
    previous = "users_202601010000"
    for minute in range(3):
        stamp = f"2026-02-01T00{minute:02d}"
        body = ("    import sys\n"
                "    for _ in range(5):\n"
                "        print('half', end=' ', file=sys.stderr, flush=True)\n"
                "        time.sleep(0.05)\n"
                "        print('and half', file=sys.stderr)\n")
        add(root, "users", stamp, python_revision("users", stamp, previous, body), "py")
        previous = f"users_20260201{stamp[-4:]}"
    for minute in range(40):
        add(root, "orders", f"2026-02-01T01{minute:02d}", f"CREATE TABLE o{minute} (id int);\n"
            "SELECT pg_sleep(0.05);\n")
    done = run_cli(root, "migrate", "--json", "--log-format", "json",
                   database_url=database_url)
    assert done.returncode == 0, done.stderr
    for line in done.stderr.splitlines():
        if line.startswith("{"):
            json.loads(line)
        else:
            assert line == "half and half", line


# Kind: a grant the revision's text does not show (a function an earlier release shipped, a
# helper module of the project, SQL put together without the word) — no reading of the text
# links the services, so the revision that needs the grant fails on its lane while the one
# that grants has not committed yet: it runs again once every revision before it in the plan
# has, and the run gets the serial result.
SHARE_FUNCTION = ("CREATE FUNCTION share_with(service text) RETURNS void LANGUAGE plpgsql AS $f$\n"
                  "BEGIN\n"
                  "  EXECUTE format('GRANT USAGE ON SCHEMA users TO %I', service || '_owner');\n"
                  "  EXECUTE format('GRANT SELECT ON users.t TO %I', service || '_owner');\n"
                  "END $f$;\n")
HELPER_MODULE = ('def share(op, table, service):\n'
                 '    op.execute(f"GRANT USAGE ON SCHEMA users TO {service}_owner")\n'
                 '    op.execute(f"GRANT SELECT ON users.{table} TO {service}_owner")\n')
HELPER_REVISION = ("    import importlib.util\n    import pathlib\n"
                   "    path = pathlib.Path(__file__).parents[1] / 'dbhelpers.py'\n"
                   "    spec = importlib.util.spec_from_file_location('users_dbhelpers', path)\n"
                   "    helpers = importlib.util.module_from_spec(spec)\n"
                   "    spec.loader.exec_module(helpers)\n"
                   "    op.execute('SELECT pg_sleep(0.5)')\n"
                   "    helpers.share(op, 't', 'orders')\n")
UNSEEN_GRANTS = {
    "an earlier release's function": "SELECT pg_sleep(0.5);\nSELECT share_with('orders');\n",
    "SQL put together without the word": (
        "SELECT pg_sleep(0.5);\nDO $$ BEGIN EXECUTE 'GR' || 'ANT USAGE ON SCHEMA users TO ' "
        "|| 'orders' || '_ow' || 'ner'; EXECUTE 'GR' || 'ANT SELECT ON users.t TO ' || "
        "'orders' || '_ow' || 'ner'; END $$;\n"),
    "a helper module": "python",
}


@pytest.mark.parametrize("transactional", [True, False], ids=["in a transaction", "without"])
@pytest.mark.parametrize("grant", list(UNSEEN_GRANTS))
def test_a_grant_the_text_does_not_show_still_gives_the_serial_result(
        tmp_path: Path, server_url: str, grant: str, transactional: bool) -> None:
    """Without a transaction the needing revision could not run again (left dirty), so it
    starts only once every revision before it in the plan has committed."""
    columns = {}
    for jobs in (1, 2):
        with fresh_database(server_url) as url:
            root = write_project(tmp_path / f"p{jobs}", {
                "users": {"2026-01-01T0000__users__create.sql":
                          "CREATE TABLE t (id int);\n" + SHARE_FUNCTION},
                "orders": {"2026-01-01T0100__orders__create.sql": "CREATE TABLE o (id int);\n"},
            })
            migrate(url, root, settings=RunSettings(jobs=jobs), log=lambda _line: None)
            # the revision before it leaves a gap a revision waiting to run alone could take
            add(root, "users", "2026-01-31T0000", "SELECT pg_sleep(0.3);\n")
            if UNSEEN_GRANTS[grant] == "python":
                (root / "services" / "users" / "dbhelpers.py").write_text(HELPER_MODULE)
                add(root, "users", "2026-02-01T0000", python_revision(
                    "users", "2026-02-01T0000", "users_202601310000", HELPER_REVISION), "py")
            else:
                add(root, "users", "2026-02-01T0000", UNSEEN_GRANTS[grant])
            add(root, "orders", "2026-02-01T0100",
                ("" if transactional else "-- migrate:no-transaction\n")
                + "CREATE VIEW v AS SELECT * FROM users.t;\n")
            lines: list[dict[str, object]] = []
            migrate(url, root, settings=RunSettings(jobs=jobs), log=lines.append)
            columns[jobs] = query(url, "SELECT column_name FROM information_schema.columns "
                                       "WHERE table_schema = 'orders' AND table_name = 'v'")
            assert applied(url) >= {"users_202602010000", "orders_202602010100"}
            outcomes = [line["outcome"] for line in lines
                        if line.get("revision") == "orders_202602010100"]
            if jobs == 2 and transactional:  # it ran before the grant, and again after it
                assert outcomes == ["retrying", "applied"], lines
            else:
                assert outcomes == ["applied"], lines
    assert columns[2] == columns[1] == [("id",)]


# Kind: a failure is final once a serial run would meet it too.
def test_a_failure_is_tried_again_only_while_an_earlier_revision_was_pending(
        tmp_path: Path, database_url: str) -> None:
    root = applied_base(tmp_path, database_url)
    add(root, "users", "2026-02-01T0000", "SELECT pg_sleep(0.5);\nCREATE TABLE later (id int);\n")
    add(root, "orders", "2026-02-01T0100", "CREATE VIEW v AS SELECT * FROM users.users;\n")
    lines: list[dict[str, object]] = []
    with pytest.raises(MigrationFailed, match="permission denied"):
        migrate(database_url, root, settings=RunSettings(jobs=2), log=lines.append)
    outcomes = [line["outcome"] for line in lines if line.get("revision") == "orders_202602010100"]
    assert outcomes == ["retrying", "failed"]  # once more after users', then final
    assert applied(database_url) == {"users_202601010000", "orders_202601010100",
                                     "users_202602010000"}
    assert lock_is_free(database_url)
    add(root, "orders", "2026-02-01T0100", "CREATE VIEW v AS SELECT 1 AS one;\n")
    add(root, "orders", "2026-02-01T0200", "CREATE TABLE broken (id int REFERENCES nowhere);\n")
    lines.clear()
    with pytest.raises(MigrationFailed, match="nowhere"):
        migrate(database_url, root, settings=RunSettings(jobs=2), log=lines.append)
    outcomes = [line["outcome"] for line in lines if line.get("revision") == "orders_202602010200"]
    assert outcomes == ["failed"]  # nothing before it was pending: a serial run fails too


# Kind: code that swallows the KeyboardInterrupt (a bare `except:`, `except BaseException`,
# `contextlib.suppress`, around a sleep or around a statement the interrupt cancels) or leaves
# signals ignored behind it: the run still stops, with 130; the revision that caught it is
# rolled back, and the other lane stops after its running revision.
SWALLOWERS = {
    "bare except": "    for _ in range(15):\n        try:\n            time.sleep(0.2)\n"
                   "        except:  # noqa: E722\n            pass\n",
    "except BaseException": "    for _ in range(15):\n        try:\n            time.sleep(0.2)\n"
                            "        except BaseException:\n            pass\n",
    "contextlib.suppress": "    import contextlib\n    for _ in range(15):\n"
                           "        with contextlib.suppress(KeyboardInterrupt):\n"
                           "            time.sleep(0.2)\n",
    "a cancelled statement caught": "    try:\n        op.execute('SELECT pg_sleep(3)')\n"
                                    "    except BaseException:\n        pass\n",
    "SIG_IGN left behind": "    import signal\n    signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                           "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n",
}


@pytest.mark.parametrize(("swallower", "jobs", "signal_number"), [
    ("bare except", 1, signal.SIGINT), ("bare except", 2, signal.SIGINT),
    ("bare except", 2, signal.SIGTERM), ("except BaseException", 2, signal.SIGINT),
    ("contextlib.suppress", 1, signal.SIGTERM), ("a cancelled statement caught", 1, signal.SIGINT),
    ("a cancelled statement caught", 2, signal.SIGTERM), ("SIG_IGN left behind", 1, signal.SIGINT),
    ("SIG_IGN left behind", 2, signal.SIGTERM)])
def test_a_revision_that_swallows_the_interrupt_does_not_keep_the_run_going(
        tmp_path: Path, database_url: str, swallower: str, jobs: int,
        signal_number: int) -> None:
    root = applied_base(tmp_path, database_url)
    body = ("    op.execute(\"SELECT 'swallowing'\")\n" + SWALLOWERS[swallower]
            + "    op.execute('CREATE TABLE swallowed (id int)')\n")
    add(root, "users", "2026-02-01T0000", python_revision(
        "users", "2026-02-01T0000", "users_202601010000", body), "py")
    add(root, "users", "2026-02-01T0001", "CREATE TABLE after_it (id int);\nSELECT pg_sleep(3);\n")
    add(root, "users", "2026-02-01T0002", "CREATE TABLE last_one (id int);\n")
    for minute in range(40):  # 20 s: still running when the signal comes, however slow the
        add(root, "orders", f"2026-02-01T01{minute:02d}",  # first Python revision's start
            f"CREATE TABLE o{minute} (id int);\nSELECT pg_sleep(0.5);\n")
    left_behind = "SIG_IGN" in swallower  # interrupted in the next revision, after it
    running = ("query LIKE '%%pg_sleep(3)%%'" if left_behind or "statement" in swallower
               else "query LIKE '%%swallowing%%'")
    stdout, stderr = interrupted_migrate(root, database_url, signal_number, running,
                                         args=("--jobs", str(jobs)))
    result = json.loads(stdout)
    assert result["outcome"] == "interrupted", stdout
    assert "Traceback" not in stderr
    state = ledger(database_url)
    assert {r["revision"] for r in result["applied"]} == {  # this run's, as in the ledger
        rev for rev, done in state.items() if done == "applied"} - {
        "users_202601010000", "orders_202601010100"}
    if left_behind:
        assert "users_202602010000" in state and "users_202602010001" not in state
    else:  # it caught the interrupt, so it is rolled back, whatever it did next
        assert "users_202602010000" not in state and "users_202602010001" not in state
        assert "swallowed" not in tables(database_url, "users")
        assert "interrupted during users_202602010000" in stderr
    assert "last_one" not in tables(database_url, "users")
    assert sum(rev.startswith("orders_2026020101") for rev in state) < 40  # the lane stopped
    assert lock_is_free(database_url)


# Kind: what an interrupt's message says a revision without a transaction left is what the
# ledger holds: dirty when it stopped halfway (a serial run), nothing when the lane that ran it
# was cancelled and cleaned up.
@pytest.mark.parametrize("jobs", [1, 2])
def test_an_interrupted_revision_without_a_transaction_is_reported_as_the_ledger_has_it(
        tmp_path: Path, database_url: str, jobs: int) -> None:
    root = applied_base(tmp_path, database_url)
    add(root, "users", "2026-02-01T0000", "SELECT pg_sleep(0.2);\n")
    add(root, "orders", "2026-02-01T0100", "-- migrate:no-transaction\n"
        "CREATE INDEX CONCURRENTLY orders_id ON orders (id);\nSELECT pg_sleep(60);\n")
    stdout, stderr = interrupted_migrate(root, database_url, signal.SIGINT,
                                         "query LIKE '%%pg_sleep(60)%%'",
                                         args=("--jobs", str(jobs)))
    assert json.loads(stdout)["outcome"] == "interrupted"
    last = stderr.strip().splitlines()[-1]
    state = ledger(database_url).get("orders_202602010100")
    assert ("left dirty" in last) == (state == "dirty"), (last, state)
    assert "interrupted during orders_202602010100" in last
    assert lock_is_free(database_url)


# Kind: whatever writes to stdout during a `--json` run — a thread a revision started that
# prints after the revision ended, `os.write(1, ...)`, a subprocess — stdout stays one object.
def test_json_stdout_stays_one_object_whatever_a_revision_leaves_running(
        tmp_path: Path, server_url: str) -> None:
    root = base_project(tmp_path)
    body = ("    import subprocess, sys, threading\n"
            "    def chatter():\n"
            "        while True:\n"
            "            print('tick')\n"
            "            os.write(1, b'raw tick\\n')\n"
            "            time.sleep(0.001)\n"
            "    threading.Thread(target=chatter, daemon=True).start()\n"
            "    subprocess.run([sys.executable, '-c', 'print(\"from a child\")'])\n")
    add(root, "users", "2026-02-01T0000", python_revision(
        "users", "2026-02-01T0000", "users_202601010000", body), "py")
    for minute in range(10):
        add(root, "orders", f"2026-02-01T01{minute:02d}", f"CREATE TABLE o{minute} (id int);\n")
    for jobs in ("1", "2"):
        with fresh_database(server_url) as url:
            done = run_cli(root, "migrate", "--json", "--jobs", jobs, database_url=url)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["outcome"] == "applied"
            assert "tick" in done.stderr and "from a child" in done.stderr


# Kind: a revision that fails for good, on any lane, in any way (a statement, a Python revision
# that ends its own transaction and is left dirty): the revisions before it in the plan are
# applied on every lane, as a serial run applies them, and none after it starts. (Plan order
# groups a service's revisions: users' three come before orders'.)
FAILURES = {
    "a statement fails": "CREATE TABLE broken (id int);\nSELECT 1 / 0;\n",
    "a revision ends its own transaction": python_revision(
        "orders", "2026-02-01T0100", "orders_202601010100",
        "    raw = op.get_bind().connection.driver_connection\n"
        "    raw.pgconn.exec_(b'CREATE TABLE escaped (id int); COMMIT; BEGIN')\n"
        "    op.execute('SELECT 1 / 0')\n"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_run_applies_what_a_serial_run_applies(
        tmp_path: Path, server_url: str, failure: str) -> None:
    states = {}
    for jobs in (1, 2):
        with fresh_database(server_url) as url:
            root = applied_base(tmp_path / f"p{jobs}", url)
            add(root, "users", "2026-02-01T0000", "SELECT pg_sleep(1);\n")
            add(root, "users", "2026-02-01T0001", "CREATE TABLE second (id int);\n")
            add(root, "users", "2026-02-01T0200", "CREATE TABLE third (id int);\n")
            text = FAILURES[failure]
            add(root, "orders", "2026-02-01T0100", text, "py" if "import" in text else "sql")
            add(root, "orders", "2026-02-01T0300", "CREATE TABLE after_it (id int);\n")
            with pytest.raises(MigrationFailed) as failed:
                migrate(url, root, settings=RunSettings(jobs=jobs), log=lambda _line: None)
            assert failed.value.revision == "orders_202602010100"
            states[jobs] = ledger(url)
            assert {"second", "third"} <= tables(url, "users")
            assert "after_it" not in tables(url, "orders")
            assert lock_is_free(url)
    assert states[2] == states[1]
    assert "orders_202602010300" not in states[1]


def test_nothing_after_a_revision_waiting_to_run_again_starts(
        tmp_path: Path, server_url: str) -> None:
    """From a third breaker: a revision failed once and waited to run again; meanwhile a later
    service's revision started on the freed lane and was applied, though the second attempt
    failed too and a serial run stops before it."""
    states = {}
    for jobs in (1, 2):
        with fresh_database(server_url) as url:
            root = write_project(tmp_path / f"p{jobs}", {
                "users": {"2026-01-01T0000__users__slow.sql": "SELECT pg_sleep(1.5);\n",
                          "2026-01-01T0001__users__next.sql": "CREATE TABLE u (id int);\n"},
                "orders": {"2026-01-01T0100__orders__ok.sql": "CREATE TABLE o (id int);\n",
                           "2026-01-01T0101__orders__bad.sql": "SELECT 1 / 0;\n"},
                "billing": {"2026-01-01T0200__billing__later.sql": "CREATE TABLE b (id int);\n"},
            })
            with pytest.raises(MigrationFailed, match="division by zero"):
                migrate(url, root, settings=RunSettings(jobs=jobs), log=lambda _line: None)
            states[jobs] = ledger(url)
    assert "billing_202601010200" not in states[1]
    assert states[2] == states[1]
