"""Revisions that share a round trip (`Runner.apply_batch`, build point 8 of issue 10).

The kind: consecutive single-statement SQL revisions of one service go to the server in one
batch, each still in its own transaction with its own ledger row and session reset. Whatever
the runner promises for a revision run alone must hold for one in a batch, wherever in the
batch it sits: its own duration, its own failure (with its file and line, the revisions
before it kept, none after it run), its lock attempts, its lock-hold warnings, a lost session,
an interrupt. Each test fails if the batch path loses one of those (checked against the same
revision run alone, `batch_limit=1`, where that is the promise).
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrations_runtime.engine import apply as apply_module
from migrations_runtime.engine.apply import COMMIT as COMMIT_SQL
from migrations_runtime.engine.apply import RunSettings, migrate
from migrations_runtime.engine.errors import MigrationFailed
from migrations_runtime.engine.lockwait import LockPolicy
from tests.conftest import query, url_for
from tests.test_containment import (
    LEAK_CHECKS,
    QUIET,
    add,
    base_project,
    interrupted_migrate,
    ledger,
    lock_is_free,
)
from tests.test_lock_policy import Blocker, releasing_after

QUICK = LockPolicy(first_timeout_ms=100, max_timeout_ms=200, pause_ms=50, budget_seconds=20)


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """The revision ids of each batch the runner sends (the real runner, only watched)."""
    seen: list[list[str]] = []
    real = apply_module.Runner.apply_batch

    def watched(self: apply_module.Runner, batch: list) -> Iterator:  # type: ignore[type-arg]
        seen.append([revision.id for revision, _ in batch])
        return real(self, batch)

    monkeypatch.setattr(apply_module.Runner, "apply_batch", watched)
    yield seen


def migrated(tmp_path: Path, url: str) -> Path:
    root = base_project(tmp_path)
    migrate(url, root, **QUIET)
    return root


def table(name: str) -> str:
    """A revision whose statement would queue traffic while it waited (CREATE TABLE AS), as
    the other test revisions' do: a batch holds revisions of one lock policy."""
    return f"CREATE TABLE users.{name} AS SELECT 1 AS id;"


def revisions(root: Path, *texts: str) -> list[str]:
    """`texts` as users revisions, one a day from 2026-02-01; their ids."""
    ids = []
    for day, text in enumerate(texts, start=1):
        stamp = f"2026-02-{day:02d}T0000"
        add(root, "users", stamp, text)
        ids.append(f"users_202602{day:02d}0000")
    return ids


def test_a_batch_gives_each_revision_its_own_transaction_and_duration(
        tmp_path: Path, database_url: str, batches: list[list[str]]) -> None:
    """A duration counted from the batch's start (the server's `statement_timestamp()`) would
    give the revisions after the slow one its 400 ms too."""
    root = migrated(tmp_path, database_url)
    ids = revisions(root, table("a"),
                    "CREATE TABLE users.slow AS SELECT pg_sleep(0.4) IS NULL AS slept;",
                    table("b"), "ALTER TABLE users.b ADD COLUMN x int;")
    result = migrate(database_url, root, **QUIET)
    assert batches == [ids]
    assert [r.revision for r in result.results] == ids
    rows = dict(query(database_url, "SELECT revision, duration_ms FROM "
                                    "svcmig.schema_migrations WHERE revision = ANY(%s)", (ids,)))
    assert rows[ids[1]] >= 400
    assert all(rows[i] < 400 for i in (ids[0], ids[2], ids[3])), rows
    assert {r.revision: r.duration_ms >= 400 for r in result.results} == {
        ids[0]: False, ids[1]: True, ids[2]: False, ids[3]: False}
    assert query(database_url, "SELECT count(DISTINCT xmin::text) FROM svcmig.schema_migrations "
                               "WHERE revision = ANY(%s)", (ids,)) == [(4,)]


FAILING = {
    # the statement fails: the error and its line (the server counts from the batch's start)
    "statement-line-3": "CREATE TABLE users.broken AS SELECT\n  1 AS id,\n  nosuchcolumn AS x;",
    "statement-constraint": "INSERT INTO users.users (id, email) OVERRIDING SYSTEM VALUE "
                            "VALUES (1, 'again@example.com');",
    # the runner's own statements fail: a deferred constraint checked before the ledger row
    "runner-deferred-check": "INSERT INTO users.child VALUES (42);",
}


