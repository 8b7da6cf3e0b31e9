"""Issue 15, build point 3: the local database is a first-class thing. `svcmig db status | start
| stop | reset | psql | url` on the project's embedded Postgres, the `database:` line of
`svcmig status` / `migrate`, and URLs shown without a password that is not there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from migrations_runtime.engine.database import redact
from tests.authoring.helpers import assert_one_line_error
from tests.conftest import copy_project, postmaster_pid, query, revision_count, run_cli


def gone(pid: int) -> bool:
    """The process ended (the postmaster removes its pid file just before it exits; a zombie
    waiting for its reaper counts as ended)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


def test_status_start_url_psql_migrate_stop_reset(local_project: Path) -> None:
    root = local_project
    data = root / ".svcmig" / "pgdata"

    # nothing started yet, and `status` starts nothing
    before = ok(run_cli(root, "db", "status"))
    assert before.splitlines()[0] == "embedded PostgreSQL: not running"
    assert "not created yet" in before
    assert json.loads(ok(run_cli(root, "db", "status", "--json"))) == {
        "running": False, "pid": None, "data": str(data), "version": None, "url": None}
    assert not (data / "PG_VERSION").exists()

    started = ok(run_cli(root, "db", "start", timeout=180)).splitlines()
    assert started[0].startswith("started PostgreSQL 18 (pid ") and "new and empty" in started[0]
    url = started[1]
    assert url.startswith("postgresql://postgres@/postgres?host=") and len(started) == 2
    pid = postmaster_pid(root)
    assert pid is not None and f"pid {pid}," in started[0]
    assert ok(run_cli(root, "db", "start")).splitlines() == [
        f"already running (pid {pid}, .svcmig/pgdata)", url]
    # a client killed while the library rewrote its list of clients left it cut short: the
    # next command repairs it instead of failing on it (a JSON traceback, before)
    for damaged in ("", "[12, 3"):
        (data / ".handle_pids.json").write_text(damaged)
        assert ok(run_cli(root, "db", "url")).strip() == url

    running = ok(run_cli(root, "db", "status"))
    assert running.splitlines()[0] == "embedded PostgreSQL: running"
    assert f"pid:      {pid}" in running and "PostgreSQL 18" in running and url in running
    assert json.loads(ok(run_cli(root, "db", "status", "--json"))) == {
        "running": True, "pid": pid, "data": str(data), "version": "18", "url": url}
    # $DATABASE_URL wins over this server for other commands: status says so
    noted = ok(run_cli(root, "db", "status", database_url="postgresql://elsewhere/db"))
    assert "$DATABASE_URL is set" in noted

    # `url` prints the URL and nothing else: psql "$(svcmig db url)" works
    printed = run_cli(root, "db", "url")
    assert ok(printed) == url + "\n" and printed.stderr == ""
    assert query(url, "SELECT 1") == [(1,)]

    # `psql` passes its arguments through and exits with psql's code
    assert ok(run_cli(root, "db", "psql", "-At", "-c", "select 1")) == "1\n"
    failed = run_cli(root, "db", "psql", "-c", "select nosuch")
    assert failed.returncode == 1 and 'column "nosuch" does not exist' in failed.stderr

    # migrate and status say which database they used: one line, no password shown
    migrated = ok(run_cli(root, "migrate", timeout=180)).splitlines()
    assert migrated[0] == f"database: embedded (.svcmig/pgdata, {url})"
    assert migrated[1] == f"applied {revision_count(root)} revision(s) (all phase)"
    assert "***" not in migrated[0]
    assert ok(run_cli(root, "status")).splitlines()[0] == migrated[0]
    as_json = json.loads(ok(run_cli(root, "status", "--json")))
    assert as_json["database"] == {"source": "embedded", "url": url}
    assert postmaster_pid(root) == pid  # every command reused the one server

    assert ok(run_cli(root, "db", "stop")) == f"stopped (pid {pid}, .svcmig/pgdata)\n"
    assert postmaster_pid(root) is None and gone(pid)
    assert ok(run_cli(root, "db", "stop")) == "not running (.svcmig/pgdata)\n"
    stopped = ok(run_cli(root, "db", "status"))
    assert stopped.splitlines()[0] == "embedded PostgreSQL: not running"
    assert "PostgreSQL 18" in stopped and "url:" not in stopped  # the data stays

    # reset: started again first, so it also stops the server; the data folder goes
    pid = int(ok(run_cli(root, "db", "start", timeout=180)).split("pid ")[1].split(",")[0])
    reset = ok(run_cli(root, "db", "reset", "--yes", timeout=60)).strip()
    assert reset.startswith(f"stopped pid {pid}; removed .svcmig/pgdata (PostgreSQL 18, ")
    assert "the next command creates an empty one" in reset and "\n" not in reset
    assert not data.exists() and gone(pid)
    assert "not created yet" in ok(run_cli(root, "db", "status"))
    assert ok(run_cli(root, "db", "reset", "--yes")) == (
        "nothing to remove: .svcmig/pgdata does not exist\n")

    # the next command creates an empty one
    again = ok(run_cli(root, "db", "start", timeout=180)).splitlines()
    assert "new and empty" in again[0]
    assert query(again[1], "SELECT count(*) FROM pg_namespace WHERE nspname IN "
                 "('svcmig', 'users', 'orders')") == [(0,)]


