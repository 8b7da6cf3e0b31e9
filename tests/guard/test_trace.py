"""Trace mode on a real Postgres: what each revision was observed to lock, rewrite and scan,
statement by statement (the issue's hazards and look-alikes beside them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from migrations_runtime.tools.trace import trace
from tests.conftest import query, write_project

BASE = {
    "2026-01-01T0000__shop__create.sql":
        "CREATE TABLE customers (id bigint PRIMARY KEY, email varchar(50), plan text,\n"
        "  quantity int, status text NOT NULL DEFAULT 'new');\n"
        "CREATE TABLE sessions (id bigint PRIMARY KEY, token text);\n"
        "CREATE MATERIALIZED VIEW signups AS SELECT count(*) AS n FROM customers;\n"
        "-- migrate:down\nDROP MATERIALIZED VIEW signups;\nDROP TABLE sessions, customers;\n",
}


def traced(tmp_path: Path, server_url: str, revisions: dict[str, str]) -> set[tuple[str, str, int]]:
    """(file's slug, rule, line) of every traced finding for `revisions` added after BASE."""
    files = {name: f"{body}\n-- migrate:down\nSELECT 1;\n" for name, body in revisions.items()}
    root = write_project(tmp_path / "project", {"shop": {**BASE, **files}})
    folder = root / "services/shop/migrations"
    result = trace(root, [folder / name for name in revisions], server_url)
    assert result.revisions == len(revisions)
    return {(f.path.name.split("__")[-1].removesuffix(".sql"), f.rule.name, f.line)
            for f in result.findings}


@pytest.mark.parametrize(("sql", "expected"), [
    # a lock held through a backfill that scans the table
    ("ALTER TABLE customers ADD COLUMN tier text;\n"
     "UPDATE customers SET tier = 'free' WHERE tier IS NULL;",
     {("traced-lock-held-during-work", 2), ("traced-unbounded-scan", 2)}),
    # NOT VALID then VALIDATE in one transaction: the scan runs under the ADD's lock
    ("ALTER TABLE customers ADD CONSTRAINT quantity_positive CHECK (quantity > 0) NOT VALID;\n"
     "ALTER TABLE customers VALIDATE CONSTRAINT quantity_positive;",
     {("traced-lock-held-during-work", 2)}),
    # rewrites
    ("ALTER TABLE sessions SET UNLOGGED;", {("traced-rewrite", 1)}),
    ("ALTER TABLE customers ALTER COLUMN quantity TYPE bigint;", {("traced-rewrite", 1)}),
    ("REFRESH MATERIALIZED VIEW signups;", {("traced-rewrite", 1)}),
    # a locking read of the whole table
    ("SELECT id FROM customers WHERE plan = 'free' FOR UPDATE;", {("traced-unbounded-scan", 1)}),
    # an index build while an earlier statement's lock is held
    ("ALTER TABLE customers ADD COLUMN note text;\n"
     "CREATE INDEX customers_note_idx ON customers (note);",
     {("traced-lock-held-during-work", 2)}),
], ids=["lock-then-backfill", "not-valid-validate-together", "set-unlogged", "type-rewrite",
        "refresh-matview", "for-update", "lock-then-index"])
def test_hazards_are_observed(tmp_path: Path, server_url: str, sql: str,
                              expected: set[tuple[str, int]]) -> None:
    found = {(rule, line) for _, rule, line in traced(tmp_path, server_url,
                                                      {"2026-02-01T0000__shop__change.sql": sql})}
    assert found == expected


@pytest.mark.parametrize("revisions", [
    {"2026-02-01T0000__shop__batch.sql":
         "UPDATE customers SET plan = 'free' WHERE id >= 1 AND id < 1001 AND plan IS NULL;"},
    {"2026-02-01T0000__shop__add.sql":
         "ALTER TABLE customers ADD CONSTRAINT quantity_positive CHECK (quantity > 0) NOT VALID;",
     "2026-02-02T0000__shop__validate.sql":
         "ALTER TABLE customers VALIDATE CONSTRAINT quantity_positive;"},
    {"2026-02-01T0000__shop__widen.sql":
         "ALTER TABLE customers ALTER COLUMN email TYPE varchar(200);"},
    {"2026-02-01T0000__shop__cic.sql": "-- migrate:no-transaction\n"
         "CREATE INDEX CONCURRENTLY customers_plan_idx ON customers (plan);"},
    {"2026-02-01T0000__shop__new.sql":
         "CREATE TABLE invoices (id bigint PRIMARY KEY, customer_id bigint);\n"
         "INSERT INTO invoices VALUES (1, 1);\nUPDATE invoices SET customer_id = 2;\n"
         "CREATE INDEX invoices_customer_idx ON invoices (customer_id);"},
    {"2026-02-01T0000__shop__by_key.sql":
         "UPDATE customers SET plan = 'pro' WHERE id = 42;\n"
         "SELECT id FROM customers WHERE id = 7 FOR UPDATE;"},
], ids=["batched-by-key", "validate-next-revision", "varchar-widening", "cic",
        "new-table", "by-key"])
def test_look_alikes_are_clean(tmp_path: Path, server_url: str,
                               revisions: dict[str, str]) -> None:
    assert traced(tmp_path, server_url, revisions) == set()


def test_a_revision_that_fails_on_the_traced_schema_is_a_warning(tmp_path: Path,
                                                                 server_url: str) -> None:
    found = traced(tmp_path, server_url, {
        "2026-02-01T0000__shop__bad.sql": "SELECT 1;\nALTER TABLE nowhere ADD COLUMN x int;"})
    assert found == {("bad", "traced-error", 2)}


def test_the_trace_leaves_nothing_behind(tmp_path: Path, server_url: str) -> None:
    before = query(server_url, "SELECT datname FROM pg_database ORDER BY 1")
    traced(tmp_path, server_url, {"2026-02-01T0000__shop__change.sql":
                                  "ALTER TABLE sessions SET UNLOGGED;"})
    assert query(server_url, "SELECT datname FROM pg_database ORDER BY 1") == before


def cli_in_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                   text: str) -> Callable[..., Any]:
    """The CLI, run in a project of BASE and the revision `name` (`text`)."""
    from click.testing import CliRunner

    from migrations_runtime.cli.main import cli

    root = write_project(tmp_path / "project", {"shop": {**BASE, name: text}})
    monkeypatch.chdir(root)
    return lambda *args: CliRunner().invoke(cli, list(args))