@pytest.mark.parametrize("place", ["first", "middle", "last"])
@pytest.mark.parametrize("failing", FAILING.values(), ids=FAILING.keys())
def test_a_failure_in_a_batch_keeps_what_came_before_and_runs_nothing_after(
        tmp_path: Path, database_url: str, batches: list[list[str]], failing: str,
        place: str) -> None:
    root = migrated(tmp_path, database_url)
    revisions(root, "CREATE TABLE users.parent (id int PRIMARY KEY);\n",
              "CREATE TABLE users.child (p int REFERENCES users.parent "
              "DEFERRABLE INITIALLY DEFERRED);")
    migrate(database_url, root, **QUIET)
    before = {"first": [], "middle": ["a"], "last": ["a", "b"]}[place]
    after = {"first": ["c"], "middle": ["c"], "last": []}[place]
    texts = [*map(table, before), failing, *map(table, after)]
    for day, text in enumerate(texts, start=3):  # days 1 and 2 are applied
        add(root, "users", f"2026-02-{day:02d}T0000", text)
    ids = [f"users_202602{day:02d}0000" for day in range(3, 3 + len(texts))]

    with pytest.raises(MigrationFailed) as batched:
        migrate(database_url, root, **QUIET)
    assert batches[-1] == ids
    assert batched.value.revision == ids[len(before)]
    assert [r.revision for r in batched.value.applied] == ids[:len(before)]
    assert set(ledger(database_url)) & set(ids) == set(ids[:len(before)])
    for name in ("a", "b", "c", "broken"):
        exists = query(database_url, "SELECT to_regclass(%s) IS NOT NULL", (f"users.{name}",))
        assert exists == [(name in before,)], name
    assert lock_is_free(database_url)

    # the same revision alone says the same, at the same line
    for revision in ids[:len(before)]:
        query(database_url, "DELETE FROM svcmig.schema_migrations WHERE revision = %s",
              (revision,))
    for name in ("a", "b"):
        query(database_url, f"DROP TABLE IF EXISTS users.{name}")
    with pytest.raises(MigrationFailed) as alone:
        migrate(database_url, root, settings=RunSettings(batch_limit=1), **QUIET)
    assert (alone.value.revision, alone.value.line, alone.value.message) == \
        (batched.value.revision, batched.value.line, batched.value.message)


def test_a_lock_timeout_in_a_batch_goes_on_with_the_next_attempt(
        tmp_path: Path, database_url: str, batches: list[list[str]]) -> None:
    """The attempts of the revision that waits count on from the batch's (1, 2, 3, …, never
    two firsts), the revisions before it stay applied, and the ones after it run once it
    got its locks."""
    root = migrated(tmp_path, database_url)
    ids = revisions(root, table("a"), "ALTER TABLE users.users ADD COLUMN nickname text;",
                    table("c"))
    lines: list[dict[str, object]] = []
    blocker = Blocker(database_url, "SELECT count(*) FROM users.users", hold_seconds=60)
    try:
        result = migrate(database_url, root, settings=RunSettings(lock=QUICK),
                         log=releasing_after(blocker, 3, lines))
    finally:
        blocker.stop()
    assert batches[0] == ids
    waits = [line for line in lines if line["event"] == "lock_wait"]
    assert [line["attempt"] for line in waits] == [1, 2, 3]
    assert {line["revision"] for line in waits} == {ids[1]}
    assert [b["pid"] for b in waits[0]["blockers"]] == [blocker.pid]  # type: ignore[index]
    assert [r.revision for r in result.results] == ids
    assert result.locks.attempts == 3
    assert all(ledger(database_url)[i] == "applied" for i in ids)


def test_a_long_lock_hold_in_a_batch_is_reported_for_its_revision(
        tmp_path: Path, database_url: str, batches: list[list[str]]) -> None:
    root = migrated(tmp_path, database_url)
    ids = revisions(root, "CREATE FUNCTION users.slow() RETURNS boolean LANGUAGE plpgsql "
                          "AS $$ BEGIN PERFORM pg_sleep(0.4); RETURN true; END $$;",
                    "ALTER TABLE users.users ADD CONSTRAINT slow CHECK (users.slow());",
                    table("c"))
    result = migrate(database_url, root, settings=RunSettings(long_hold_ms=300), **QUIET)
    assert batches == [ids]
    assert [(w["kind"], w["revision"], w["table"]) for w in result.hold_warnings] == [
        ("long_lock_hold", ids[1], "users.users")]
    assert 400 <= int(result.hold_warnings[0]["held_ms"]) < 2000  # type: ignore[call-overload]