def test_reset_without_yes_refuses_when_stdin_is_not_a_terminal(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "project")
    data = root / ".svcmig" / "pgdata"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("18\n")
    done = subprocess.run(
        [sys.executable, "-m", "migrations_runtime.cli", "db", "reset"], cwd=root,
        env={**os.environ, "SVCMIG_PROJECT_ROOT": str(root)}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60)
    assert_one_line_error(done, 2, "--yes", ".svcmig/pgdata", "not a terminal")
    assert done.stdout == "" and (data / "PG_VERSION").read_text() == "18\n"


def test_status_and_migrate_name_a_given_database_and_its_source(tmp_path: Path,
                                                                  database_url: str) -> None:
    root = copy_project(tmp_path / "project")
    status = run_cli(root, "status", "--database-url", database_url)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0] == (
        f"database: {redact(database_url)} (from --database-url)")
    from_env = run_cli(root, "status", "--json", database_url=database_url)
    assert json.loads(from_env.stdout)["database"] == {
        "source": "$DATABASE_URL", "url": redact(database_url)}
    # a password is never shown, in the line or in --json, even when the run fails
    secret = "postgresql://migrator:S3cretPw@127.0.0.1:1/app"
    text = run_cli(root, "migrate", "--database-url", secret)
    assert text.returncode == 1
    assert text.stdout.splitlines() == [
        "database: postgresql://migrator:***@127.0.0.1:1/app (from --database-url)"]
    failed = run_cli(root, "migrate", "--json", database_url=secret)
    answer = json.loads(failed.stdout)
    assert failed.returncode == 1 and answer["outcome"] == "error"
    assert answer["database"] == {"source": "$DATABASE_URL",
                                  "url": "postgresql://migrator:***@127.0.0.1:1/app"}
    assert "S3cretPw" not in text.stdout + text.stderr + failed.stdout + failed.stderr
    assert not (root / ".svcmig").exists()  # a given database starts no embedded server


@pytest.mark.parametrize(("url", "shown"), [
    # the embedded server's URL: an empty password, nothing to hide
    ("postgresql://postgres:@/postgres?host=/tmp/x", "postgresql://postgres@/postgres?host=/tmp/x"),
    ("postgresql://postgres@/postgres?host=/tmp/x", "postgresql://postgres@/postgres?host=/tmp/x"),
    ("postgresql://u@h/db?password=&sslmode=require",
     "postgresql://u@h/db?password=&sslmode=require"),
    ("host=h password='' user=u", "host=h password='' user=u"),
    # real passwords, in every form
    ("postgresql://u:S3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql+psycopg://u:S3cret@h/db", "postgresql+psycopg://u:***@h/db"),
    ("postgresql://u@h/db?password=S3cret&sslmode=require",
     "postgresql://u@h/db?password=***&sslmode=require"),
    ("host=h password=S3cret user=u", "host=h password=*** user=u"),
    ("host=h PASSWORD = 'S3 cret' user=u", "host=h PASSWORD = *** user=u"),
    ("postgresql://h:5432/db", "postgresql://h:5432/db"),
])
def test_redact_hides_a_password_only_when_there_is_one(url: str, shown: str) -> None:
    assert redact(url) == shown
