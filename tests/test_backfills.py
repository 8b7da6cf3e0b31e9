"""Backfills (issue 16): resumable, throttled batches outside the deploy, and revisions that wait
for them. On a real Postgres, each kind with inputs beyond the issue's examples:
- a run that stops at any point (SIGKILL mid-batch, the time limit, a pause) resumes from the
  last committed batch: every row is changed exactly once (a counter column proves it);
- a batch that fails on bad data names its key range, keeps earlier batches, and `retry`
  continues after the data is fixed; transient lock timeouts are retried, slow batches halved;
- batch sizes adapt to the target duration from below and from above;
- the database is in charge of what a batch may do: another service's tables, the progress
  row's state, are refused by Postgres (the batch runs as the service's owner);
- two runners of one backfill never both run it; an edited backfill is refused once started;
- the runner backs off while a long transaction is open;
- a revision that requires a backfill is held, saying how far the backfill is, until it has
  finished, then applied; an expand revision held in the expand phase is an error; a service
  created from nothing waives its own backfills;
- bad backfill files are refused with file:line before anything runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from migrations_runtime.engine.apply import migrate, read_plan
from migrations_runtime.engine.backfill import load_backfills
from migrations_runtime.engine.backfill_runner import (
    BackfillError,
    BackfillSettings,
    backfill_status,
    run_backfills,
    set_state,
)
from migrations_runtime.engine.discover import discover_services
from migrations_runtime.engine.errors import MigrationFileError, PlanError
from migrations_runtime.engine.validate import GraphError
from tests.conftest import query, run_cli, write_project

ROWS = 3000
QUIET = {"log": lambda _line: None}
# A counter column: a batch done twice would leave 2 in it.
ITEMS = (f"CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, qty int NOT "
         f"NULL, touched int NOT NULL DEFAULT 0, label text);\n"
         f"INSERT INTO items (qty) SELECT 1 + g % 7 FROM generate_series(1, {ROWS}) g;\n")
FILL = ("UPDATE items SET touched = touched + 1, label = 'q' || (100 / qty)\n"
        "WHERE id >= :start AND id < :end;\n")
# each batch sleeps: a run is slow enough to stop in the middle
SLOW_FILL = ("-- batch-size: 100\n"
             "UPDATE items SET touched = touched + 1, label = 'q' || qty\n"
             "WHERE id >= :start AND id < :end AND (SELECT true FROM pg_sleep(0.15));\n")
FAST = BackfillSettings(sleep_ms=0, target_batch_ms=200)


def project(tmp_path: Path, backfill: str = FILL, name: str = "fill",
            extra: dict[str, str] | None = None) -> Path:
    root = write_project(tmp_path / "p", {"items": {
        "2026-01-01T0000__items__create.sql": ITEMS, **(extra or {})}})
    folder = root / "services" / "items" / "backfills"
    folder.mkdir()
    (folder / f"2026-01-02T0000__items__{name}.sql").write_text(backfill)
    return root


def counts(url: str) -> tuple[int, int, int]:
    """(rows touched once, rows touched more than once, rows not touched)."""
    row = query(url, "SELECT count(*) FILTER (WHERE touched = 1), count(*) FILTER (WHERE "
                "touched > 1), count(*) FILTER (WHERE touched = 0) FROM items.items")[0]
    return row[0], row[1], row[2]


def progress(url: str, name: str = "items.fill") -> dict[str, object]:
    rows = query(url, "SELECT state, next_key, key_end, rows_done, batches, error "
                 "FROM svcmig.backfills WHERE name = %s", (name,))
    if not rows:
        return {}
    return dict(zip(("state", "next_key", "key_end", "rows_done", "batches", "error"), rows[0],
                    strict=True))


# --- resuming: a run stopped at any point continues, and no batch is done twice -------------

def test_sigkill_mid_batch_resumes_without_losing_or_doubling_a_batch(
        tmp_path: Path, database_url: str) -> None:
    root = project(tmp_path, SLOW_FILL)
    migrate(database_url, root, **QUIET)
    runner = subprocess.Popen(
        [sys.executable, "-m", "migrations_runtime.cli", "backfill", "run", "items.fill",
         "--sleep-ms", "0", "--target-ms", "150", "--database-url", database_url],
        env={**os.environ, "SVCMIG_PROJECT_ROOT": str(root)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and int(str(progress(database_url).get("batches") or 0)) < 3:
        time.sleep(0.05)
    time.sleep(0.07)  # inside the next batch's pg_sleep
    runner.send_signal(signal.SIGKILL)
    runner.wait(10)
    stopped = progress(database_url)
    assert stopped["state"] == "running" and 0 < int(str(stopped["batches"])) < ROWS // 100
    done_before = counts(database_url)
    assert done_before[1] == 0 and done_before[0] == stopped["rows_done"]
    # the killed backend notices within a second (client_connection_check_interval) and lets go
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and query(
            database_url, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
            "'svcmig-backfill%%' AND datname = current_database()")[0][0]:
        time.sleep(0.1)
    status = {s.backfill.name: s.state for s in backfill_status(database_url, root)}
    assert status["items.fill"] == "interrupted"
    results = run_backfills(database_url, root, ["items.fill"], FAST)
    assert [r.outcome for r in results] == ["finished"]
    assert counts(database_url) == (ROWS, 0, 0)
    assert progress(database_url)["rows_done"] == ROWS


def test_time_limit_stops_and_the_next_run_continues(tmp_path: Path, database_url: str) -> None:
    root = project(tmp_path, SLOW_FILL)
    migrate(database_url, root, **QUIET)
    first = run_backfills(database_url, root, None,
                          BackfillSettings(sleep_ms=0, target_batch_ms=150, max_seconds=0.5))
    assert first[0].outcome == "stopped" and 0 < first[0].rows < ROWS
    assert counts(database_url)[1] == 0
    again = run_backfills(database_url, root, None, FAST)
    assert again[0].outcome == "finished" and first[0].rows + again[0].rows == ROWS
    assert counts(database_url) == (ROWS, 0, 0)
    # finished is finished: another run does nothing
    assert run_backfills(database_url, root, None, FAST)[0].rows == 0
    assert counts(database_url) == (ROWS, 0, 0)


def test_pause_stops_a_running_runner_and_resume_continues(tmp_path: Path,
                                                           database_url: str) -> None:
    root = project(tmp_path, SLOW_FILL)
    migrate(database_url, root, **QUIET)
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.extend(
        run_backfills(database_url, root, ["items.fill"], FAST)))
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and int(str(progress(database_url).get("batches") or 0)) < 2:
        time.sleep(0.05)
    assert "paused" in set_state(database_url, "items.fill", "pause", root)
    thread.join(30)
    assert [r.outcome for r in outcome] == ["paused"]  # type: ignore[attr-defined]
    paused = progress(database_url)
    assert paused["state"] == "paused" and int(str(paused["next_key"])) < int(
        str(paused["key_end"]))
    # a run of everything leaves a paused backfill alone; naming it says what to do
    assert run_backfills(database_url, root, None, FAST)[0].outcome == "waiting"
    named = run_backfills(database_url, root, ["items.fill"], FAST)[0]
    assert named.outcome == "waiting" and "svcmig backfill resume items.fill" in named.message
    assert run_cli(root, "backfill", "run", "items.fill", database_url=database_url
                   ).returncode == 1
    with pytest.raises(BackfillError, match="only a failed backfill can be retried"):
        set_state(database_url, "items.fill", "retry", root)
    result = run_cli(root, "backfill", "resume", "items.fill", "--sleep-ms", "0", "--json",
                     database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["backfills"][0]["outcome"] == "finished"
    assert counts(database_url) == (ROWS, 0, 0)


def test_pause_before_start_keeps_the_deploy_runner_away(tmp_path: Path,
                                                         database_url: str) -> None:
    root = project(tmp_path)
    migrate(database_url, root, **QUIET)
    set_state(database_url, "items.fill", "pause", root)
    assert run_backfills(database_url, root, None, FAST)[0].outcome == "waiting"
    assert counts(database_url) == (0, 0, ROWS)
    set_state(database_url, "items.fill", "resume", root)
    assert run_backfills(database_url, root, None, FAST)[0].outcome == "finished"
    assert counts(database_url) == (ROWS, 0, 0)


# --- failures: bad data names its key range; retry continues ------------------------------

def test_a_batch_failing_on_bad_data_names_its_key_range_and_retry_continues(
        tmp_path: Path, database_url: str) -> None:
    root = project(tmp_path, "-- batch-size: 100\n" + FILL)
    migrate(database_url, root, **QUIET)
    query(database_url, "UPDATE items.items SET qty = 0 WHERE id = 1234")  # 100 / 0
    result = run_cli(root, "backfill", "run", "--sleep-ms", "0", "--target-ms", "10000",
                     "--max-batch-size", "100", database_url=database_url)
    assert result.returncode == 1
    failed = progress(database_url)
    assert failed["state"] == "failed"
    message = str(failed["error"])
    assert "division by zero" in message and "keys id >= 1201 and < 1301" in message
    assert "backfill__fill.sql" not in message and "2026-01-02T0000__items__fill.sql" in message
    assert "svcmig backfill retry items.fill" in message
    assert counts(database_url) == (1200, 0, ROWS - 1200)  # the batches before it stay done
    status = run_cli(root, "backfill", "status", database_url=database_url)
    assert status.returncode == 1 and "failed" in status.stdout and "1201" in status.stdout
    # retrying without a fix fails the same way, at the same place
    again = run_cli(root, "backfill", "retry", "items.fill", "--sleep-ms", "0",
                    database_url=database_url)
    assert again.returncode == 1 and counts(database_url)[0] == 1200
    query(database_url, "UPDATE items.items SET qty = 5 WHERE id = 1234")
    fixed = run_cli(root, "backfill", "retry", "items.fill", "--sleep-ms", "0",
                    database_url=database_url)
    assert fixed.returncode == 0, fixed.stderr
    assert counts(database_url) == (ROWS, 0, 0)
    assert progress(database_url)["error"] is None


def ending_on(events: list[dict[str, object]], event: str,
              end: Callable[[], None]) -> Callable[[dict[str, object]], None]:
    """A runner's log that keeps every event and calls `end` (ending what holds the runner
    back) once the runner has logged `event`: the test sees the runner react to the hold
    however long its start took, where a timer might have ended the hold before it began."""
    def log(line: dict[str, object]) -> None:
        events.append(line)
        if line["event"] == event:
            end()
    return log


def test_a_lock_held_elsewhere_is_waited_out_not_failed(tmp_path: Path,
                                                        database_url: str) -> None:
    root = project(tmp_path)
    migrate(database_url, root, **QUIET)
    events: list[dict[str, object]] = []
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT * FROM items.items WHERE id = 10 FOR UPDATE")
        results = run_backfills(database_url, root, None,
                                BackfillSettings(sleep_ms=0, lock_timeout_ms=200,
                                                 max_transaction_age_s=3600,
                                                 max_lock_wait_s=3600),
                                log=ending_on(events, "backfill_retry", holder.rollback))
    assert results[0].outcome == "finished"
    assert any(e["event"] == "backfill_retry" for e in events)
    assert counts(database_url) == (ROWS, 0, 0)


# --- pacing: adaptive batch size, statement timeout, back-off ----------------------------

# 0.1 ms of sleep per key in the range: the right size for a 100 ms target is ~1,000 keys
PACED = ("-- batch-size: {size}\n"
         "UPDATE items SET touched = touched + 1 WHERE id >= :start AND id < :end\n"
         "AND (SELECT true FROM pg_sleep((:end - :start) * 0.0001));\n")


@pytest.mark.parametrize("first_size", [10, 20_000])
def test_batch_size_adapts_to_the_target_duration(tmp_path: Path, database_url: str,
                                                  first_size: int) -> None:
    """From below it grows (at most 2x a batch); from above a batch over the statement timeout
    is halved and retried, then sizes settle near the target."""
    extra = "INSERT INTO items (qty) SELECT 1 FROM generate_series(1, 27000);\n"
    root = project(tmp_path, PACED.format(size=first_size), extra={
        "2026-01-01T0100__items__more.sql": extra})
    migrate(database_url, root, **QUIET)
    events: list[dict[str, object]] = []
    run_backfills(database_url, root, None,
                  BackfillSettings(sleep_ms=0, target_batch_ms=100, statement_timeout_ms=600),
                  log=events.append)
    sizes = [int(str(e["end"])) - int(str(e["start"])) for e in events
             if e["event"] == "backfill_batch"]
    assert counts(database_url) == (30_000, 0, 0)
    settled = sizes[len(sizes) // 2:-1]  # the last batch is cut at the end of the range
    assert settled and all(250 <= s <= 4000 for s in settled), sizes
    if first_size == 10:
        assert sizes[:4] == [10, 20, 40, 80]  # doubling while far below the target
    else:
        assert any(e["event"] == "backfill_retry" and e["reason"] == "statement timeout"
                   for e in events)


def test_backs_off_while_a_long_transaction_is_open(tmp_path: Path, database_url: str) -> None:
    root = project(tmp_path)
    migrate(database_url, root, **QUIET)
    events: list[dict[str, object]] = []
    with psycopg.connect(database_url) as old:
        old.execute("SELECT 1")  # a transaction, open from now on
        time.sleep(0.6)
        results = run_backfills(database_url, root, None,
                                BackfillSettings(sleep_ms=0, max_transaction_age_s=0.5),
                                log=ending_on(events, "backfill_throttled", old.rollback))
    throttled = [e for e in events if e["event"] == "backfill_throttled"]
    assert throttled and "transaction has been open" in str(throttled[0]["reason"])
    assert results[0].outcome == "finished" and counts(database_url) == (ROWS, 0, 0)


# --- the database decides what a batch may do ---------------------------------------------

def test_a_batch_cannot_write_another_service_or_its_own_progress_state(
        tmp_path: Path, database_url: str) -> None:
    root = write_project(tmp_path / "p", {
        "items": {"2026-01-01T0000__items__create.sql": ITEMS},
        "users": {"2026-01-01T0000__users__create.sql":
                  "CREATE TABLE users (id bigint PRIMARY KEY, plan text);\n"
                  "INSERT INTO users VALUES (1, NULL);\n"}})
    folder = root / "services" / "items" / "backfills"
    folder.mkdir()
    # hidden from any parser: dynamic SQL against another service, then against the progress row
    (folder / "2026-01-02T0000__items__escape.py").write_text(
        'key = "items.id"\n\n'
        "def batch(conn, start, end):\n"
        "    conn.execute(\"DO $$ BEGIN EXECUTE 'UPDATE users.users SET plan = ''x'''; END $$\")\n"
        "    return 0\n")
    (folder / "2026-01-02T0100__items__forge.py").write_text(
        'key = "items.id"\n\n'
        "def batch(conn, start, end):\n"
        "    conn.execute(\"UPDATE svcmig.backfills SET state = 'finished' "
        "WHERE name = 'items.forge'\")\n"
        "    return 0\n")
    migrate(database_url, root, **QUIET)
    results = {r.name: r for r in run_backfills(database_url, root, None, FAST)}
    assert results["items.escape"].outcome == "failed"
    assert "permission denied for schema users" in results["items.escape"].message
    assert results["items.forge"].outcome == "failed"
    assert "permission denied for table backfills" in results["items.forge"].message
    assert query(database_url, "SELECT plan FROM users.users") == [(None,)]


def test_two_runners_of_one_backfill_never_both_run_it(tmp_path: Path,
                                                       database_url: str) -> None:
    root = project(tmp_path, SLOW_FILL)
    migrate(database_url, root, **QUIET)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        result = run_backfills(database_url, root, None, FAST)[0]
        with lock:
            outcomes.append(result.outcome)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(outcomes) == ["busy", "busy", "finished"]
    assert counts(database_url) == (ROWS, 0, 0)


def test_an_edited_backfill_is_refused_once_a_batch_ran(tmp_path: Path,
                                                        database_url: str) -> None:
    root = project(tmp_path, SLOW_FILL)
    migrate(database_url, root, **QUIET)
    path = root / "services/items/backfills/2026-01-02T0000__items__fill.sql"
    # paused before its first batch, it may still be fixed
    set_state(database_url, "items.fill", "pause", root)
    path.write_text(SLOW_FILL.replace("'q'", "'p'"))
    set_state(database_url, "items.fill", "resume", root)
    first = run_backfills(database_url, root, None,
                          BackfillSettings(sleep_ms=0, max_seconds=0.3))[0]
    assert first.outcome == "stopped" and first.batches >= 1
    path.write_text(SLOW_FILL.replace("'q'", "'r'"))
    refused = run_backfills(database_url, root, ["items.fill"], FAST)[0]
    assert refused.outcome == "failed" and "edited after it started" in refused.message
    assert progress(database_url)["state"] == "failed"  # the deploy's runner leaves it alone
    assert query(database_url, "SELECT count(*) FROM items.items WHERE label = 'r' || qty"
                 ) == [(0,)]
    # once finished, an edit changes nothing and is no error
    path.write_text(SLOW_FILL.replace("'q'", "'p'"))
    set_state(database_url, "items.fill", "retry", root)
    run_backfills(database_url, root, None, FAST)
    path.write_text(SLOW_FILL + "-- a comment\n")
    assert run_backfills(database_url, root, None, FAST)[0].outcome == "finished"


@pytest.mark.parametrize(("create", "problem"), [
    ("CREATE TABLE items (id text PRIMARY KEY, touched int);", "the key items.items.id is text"),
    ("CREATE TABLE items (id bigint, touched int);", "no valid index starts with"),
])
def test_a_key_that_cannot_be_walked_is_refused(tmp_path: Path, database_url: str,
                                                create: str, problem: str) -> None:
    root = write_project(tmp_path / "p", {"items": {"2026-01-01T0000__items__create.sql":
                                                    create}})
    (root / "services/items/backfills").mkdir()
    (root / "services/items/backfills/2026-01-02T0000__items__fill.sql").write_text(
        "UPDATE items SET touched = 1 WHERE id >= :start AND id < :end;")
    migrate(database_url, root, **QUIET)
    (root / "services/items/backfills/2026-01-03T0000__items__other.sql").write_text(
        "DELETE FROM items WHERE touched >= :start AND touched < :end;")
    query(database_url, "CREATE INDEX ON items.items (touched)")
    results = run_backfills(database_url, root, None, FAST)
    assert results[0].outcome == "failed" and problem in results[0].message
    assert results[1].outcome == "finished"  # the one that cannot start stops no other


def test_an_empty_table_finishes_at_once(tmp_path: Path, database_url: str) -> None:
    root = project(tmp_path)
    migrate(database_url, root, **QUIET)
    query(database_url, "DELETE FROM items.items")
    assert run_backfills(database_url, root, None, FAST)[0].outcome == "finished"


# --- revisions that wait for a backfill ----------------------------------------------------

CONTRACT = ("-- phase: contract\n-- requires-backfill: items.fill\n"
            "ALTER TABLE items ALTER COLUMN label SET NOT NULL;\n")


def test_a_contract_revision_waits_until_its_backfill_finished(tmp_path: Path,
                                                               database_url: str) -> None:
    root = project(tmp_path, SLOW_FILL)
    migrate(database_url, root, **QUIET)  # the table, with rows: this database is not fresh
    (root / "services/items/migrations/2026-01-03T0000__items__label_required.sql").write_text(
        CONTRACT)
    warnings: list[dict[str, object]] = []
    result = migrate(database_url, root, log=warnings.append)
    assert result.results == ()
    held = [w for w in warnings if w.get("kind") == "waiting_backfill"]
    assert held and "items.fill (not started)" in str(held[0]["message"])
    assert "svcmig backfill run items.fill" in str(held[0]["message"])
    # partly done: the message says how far
    run_backfills(database_url, root, None, BackfillSettings(sleep_ms=0, max_seconds=0.6))
    plan = read_plan(database_url, root)
    waiting = [a for a in plan.anomalies if a.kind == "waiting_backfill"]
    assert waiting and "unfinished" in waiting[0].message and "% of its key range done" in \
        waiting[0].message
    assert not plan.steps
    status = run_cli(root, "status", database_url=database_url)
    assert status.returncode == 0 and "waits for backfill items.fill" in status.stdout + \
        status.stderr
    run_backfills(database_url, root, None, FAST)
    applied = migrate(database_url, root, **QUIET)
    assert [r.revision for r in applied.results] == ["items_202601030000"]
    assert query(database_url, "SELECT count(*) FROM items.items WHERE label IS NULL") == [(0,)]


def test_an_expand_revision_held_in_the_expand_phase_is_an_error(tmp_path: Path,
                                                                 database_url: str) -> None:
    root = project(tmp_path)
    migrate(database_url, root, **QUIET)
    (root / "services/items/migrations/2026-01-03T0000__items__index_label.sql").write_text(
        "-- requires-backfill: items.fill\nCREATE INDEX items_label ON items (label);\n")
    with pytest.raises(PlanError, match="waits for backfill items.fill"):
        migrate(database_url, root, phase="expand", **QUIET)
    result = run_cli(root, "migrate", "--phase", "expand", database_url=database_url)
    assert result.returncode == 1 and "waits for backfill items.fill" in result.stderr


def test_a_failed_backfill_holds_its_revision_and_says_why(tmp_path: Path,
                                                           database_url: str) -> None:
    root = project(tmp_path)
    migrate(database_url, root, **QUIET)
    query(database_url, "UPDATE items.items SET qty = 0 WHERE id = 7")
    run_backfills(database_url, root, None, FAST)
    (root / "services/items/migrations/2026-01-03T0000__items__label_required.sql").write_text(
        CONTRACT)
    plan = read_plan(database_url, root)
    message = next(a.message for a in plan.anomalies if a.kind == "waiting_backfill")
    assert "failed" in message and "division by zero" in message
    assert "fix what failed, then `svcmig backfill retry items.fill`" in message
    set_state(database_url, "items.fill", "retry", root)
    set_state(database_url, "items.fill", "pause", root)
    paused = next(a.message for a in read_plan(database_url, root).anomalies
                  if a.kind == "waiting_backfill")
    assert "items.fill (paused with 0% of its key range done" in paused
    assert "`svcmig backfill resume items.fill`" in paused


def test_a_service_created_from_nothing_waives_its_own_backfills(tmp_path: Path,
                                                                 database_url: str) -> None:
    root = project(tmp_path, extra={
        "2026-01-03T0000__items__label_required.sql": CONTRACT.replace(
            "ALTER TABLE", "UPDATE items SET label = 'x';\nALTER TABLE")})
    result = migrate(database_url, root, **QUIET)
    assert len(result.results) == 2
    state = progress(database_url)
    assert state["state"] == "finished" and state["rows_done"] == 0
    assert "not needed" in query(database_url, "SELECT note FROM svcmig.backfills")[0][0]
    assert run_backfills(database_url, root, None, FAST)[0].rows == 0


# --- bad files: refused before anything runs, with file:line --------------------------------

BAD_BACKFILLS = {
    "two statements": ("UPDATE items SET touched = 1 WHERE id >= :start AND id < :end;\n"
                       "DELETE FROM items WHERE id >= :start AND id < :end;", "one statement"),
    "no end bound": ("UPDATE items SET touched = 1 WHERE id >= :start;", "does not use :end"),
    "schema change": ("ALTER TABLE items ADD COLUMN x int; -- :start :end", "schema changes"),
    "select": ("SELECT * FROM items WHERE id >= :start AND id < :end", "this is Select"),
    "key not said": ("INSERT INTO items (qty) SELECT qty FROM items WHERE id >= :start AND "
                     "id < :end", "-- key: <table>.<column>"),
    "bad key": ("-- key: items\nUPDATE items SET touched = 1 WHERE id >= :start AND id < :end",
                "must name a table"),
    "bad batch size": ("-- batch-size: 0\nUPDATE items SET touched = 1 WHERE id >= :start AND "
                       "id < :end", "positive whole number"),
    "revision directive": ("-- phase: contract\nUPDATE items SET touched = 1 WHERE id >= :start "
                           "AND id < :end", "a revision's directive"),
    "another schema": ("UPDATE users.users SET plan = 1 WHERE id >= :start AND id < :end",
                       "a table of another schema"),
    "the runner's table": ("-- key: items.id\nUPDATE svcmig.backfills SET next_key = 1 WHERE "
                           "EXISTS (SELECT FROM items WHERE id >= :start AND id < :end)",
                           "a table of another schema"),
    "syntax error": ("UPDATE items SET WHERE id >= :start AND id < :end", "syntax error"),
    "no statement": ("-- WHERE id >= :start AND id < :end\n", "has no statement"),
}


@pytest.mark.parametrize("kind", sorted(BAD_BACKFILLS))
def test_bad_backfill_files_are_refused_naming_the_file(tmp_path: Path, kind: str) -> None:
    text, problem = BAD_BACKFILLS[kind]
    root = project(tmp_path, text)
    with pytest.raises(MigrationFileError, match=problem) as caught:
        load_backfills(discover_services(root))
    assert "2026-01-02T0000__items__fill.sql" in str(caught.value)


@pytest.mark.parametrize(("name", "text", "problem"), [
    ("2026-01-02T0000__orders__fill.sql", FILL, "lives in services/items/"),
    ("fill.sql", FILL, "file name does not follow"),
    ("2026-01-02T0000__items__batchless.py", 'key = "items.id"\n', "defines batch"),
    ("2026-01-02T0000__items__keyless.py", "def batch(conn, start, end):\n    return 0\n",
     "key must name"),
])
def test_misplaced_or_incomplete_backfill_files(tmp_path: Path, name: str, text: str,
                                                problem: str) -> None:
    root = write_project(tmp_path / "p", {"items": {"2026-01-01T0000__items__create.sql":
                                                    ITEMS}})
    (root / "services/items/backfills").mkdir()
    (root / "services/items/backfills" / name).write_text(text)
    with pytest.raises(MigrationFileError, match=problem):
        load_backfills(discover_services(root))


def test_the_key_is_read_from_the_statement_or_the_header(tmp_path: Path) -> None:
    root = project(tmp_path, "-- a comment\nDELETE FROM items.items\n"
                   "WHERE :start <= id AND id < :end AND qty = 0;")
    backfill = load_backfills(discover_services(root))["items.fill"]
    assert (backfill.table, backfill.key, backfill.statement_line) == ("items", "id", 2)
    assert "$1     <= id" in backfill.statement and ":start" not in backfill.statement
    root2 = project(tmp_path / "b", "-- key: items.items.id\n-- batch-size: 50\n"
                    "INSERT INTO items (qty) SELECT qty FROM items WHERE id >= :start AND "
                    "id < :end AND note = ':start'")
    backfill = load_backfills(discover_services(root2))["items.fill"]
    assert (backfill.table, backfill.key, backfill.batch_size) == ("items", "id", 50)
    assert "':start'" in backfill.statement  # a string literal is data, not a bound
    root3 = project(tmp_path / "c", "UPDATE items SET qty = 1 WHERE id >= :start::bigint "
                    "AND id < :end::bigint")
    assert load_backfills(discover_services(root3))["items.fill"].key == "id"  # through a cast


@pytest.mark.parametrize(("header", "problem"), [
    ("-- requires-backfill: items.nothing", "has no file"),
    ("-- requires-backfill: fill", "backfill names such as"),
    ("-- requires backfill items.fill", "without its colon"),
    ("-- requires-backfil: items.fill", "did you mean"),
])
def test_requires_backfill_must_name_a_backfill(tmp_path: Path, header: str,
                                                problem: str) -> None:
    from migrations_runtime.engine.validate import build_graph

    root = project(tmp_path, extra={"2026-01-03T0000__items__contract.sql":
                                    f"-- phase: contract\n{header}\nSELECT 1;\n"})
    with pytest.raises((GraphError, MigrationFileError), match=problem):
        build_graph(root)


def test_python_revisions_declare_requires_backfill(tmp_path: Path) -> None:
    from migrations_runtime.engine.validate import build_graph

    root = project(tmp_path, extra={"2026-01-03T0000__items__contract.py": (
        'revision = "items_202601030000"\ndown_revision = "items_202601010000"\n'
        'phase = "contract"\nrequires_backfill = ["items.fill"]\n\n'
        "def upgrade():\n    pass\n")})
    graph = build_graph(root)
    assert graph.revisions["items_202601030000"].requires_backfill == ("items.fill",)


# --- a Python batch's own mistakes fail the backfill, in one line, and lose nothing ---------

@pytest.mark.parametrize(("body", "problem"), [
    ("    return 'many'", "batch() returned 'many'"),
    ("    raise RuntimeError('no network')", "batch() raised RuntimeError('no network')"),
    ("    conn.execute('UPDATE items SET touched = touched + 1 WHERE id >= %s AND id < %s',"
     " (start, end))\n    conn.execute('COMMIT')\n    return 1", "ended its transaction"),
    ("    conn.commit()", "may not commit"),
    ("    conn.execute('SELECT nonsense FROM items')", 'column "nonsense" does not exist'),
    ("    return -5", "batch() returned -5"),
    ("    conn.execute('UPDATE items SET qty = qty WHERE id >= %s AND id < %s', (start, end))",
     "batch() returned None"),
    ("    import sys\n    sys.exit(0)", "batch() called sys.exit(0)"),
])
def test_a_python_batch_that_misbehaves_fails_the_backfill(tmp_path: Path, database_url: str,
                                                           body: str, problem: str) -> None:
    root = write_project(tmp_path / "p", {"items": {"2026-01-01T0000__items__create.sql":
                                                    ITEMS}})
    (root / "services/items/backfills").mkdir()
    (root / "services/items/backfills/2026-01-02T0000__items__fill.py").write_text(
        'key = "items.id"\nbatch_size = 500\n\ndef batch(conn, start, end):\n' + body + "\n")
    migrate(database_url, root, **QUIET)
    result = run_backfills(database_url, root, None, FAST)[0]
    assert result.outcome == "failed" and problem in result.message, result.message
    assert "keys id >= 1 and < 501" in result.message
    state = progress(database_url)
    assert state["state"] == "failed" and state["next_key"] == 1 and state["batches"] == 0
    # nothing half-done but what the message owns up to: only the COMMIT case changed rows
    touched = counts(database_url)
    assert touched[1] == 0 and touched[0] in (0, 500)


# --- one backfill cannot move another's progress, nor its own -------------------------------

HIDDEN = (
    'key = "items.id"\n\n'
    "def batch(conn, start, end):\n"
    "    conn.execute(\"DO $$ BEGIN EXECUTE 'UPDATE svcmig.backfills SET next_key = 100000000, \"\n"
    "                 \"state = ''finished'' WHERE name = ''items.victim'''; END $$\")\n"
    "    return 0\n")


def test_a_backfill_cannot_move_another_backfills_progress(tmp_path: Path,
                                                           database_url: str) -> None:
    """The skipper runs as the same service's owner; Postgres (row-level security bound to the
    runner's session) hides the victim's row from it, written out or in dynamic SQL."""
    root = project(tmp_path, SLOW_FILL, name="victim")
    folder = root / "services/items/backfills"
    (folder / "2026-01-02T0100__items__skipper.sql").write_text(
        "-- key: items.id\n"
        "WITH p AS (UPDATE svcmig.backfills SET next_key = 100000000 WHERE name = "
        "'items.victim' RETURNING 1)\n"
        "UPDATE items SET qty = qty WHERE id >= :start AND id < :end AND (SELECT count(*) "
        "FROM p) >= 0;\n")
    (folder / "2026-01-02T0200__items__hidden.py").write_text(HIDDEN)
    migrate(database_url, root, **QUIET)
    run_backfills(database_url, root, ["items.victim"],
                  BackfillSettings(sleep_ms=0, max_seconds=0.4))
    before = progress(database_url, "items.victim")
    others = {r.name: r for r in run_backfills(database_url, root,
                                               ["items.skipper", "items.hidden"], FAST)}
    assert others["items.skipper"].outcome == "finished"  # it moved nothing: the row is hidden
    assert others["items.hidden"].outcome == "failed"  # the state column is not its to write
    assert progress(database_url, "items.victim") == before
    assert run_backfills(database_url, root, ["items.victim"], FAST)[0].outcome == "finished"
    assert counts(database_url) == (ROWS, 0, 0)


def test_a_batch_that_writes_its_own_progress_row_fails(tmp_path: Path,
                                                        database_url: str) -> None:
    root = project(tmp_path, "-- key: items.id\n"
                   "WITH p AS (UPDATE svcmig.backfills SET rows_done = rows_done + 1000000 "
                   "WHERE name = 'items.fill' RETURNING 1)\n"
                   "UPDATE items SET touched = touched + 1 WHERE id >= :start AND id < :end "
                   "AND (SELECT count(*) FROM p) >= 0;\n")
    migrate(database_url, root, **QUIET)
    result = run_backfills(database_url, root, None, FAST)[0]
    assert result.outcome == "failed" and "changed its own progress row" in result.message
    assert progress(database_url)["rows_done"] == 0 and counts(database_url)[0] == 0


# --- keys: gaps, limits -----------------------------------------------------------------------

def keyed_project(tmp_path: Path, keys: tuple[int, ...]) -> Path:
    values = ", ".join(f"({k})" for k in keys)
    root = write_project(tmp_path / "p", {"items": {"2026-01-01T0000__items__create.sql": (
        "CREATE TABLE items (id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0);\n"
        f"INSERT INTO items (id) VALUES {values};\n")}})
    (root / "services/items/backfills").mkdir()
    (root / "services/items/backfills/2026-01-02T0000__items__fill.sql").write_text(
        "UPDATE items SET touched = touched + 1 WHERE id >= :start AND id < :end;")
    return root


@pytest.mark.parametrize("keys", [
    (1, 10**12),  # snowflake-like gaps
    (-2**63, 0, 2**62),  # the smallest bigint, far apart
    (1, 2, 3, 2**31 - 1, 2**31, 5 * 10**9),
])
def test_gaps_in_the_keys_cost_no_batches(tmp_path: Path, database_url: str,
                                          keys: tuple[int, ...]) -> None:
    root = keyed_project(tmp_path, keys)
    migrate(database_url, root, **QUIET)
    result = run_backfills(database_url, root, None, FAST)[0]
    assert result.outcome == "finished" and result.rows == len(keys)
    assert result.batches <= len(keys) + 1
    assert query(database_url, "SELECT count(*) FROM items.items WHERE touched = 1") == [
        (len(keys),)]


def test_the_largest_bigint_as_a_key_is_refused_in_one_line(tmp_path: Path,
                                                            database_url: str) -> None:
    root = keyed_project(tmp_path, (1, 2**63 - 1))
    migrate(database_url, root, **QUIET)
    result = run_cli(root, "backfill", "run", "--json", database_url=database_url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [outcome] = json.loads(result.stdout)["backfills"]
    assert outcome["outcome"] == "failed" and "the largest bigint" in outcome["message"]


def test_one_broken_backfill_file_stops_no_other(tmp_path: Path, database_url: str) -> None:
    root = project(tmp_path)
    (root / "services/items/backfills/2026-01-03T0000__items__broken.sql").write_text(
        "UPDATE items SET touched = 1 WHERE id >= :start;")
    migrate(database_url, root, **QUIET)  # migrating does not read backfill files
    ran = run_cli(root, "backfill", "run", "--json", "--sleep-ms", "0",
                  database_url=database_url)
    assert ran.returncode == 1
    outcomes = {r["name"]: r for r in json.loads(ran.stdout)["backfills"]}
    assert outcomes["items.fill"]["outcome"] == "finished"
    assert outcomes["items.broken"]["outcome"] == "failed"
    assert "does not use :end" in outcomes["items.broken"]["message"]
    status = run_cli(root, "backfill", "status", database_url=database_url)
    assert status.returncode == 1
    assert "items.broken" in status.stdout and "invalid" in status.stdout
    assert "items.fill" in status.stdout and "finished" in status.stdout


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_max_seconds_must_be_a_positive_number(tmp_path: Path, value: str) -> None:
    root = project(tmp_path)
    result = run_cli(root, "backfill", "run", "--max-seconds", value,
                     database_url="postgresql://postgres@127.0.0.1:1/nothing")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


def test_pause_resume_retry_work_beside_a_broken_file(tmp_path: Path, database_url: str) -> None:
    root = project(tmp_path)
    (root / "services/items/backfills/2026-01-03T0000__items__broken.sql").write_text(
        "UPDATE items SET touched = 1 WHERE id >= :start AND id < :end; SELECT 1;")
    migrate(database_url, root, **QUIET)
    assert "paused" in set_state(database_url, "items.fill", "pause", root)
    set_state(database_url, "items.fill", "resume", root)
    with pytest.raises(BackfillError, match="one statement"):
        set_state(database_url, "items.broken", "pause", root)
    unknown = run_cli(root, "backfill", "pause", "items.nothing", database_url=database_url)
    assert unknown.returncode == 2 and "no backfill 'items.nothing'" in unknown.stderr


@pytest.mark.parametrize(("create", "problem"), [
    ("CREATE TABLE base (id bigint PRIMARY KEY, touched int);\n"
     "CREATE VIEW items AS SELECT * FROM base;", "is not a table"),
    ("CREATE TABLE items (id bigint, touched int);", "no valid index starts with"),
])
def test_a_backfill_that_cannot_start_is_failed_with_why(tmp_path: Path, database_url: str,
                                                         create: str, problem: str) -> None:
    """Recorded, so status and the planner say why, not `pending` / `not started`."""
    root = write_project(tmp_path / "p", {"items": {
        "2026-01-01T0000__items__create.sql": create,
        "2026-01-03T0000__items__later.sql": "-- requires-backfill: items.fill\nSELECT 1;\n"}})
    (root / "services/items/backfills").mkdir()
    (root / "services/items/backfills/2026-01-02T0000__items__fill.sql").write_text(
        "UPDATE items SET touched = 1 WHERE id >= :start AND id < :end;")
    migrate(database_url, root, target="items_202601010000", **QUIET)
    assert run_backfills(database_url, root, None, FAST)[0].outcome == "failed"
    status = run_cli(root, "backfill", "status", database_url=database_url)
    assert status.returncode == 1 and "failed" in status.stdout and problem in status.stdout
    held = next(a.message for a in read_plan(database_url, root).anomalies
                if a.kind == "waiting_backfill")
    assert problem in held and "svcmig backfill retry items.fill" in held


def test_rows_with_a_null_key_are_said_to_be_skipped(tmp_path: Path, database_url: str) -> None:
    root = project(tmp_path, "-- key: items.qty\nUPDATE items SET touched = touched + 1 "
                   "WHERE qty >= :start AND qty < :end;\n", extra={
                       "2026-01-01T0100__items__nullable.sql":
                       "ALTER TABLE items ALTER COLUMN qty DROP NOT NULL;\n"
                       "UPDATE items SET qty = NULL WHERE id <= 10;\n"
                       "CREATE INDEX items_qty ON items (qty);\n"})
    migrate(database_url, root, **QUIET)
    events: list[dict[str, object]] = []
    assert run_backfills(database_url, root, None, FAST, log=events.append)[0].rows == ROWS - 10
    warning = next(e for e in events if e["event"] == "backfill_warning")
    assert "never visited" in str(warning["message"])


def test_the_key_index_dropped_while_running_fails_the_backfill(tmp_path: Path,
                                                               database_url: str) -> None:
    root = project(tmp_path, SLOW_FILL)
    migrate(database_url, root, **QUIET)
    query(database_url, "CREATE UNIQUE INDEX items_id_copy ON items.items (id)")
    query(database_url, "ALTER TABLE items.items DROP CONSTRAINT items_pkey")
    dropper = threading.Timer(1.0, lambda: query(database_url, "DROP INDEX items.items_id_copy"))
    dropper.start()
    result = run_backfills(database_url, root, None,
                           BackfillSettings(sleep_ms=0, max_batch_size=100))[0]
    dropper.join()
    assert result.outcome == "failed" and "index on items.items.id is gone" in result.message
    assert progress(database_url)["state"] == "failed"
    assert counts(database_url)[1] == 0