def test_a_batch_whose_session_ends_keeps_what_committed(
        tmp_path: Path, database_url: str, batches: list[list[str]]) -> None:
    """The session is terminated while the second revision of the batch runs: the ledger
    says the first committed, the second fails, nothing after it ran; a rerun goes on."""
    root = migrated(tmp_path, database_url)
    ids = revisions(root, table("a"),
                    "CREATE TABLE users.slow AS SELECT pg_sleep(5) IS NULL AS slept;",
                    table("c"))

    def end_the_session() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if query(database_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE application_name = %s AND state = 'active'",
                     (f"svcmig-revision {ids[1]}",)):
                return
            time.sleep(0.05)

    killer = threading.Thread(target=end_the_session)
    killer.start()
    try:
        with pytest.raises(MigrationFailed) as failed:
            migrate(database_url, root, **QUIET)
    finally:
        killer.join()
    assert batches[0] == ids
    assert failed.value.revision == ids[1]
    assert "terminat" in failed.value.message
    assert [r.revision for r in failed.value.applied] == ids[:1]
    assert set(ledger(database_url)) & set(ids) == {ids[0]}
    assert query(database_url, "SELECT to_regclass('users.slow'), to_regclass('users.c')") == [
        (None, None)]
    assert lock_is_free(database_url)
    add(root, "users", "2026-02-02T0000", "CREATE TABLE users.slow (slept boolean);")
    migrate(database_url, root, **QUIET)
    assert all(ledger(database_url)[i] == "applied" for i in ids)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_an_interrupted_batch_reports_what_committed(
        tmp_path: Path, database_url: str, signal_number: int) -> None:
    root = migrated(tmp_path, database_url)
    ids = revisions(root, table("a"),
                    "CREATE TABLE users.slow AS SELECT pg_sleep(60) IS NULL AS slept;",
                    table("c"))
    stdout, stderr = interrupted_migrate(root, database_url, signal_number,
                                         "application_name = %s AND state = 'active'",
                                         f"svcmig-revision {ids[1]}")
    result = json.loads(stdout)
    assert result["outcome"] == "interrupted"
    assert [r["revision"] for r in result["applied"]] == ids[:1]
    assert f"interrupted during {ids[1]} after 1 revision(s)" in stderr
    assert "Traceback" not in stderr
    assert set(ledger(database_url)) & set(ids) == {ids[0]}
    assert query(database_url, "SELECT to_regclass('users.slow')") == [(None,)]
    assert lock_is_free(database_url)


@pytest.mark.parametrize("settings", [
    RunSettings(batch_limit=1), RunSettings(deadline=time.monotonic() + 3600)],
    ids=["batch-limit-1", "under-a-deadline"])
def test_no_batch_when_the_settings_say_each_revision_alone(
        tmp_path: Path, database_url: str, batches: list[list[str]],
        settings: RunSettings) -> None:
    root = migrated(tmp_path, database_url)
    ids = revisions(root, "CREATE TABLE users.a (id int);", "CREATE TABLE users.b (id int);")
    result = migrate(database_url, root, settings=settings, **QUIET)
    assert batches == []
    assert [r.revision for r in result.results] == ids


def test_only_single_statement_sql_revisions_whose_locks_are_known_share_a_batch(
        tmp_path: Path, database_url: str, batches: list[list[str]]) -> None:
    root = migrated(tmp_path, database_url)
    ids = revisions(root, "CREATE TABLE users.a (id int);", "CREATE TABLE users.b (id int);",
                    "CREATE TABLE users.c (id int);\nCREATE TABLE users.d (id int);",
                    "CREATE TABLE users.e (id int);", "DO $$ BEGIN NULL; END $$;",
                    "CREATE TABLE users.f (id int);", "CREATE TABLE users.g (id int);",
                    "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY g_id ON users.g (id);",
                    "CREATE TABLE users.h (id int);")
    add(root, "orders", "2026-02-01T0030", "CREATE TABLE orders.x (id int);")
    add(root, "orders", "2026-02-01T0040", "CREATE TABLE orders.y (id int);")
    result = migrate(database_url, root, **QUIET)
    assert len(result.results) == len(ids) + 2
    assert sorted(batches) == sorted([ids[0:2], ["orders_202602010030", "orders_202602010040"],
                                      ids[5:7]])