def test_lint_trace_reports_in_sarif(tmp_path: Path, server_url: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    run = cli_in_project(tmp_path, monkeypatch, "2026-02-01T0000__shop__change.sql",
                         "-- svcmig:ignore blocking-table-operation sessions is a cache\n"
                         "ALTER TABLE sessions SET UNLOGGED;\n-- migrate:down\nSELECT 1;\n")
    done = run("lint", "--trace", "--database-url", server_url, "--format", "sarif",
               "services/shop/migrations/2026-02-01T0000__shop__change.sql")
    assert done.exit_code == 1, done.output
    results = json.loads(done.output)["runs"][0]["results"]
    assert [(r["ruleId"], r["locations"][0]["physicalLocation"]["region"]["startLine"])
            for r in results] == [("traced-rewrite", 2)]
    assert run("lint", "--database-url", server_url).exit_code == 2


def test_a_traced_finding_is_acknowledged_like_a_static_one(tmp_path: Path,
                                                            server_url: str) -> None:
    found = traced(tmp_path, server_url, {"2026-02-01T0000__shop__change.sql":
        "-- svcmig:ignore traced-rewrite sessions is a cache of 10 rows\n"
        "ALTER TABLE sessions SET UNLOGGED;\n"
        "ALTER TABLE customers ALTER COLUMN quantity TYPE bigint;"})
    # the second rewrite is reported, and it ran under the first statement's lock
    assert found == {("change", "traced-rewrite", 3),
                     ("change", "traced-lock-held-during-work", 3)}


def test_check_traces_every_revision(tmp_path: Path, server_url: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run = cli_in_project(tmp_path, monkeypatch, "2026-02-01T0000__shop__unlogged.sql",
                         "ALTER TABLE sessions SET UNLOGGED;\n"
                         "-- migrate:down\nALTER TABLE sessions SET LOGGED;\n")
    failed = run("check", "--database-url", server_url, "--quiet")
    assert failed.exit_code == 1, failed.output
    assert ("services/shop/migrations/2026-02-01T0000__shop__unlogged.sql:1: traced-rewrite: "
            "rewrote shop.sessions") in failed.output
    skipped = run("check", "--database-url", server_url, "--quiet", "--no-trace")
    assert skipped.exit_code == 0, skipped.output


@pytest.mark.parametrize(("sql", "expected"), [
    # the word in a string is not the keyword: traced, and its scan reported
    ("UPDATE customers SET plan = 'concurrently' WHERE plan IS NULL;",
     {("traced-unbounded-scan", 1)}),
    # one index build is reported once, not for every statement after it
    ("ALTER TABLE customers ADD COLUMN note text;\n"
     "CREATE INDEX customers_note_idx ON customers (note);\n"
     "COMMENT ON TABLE customers IS 'x';\nSELECT 1;",
     {("traced-lock-held-during-work", 2)}),
    # a plain read is not a data change; a revision cannot switch the probe off
    ("SELECT count(*) FROM customers WHERE plan = 'x';", set()),
    ("SET LOCAL enable_seqscan = on;\n"
     "SELECT id FROM customers WHERE plan = 'free' FOR UPDATE;",
     {("traced-unbounded-scan", 2)}),
], ids=["keyword-in-a-string", "one-index-once", "plain-read", "probe-kept"])
def test_what_the_tracer_counts(tmp_path: Path, server_url: str, sql: str,
                                expected: set[tuple[str, int]]) -> None:
    found = {(rule, line) for _, rule, line in traced(tmp_path, server_url,
                                                      {"2026-02-01T0000__shop__change.sql": sql})}
    assert found == expected


def test_sigterm_drops_the_throwaway_database(tmp_path: Path, server_url: str) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time as clock

    root = write_project(tmp_path / "project", {"shop": {
        **BASE, "2026-02-01T0000__shop__slow.sql":
            "SELECT pg_sleep(30);\n-- migrate:down\nSELECT 1;\n"}})
    before = query(server_url, "SELECT datname FROM pg_database ORDER BY 1")
    script = ("import sys; from pathlib import Path; from migrations_runtime.tools.trace import "
              "trace; trace(Path(sys.argv[1]), sorted(Path(sys.argv[1]).glob("
              "'services/shop/migrations/*slow.sql')), sys.argv[2])")
    child = subprocess.Popen([sys.executable, "-c", script, str(root), server_url],
                             env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    deadline = clock.monotonic() + 30
    while clock.monotonic() < deadline and not query(
            server_url, "SELECT 1 FROM pg_stat_activity WHERE query LIKE %s",
            ("SELECT pg_sleep(30)%",)):
        clock.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM
    assert query(server_url, "SELECT datname FROM pg_database ORDER BY 1") == before