def test_a_revision_that_does_not_queue_traffic_keeps_its_whole_budget_in_a_batch(
        tmp_path: Path, database_url: str, batches: list[list[str]]) -> None:
    """In a batch every revision waits as long as a first attempt that queues traffic; one
    whose wait queues nothing (a COMMENT takes SHARE UPDATE EXCLUSIVE) then waits alone with
    the whole budget, as it would have alone: no lock_wait line, no attempt counted."""
    root = migrated(tmp_path, database_url)
    ids = revisions(root, table("a"), "COMMENT ON TABLE users.users IS 'accounts';", table("c"))
    blocker = Blocker(database_url, "LOCK TABLE users.users IN ACCESS EXCLUSIVE MODE",
                      hold_seconds=1.0)
    lines: list[dict[str, object]] = []
    try:
        result = migrate(database_url, root, settings=RunSettings(lock=QUICK), log=lines.append)
    finally:
        blocker.timer.join()  # its own release, not one racing it from here
        blocker.stop()
    assert batches == [ids]
    assert [r.revision for r in result.results] == ids
    assert [line for line in lines if line["event"] == "lock_wait"] == []
    assert result.locks.attempts == 0
    assert query(database_url, "SELECT obj_description('users.users'::regclass)") == [
        ("accounts",)]


# --- from a breaker: what a batch's text and its shared session give away ---------------------

STEAL = """CREATE FUNCTION users.steal(which int) RETURNS int LANGUAGE plpgsql AS $f$
DECLARE q text := current_query(); t text[]; i text[];
BEGIN
  SELECT array_agg(m[1]) INTO t
    FROM regexp_matches(q, 'revision_token = ''([0-9a-f]+)''', 'g') m;
  SELECT array_agg(m[1]) INTO i
    FROM regexp_matches(q, '(INSERT INTO svcmig\\.schema_migrations [^;]*)', 'g') m;
  IF coalesce(array_length(t, 1), 0) < which THEN RETURN 0; END IF;
  PERFORM set_config('svcmig.revision_token', t[which], true);
  EXECUTE i[which];
  RETURN 1;
END $f$;"""


# Fires at SET CONSTRAINTS ALL IMMEDIATE, defers everything again and queues `forge` for
# COMMIT, after anything the runner could check before it (a breaker's finding).
AT_COMMIT = [
    "CREATE TABLE users.arm_t (id int);",
    "CREATE TABLE users.fire_t (id int);",
    r"""CREATE FUNCTION users.forge() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE m text[]; q text := current_query();
BEGIN
  FOR m IN SELECT regexp_matches(q, 'SET LOCAL svcmig\.revision_token = ''([0-9a-f]+)''; '
                                 '(INSERT INTO svcmig\.schema_migrations [^;]*)', 'g') LOOP
    BEGIN
      PERFORM set_config('svcmig.revision_token', m[1], true);
      EXECUTE m[2];
      EXIT;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
  END LOOP;
  RETURN NULL;
END $f$;""",
    """CREATE FUNCTION users.arm() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  SET CONSTRAINTS ALL DEFERRED;
  INSERT INTO users.fire_t VALUES (1);
  RETURN NULL;
END $f$;""",
    "CREATE CONSTRAINT TRIGGER arm AFTER INSERT ON users.arm_t DEFERRABLE INITIALLY DEFERRED "
    "FOR EACH ROW EXECUTE FUNCTION users.arm();",
    "CREATE CONSTRAINT TRIGGER forge AFTER INSERT ON users.fire_t DEFERRABLE INITIALLY "
    "DEFERRED FOR EACH ROW EXECUTE FUNCTION users.forge();",
]


@pytest.mark.parametrize("thief", ["statement-2", "statement-3", "at-commit"])
def test_a_revision_cannot_leave_a_later_revisions_ledger_row_from_the_batchs_text(
        tmp_path: Path, database_url: str, batches: list[list[str]], thief: str) -> None:
    """The kind: a secret of a later revision in the batch's text. `current_query()` shows
    the whole batch, the later revisions' tokens and ledger rows with it, and the session is
    theirs too: a revision that wrote one's row, during its statement or with code run at
    its COMMIT, left it `applied` without its work (two breakers' findings). After each
    revision's COMMIT, before the next runs, the runner checks that no later one has a row:
    the rows the thief wrote are deleted, the thief is marked dirty, nothing after it runs."""
    root = migrated(tmp_path, database_url)
    revisions(root, STEAL, *AT_COMMIT)
    migrate(database_url, root, **QUIET)
    ids = [f"users_202602{day:02d}0000" for day in (10, 11, 12)]
    add(root, "users", "2026-02-10T0000",
        "INSERT INTO users.arm_t VALUES (1);" if thief == "at-commit" else
        f"CREATE TABLE users.innocent AS SELECT users.steal({thief[-1]}) AS v;")
    add(root, "users", "2026-02-11T0000", table("victim"))
    add(root, "users", "2026-02-12T0000", table("bystander"))
    with pytest.raises(MigrationFailed, match="wrote the ledger row of a revision after it") \
            as failed:
        migrate(database_url, root, **QUIET)
    assert batches[-1] == ids
    assert failed.value.revision == ids[0] and failed.value.dirty
    assert {k: v for k, v in ledger(database_url).items() if k in ids} == {ids[0]: "dirty"}
    assert query(database_url, "SELECT to_regclass('users.victim'), "
                               "to_regclass('users.bystander')") == [(None, None)]
    assert lock_is_free(database_url)


BATCHED_LEAKS = [
    "SET statement_timeout = '200ms';",
    "CREATE TABLE users.leak AS SELECT set_config('statement_timeout', '200ms', false) AS x;",
    "SET search_path = public;",
    "CREATE TABLE users.leak AS SELECT set_config('svcmig_test.flag', 'leaked', false) AS x;",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY;",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE;",
    "SET default_transaction_isolation = 'repeatable read';",
    "SET default_transaction_read_only = on;",
    "SET default_transaction_deferrable = on;",
    "PREPARE leaky AS SELECT 1;",
    "CREATE TEMP TABLE leaky_temp (id int);",
    "LISTEN leaky;",
    "CREATE TABLE users.leak AS SELECT users.listen() AS x;",  # LISTEN from a function
    "CREATE TABLE users.leak AS SELECT 1 AS x FROM pg_advisory_lock(42);",
]
NO_LEAKS = f"""CREATE FUNCTION users.no_leaks() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN
  IF current_setting('transaction_isolation') <> 'read committed'
     OR current_setting('transaction_read_only') <> 'off' THEN
    RAISE EXCEPTION 'leaked transaction characteristics'; END IF;{LEAK_CHECKS}
  RETURN true;
END $$;"""


@pytest.mark.parametrize("leak", BATCHED_LEAKS)
def test_nothing_a_revision_sets_reaches_the_next_one_in_its_batch(
        tmp_path: Path, database_url: str, batches: list[list[str]], leak: str) -> None:
    """The kind of `test_nothing_a_revision_sets_reaches_the_next_one`, with the probe in the
    same batch: between two revisions of a batch the reset runs in a transaction of its own
    (left to the server's implicit one, it ran into the next revision's BEGIN: a default
    isolation level failed every batch, a LISTEN waited for the next COMMIT to end)."""
    root = migrated(tmp_path, database_url)
    revisions(root, NO_LEAKS, "CREATE FUNCTION users.listen() RETURNS int LANGUAGE plpgsql "
                              "AS $$ BEGIN LISTEN leaky; RETURN 1; END $$;")
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-03T0000", leak)
    add(root, "users", "2026-02-04T0000", "CREATE TABLE users.probe AS SELECT users.no_leaks() "
                                          "AS ok;")
    migrate(database_url, root, **QUIET)
    assert batches[-1] == ["users_202602030000", "users_202602040000"]
    assert query(database_url, "SELECT ok FROM users.probe") == [(True,)]


@pytest.mark.parametrize("setting", [
    "default_transaction_isolation = 'serializable'",
    "default_transaction_isolation = 'repeatable read'", "default_transaction_deferrable = on"])
def test_a_batch_runs_under_any_database_default_transaction_characteristics(
        tmp_path: Path, database_url: str, batches: list[list[str]], setting: str) -> None:
    """No revision needed: a database whose default isolation is not READ COMMITTED failed
    every batch after its first revision (a breaker's finding)."""
    root = migrated(tmp_path, database_url)
    name = query(database_url, "SELECT current_database()")[0][0]
    query(database_url, f'ALTER DATABASE "{name}" SET {setting}')
    ids = revisions(root, table("a"), table("b"), table("c"), table("d"))
    result = migrate(database_url, root, **QUIET)
    assert batches == [ids]
    assert [r.revision for r in result.results] == ids


def test_a_lock_timeout_in_a_batched_revisions_deferred_checks_is_retried(
        tmp_path: Path, database_url: str, batches: list[list[str]]) -> None:
    """The kind: a lock wait in the runner's part of a revision (its deferred foreign key,
    checked before the ledger row) is the revision's lock wait, as it is alone."""
    root = migrated(tmp_path, database_url)
    revisions(root, "CREATE TABLE users.parent (id int PRIMARY KEY);",
              "CREATE TABLE users.child (p int REFERENCES users.parent "
              "DEFERRABLE INITIALLY DEFERRED);",
              "INSERT INTO users.parent VALUES (1);")
    migrate(database_url, root, **QUIET)
    add(root, "users", "2026-02-04T0000", table("a"))
    add(root, "users", "2026-02-05T0000", "INSERT INTO users.child VALUES (1);")
    ids = ["users_202602040000", "users_202602050000"]
    lines: list[dict[str, object]] = []
    blocker = Blocker(database_url, "SELECT * FROM users.parent WHERE id = 1 FOR UPDATE",
                      hold_seconds=60)
    try:
        result = migrate(database_url, root, settings=RunSettings(lock=QUICK),
                         log=releasing_after(blocker, 2, lines))
    finally:
        blocker.stop()
    assert batches[-1] == ids
    waits = [line for line in lines if line["event"] == "lock_wait"]
    assert [(line["revision"], line["attempt"]) for line in waits] == [(ids[1], 1), (ids[1], 2)]
    assert [r.revision for r in result.results] == ids


def test_a_revisions_lock_budget_starts_with_it_not_with_its_batch(
        tmp_path: Path, database_url: str, batches: list[list[str]]) -> None:
    """A breaker's finding: the revision before it in the batch took most of the budget."""
    root = migrated(tmp_path, database_url)
    ids = revisions(root, "CREATE TABLE users.slow AS SELECT pg_sleep(1.5) IS NULL AS slept;",
                    "ALTER TABLE users.users ADD COLUMN nickname text;")
    lines: list[dict[str, object]] = []
    blocker = Blocker(database_url, "SELECT count(*) FROM users.users", hold_seconds=60)
    policy = LockPolicy(first_timeout_ms=100, max_timeout_ms=200, pause_ms=50,
                        pause_ratio=0.5, budget_seconds=1.6)
    try:
        result = migrate(database_url, root, settings=RunSettings(lock=policy),
                         log=releasing_after(blocker, 2, lines))
    finally:
        blocker.stop()
    assert batches == [ids]
    assert [line["attempt"] for line in lines if line["event"] == "lock_wait"] == [1, 2]
    assert [r.revision for r in result.results] == ids


def test_the_error_line_in_a_batch_of_a_sql_ascii_database(
        tmp_path: Path, server_url: str, batches: list[list[str]]) -> None:
    """The server counts an error's position in bytes there, and in characters elsewhere
    (a breaker's finding: multibyte text earlier in the batch moved the line)."""
    name = f"ascii_{uuid.uuid4().hex[:12]}"
    query(server_url, f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' TEMPLATE template0 "
                      "LC_COLLATE 'C' LC_CTYPE 'C'")
    url = url_for(server_url, name)
    try:
        root = migrated(tmp_path, url)
        ids = revisions(root, "CREATE TABLE users.a AS SELECT 'ééé😀 ünïcødé €€€€' AS t;",
                        "CREATE TABLE users.broken AS SELECT 'é€😀' AS t,\n  nosuchcolumn AS x,"
                        "\n  1 AS a;")
        with pytest.raises(MigrationFailed) as failed:
            migrate(url, root, **QUIET)
        assert batches == [ids]
        assert (failed.value.revision, failed.value.line) == (ids[1], 2)
    finally:
        query(server_url, f"DROP DATABASE {name} WITH (FORCE)")


def test_a_revision_that_changes_its_duration_setting_is_still_applied(
        tmp_path: Path, database_url: str, batches: list[list[str]]) -> None:
    """As it would be alone; its duration is unknown (NULL)."""
    root = migrated(tmp_path, database_url)
    ids = revisions(root, "CREATE TABLE users.a AS SELECT "
                          "set_config(lower('SVCMIG.BEGAN'), 'abc', true) AS x;",
                    "CREATE TABLE users.b AS SELECT "
                    "set_config(lower('SVCMIG.BEGAN'), '99999999999999999', true) AS x;",
                    table("c"))
    migrate(database_url, root, **QUIET)
    assert batches == [ids]
    rows = dict(query(database_url, "SELECT revision, duration_ms FROM "
                                    "svcmig.schema_migrations WHERE revision = ANY(%s)", (ids,)))
    assert rows[ids[0]] is None and rows[ids[1]] == 0 and rows[ids[2]] is not None


def test_what_a_revision_runs_cannot_hide_a_later_revisions_lock_hold(
        tmp_path: Path, database_url: str, batches: list[list[str]]) -> None:
    """A breaker's finding: a function (here an earlier revision's) that moved the setting a
    batched revision's duration is computed from zeroed its duration and hid its
    `long_lock_hold`; the runner reads the server's clock in its own statements."""
    root = migrated(tmp_path, database_url)
    ids = revisions(root, "CREATE FUNCTION users.slow_check() RETURNS boolean LANGUAGE plpgsql "
                          "AS $$ BEGIN PERFORM pg_sleep(0.5); PERFORM set_config('svcmig.began', "
                          "'9999999999999999', true); RETURN true; END $$;",
                    "ALTER TABLE users.users ADD CONSTRAINT slow CHECK (users.slow_check());")
    result = migrate(database_url, root, settings=RunSettings(long_hold_ms=300), **QUIET)
    assert batches == [ids]
    assert [(w["kind"], w["revision"]) for w in result.hold_warnings] == [
        ("long_lock_hold", ids[1])]
    assert result.results[1].duration_ms >= 500


@pytest.mark.parametrize("encoding", ["LATIN1", "UTF8"])
def test_a_batch_whose_text_the_server_refuses_goes_one_by_one(
        tmp_path: Path, server_url: str, batches: list[list[str]], encoding: str) -> None:
    """The server converts and parses a whole query string before it runs any of it: a
    character the database's encoding lacks (or syntax this server does not know) refused the
    whole batch, blamed on its first revision (a breaker's finding). The revisions before the
    bad one are applied and it fails with its own file and line, as alone."""
    name = f"enc_{uuid.uuid4().hex[:12]}"
    query(server_url, f"CREATE DATABASE {name} ENCODING '{encoding}' TEMPLATE template0 "
                      "LC_COLLATE 'C' LC_CTYPE 'C'")
    url = url_for(server_url, name)
    bad = "CREATE TABLE users.c AS SELECT\n  1 AS id,\n  'café \U0001f600' AS t;" \
        if encoding == "LATIN1" else "CREATE TABLE users.c AS SELECT\n  1 AS id,\n  x AS t;"
    try:
        root = migrated(tmp_path, url)
        ids = revisions(root, table("a"), table("b"), bad, table("d"))
        with pytest.raises(MigrationFailed) as failed:
            migrate(url, root, **QUIET)
        assert batches[0] == ids
        # a conversion error has no position: the statement's first line
        assert (failed.value.revision, failed.value.line) == (
            ids[2], 1 if encoding == "LATIN1" else 3)
        assert set(ledger(url)) & set(ids) == set(ids[:2])
    finally:
        query(server_url, f"DROP DATABASE {name} WITH (FORCE)")


def test_an_error_in_a_function_body_another_revision_repeats_keeps_its_line(
        tmp_path: Path, database_url: str, batches: list[list[str]]) -> None:
    """The server finds a function body's error in the query string by the body's text, and
    not when the batch holds it twice (a breaker's finding)."""
    root = migrated(tmp_path, database_url)
    body = "$$\n  SELECT\n    nickname\n  FROM users.users\n$$"
    ids = revisions(root, f"CREATE FUNCTION users.f() RETURNS text LANGUAGE sql AS {body};",
                    f"CREATE FUNCTION users.g() RETURNS text LANGUAGE sql AS {body};")
    with pytest.raises(MigrationFailed) as failed:
        migrate(database_url, root, **QUIET)
    with pytest.raises(MigrationFailed) as alone:
        migrate(database_url, root, settings=RunSettings(batch_limit=1), **QUIET)
    assert batches == [ids]
    assert (failed.value.revision, failed.value.line) == (alone.value.revision,
                                                          alone.value.line) == (ids[0], 3)


STASH_THEN_FORGE = r"""CREATE FUNCTION users.j_fn() RETURNS int LANGUAGE plpgsql AS $f$
DECLARE s text; m text[];
BEGIN
  IF strpos(current_query(), 'users.victim') > 0 THEN  -- in the batch: a lock timeout of its own
    RAISE EXCEPTION 'could not obtain lock (made up)' USING ERRCODE = 'lock_not_available';
  END IF;
  SELECT q INTO s FROM users.stash;  -- run again alone: the batch's text an earlier one kept
  FOR m IN SELECT regexp_matches(s, 'SET LOCAL svcmig\.revision_token = ''([0-9a-f]+)''; '
                                 '(INSERT INTO svcmig\.schema_migrations [^;]*)', 'g') LOOP
    IF m[2] LIKE '%users_202602140000%' THEN
      BEGIN
        PERFORM set_config('svcmig.revision_token', m[1], true);
        EXECUTE m[2];
      EXCEPTION WHEN OTHERS THEN NULL;
      END;
    END IF;
  END LOOP;
  RETURN 1;
END $f$;"""


def test_a_token_kept_from_a_batchs_text_is_worth_nothing_once_the_batch_stopped(
        tmp_path: Path, database_url: str, batches: list[list[str]]) -> None:
    """A breaker's finding: a revision copied the batch's text (and with it the later
    revisions' tokens) into a table; a later one of the batch timed out on a lock (one it
    made up) and, run again alone in the same session, wrote a later revision's row from it.
    Before a revision of a batch goes on alone the service's tokens are issued again."""
    root = migrated(tmp_path, database_url)
    revisions(root, STASH_THEN_FORGE)
    migrate(database_url, root, **QUIET)
    ids = [f"users_202602{day}0000" for day in (11, 12, 13, 14)]
    add(root, "users", "2026-02-11T0000", "CREATE TABLE users.stash AS SELECT current_query() "
                                          "AS q;")
    add(root, "users", "2026-02-12T0000", "CREATE TABLE users.jt AS SELECT users.j_fn() AS v;")
    add(root, "users", "2026-02-13T0000", "CREATE TABLE users.victim AS SELECT 1/0 AS id;")
    add(root, "users", "2026-02-14T0000", table("bystander"))
    with pytest.raises(MigrationFailed, match="division by zero") as failed:
        migrate(database_url, root, settings=RunSettings(lock=QUICK), **QUIET)
    assert batches[0] == ids  # then ids[2:] in a batch of their own, after ids[1] alone
    assert failed.value.revision == ids[2]
    assert {k: v for k, v in ledger(database_url).items() if k in ids} == {
        ids[0]: "applied", ids[1]: "applied"}
    add(root, "users", "2026-02-13T0000", table("victim"))
    migrate(database_url, root, **QUIET)
    assert query(database_url, "SELECT to_regclass('users.bystander')") == [("users.bystander",)]


def test_a_batch_cut_short_refuses_rows_that_the_revisions_after_never_wrote(
        tmp_path: Path, database_url: str, batches: list[list[str]]) -> None:
    """A breaker's finding: the revision session lost while a revision's reset (and its check
    of the rows after it) waited, the rows its COMMIT-time trigger wrote for later revisions
    (in a subtransaction: another xmin) stayed `applied`. The reset no longer waits; a session
    lost there anyway (a `pg_sleep` put before the check stands for it): none after it ran, so
    their rows are deleted and the revision whose COMMIT wrote them is marked dirty."""
    root = migrated(tmp_path, database_url)
    revisions(root, *AT_COMMIT)
    migrate(database_url, root, **QUIET)
    ids = [f"users_202602{day}0000" for day in (11, 12, 13)]
    # the reset waits (a lock the next session holds), and the session is ended meanwhile
    add(root, "users", "2026-02-11T0000", "INSERT INTO users.arm_t VALUES (1);")
    add(root, "users", "2026-02-12T0000", table("victim1"))
    add(root, "users", "2026-02-13T0000", table("victim2"))
    real = apply_module.Runner._finish_statements

    def waiting_reset(self: apply_module.Runner, *args: object, **kwargs: object) -> list[str]:
        found = real(self, *args, **kwargs)  # type: ignore[arg-type]
        if args[0].id == ids[0]:  # type: ignore[attr-defined]
            at = found.index(apply_module.BEGIN, found.index(COMMIT_SQL) + 1) + 1
            found.insert(at, "SELECT pg_sleep(5)")
        return found

    def end_the_session() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # pg_stat_activity shows the batch's first kilobyte: the reset is further on
            if query(database_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE wait_event = 'PgSleep' AND state = 'active' "
                                   "AND pid <> pg_backend_pid()"):
                return
            time.sleep(0.05)

    with pytest.MonkeyPatch.context() as patch:  # the real runner, one statement added
        patch.setattr(apply_module.Runner, "_finish_statements", waiting_reset)
        killer = threading.Thread(target=end_the_session)
        killer.start()
        try:
            with pytest.raises(MigrationFailed, match="wrote the ledger row") as failed:
                migrate(database_url, root, **QUIET)
        finally:
            killer.join()
    assert failed.value.revision == ids[0] and failed.value.dirty
    assert {k: v for k, v in ledger(database_url).items() if k in ids} == {ids[0]: "dirty"}
    assert lock_is_free(database_url)
