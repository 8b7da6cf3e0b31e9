"""Issue 15, item 5 and its kind: ordinary mistakes get one line with the documented exit code
(2 for usage), name what was wrong, and leave nothing behind."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from migrations_runtime.engine.lock import LOCK_KEY
from tests.conftest import copy_project, query, run_cli, write_project


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if "RuntimeDirWarning" not in line
             and "return Path(self.user_runtime_dir)" not in line]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_new_service_on_a_taken_name_names_the_service(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "project")
    done = run_cli(root, "new-service", "users")
    assert done.returncode == 2
    line = one_line(done)
    assert "svcmig revision users -m" in line and "{name}" not in line


def test_unknown_revisions_and_targets_are_usage_errors_that_write_nothing(
        tmp_path: Path, database_url: str) -> None:
    root = copy_project(tmp_path / "project")
    repaired = run_cli(root, "repair", "users_209901010000", "--applied",
                       "--database-url", database_url)
    assert repaired.returncode == 2 and "users_209901010000" in one_line(repaired)
    baselined = run_cli(root, "baseline", "nosuchservice", "--database-url", database_url)
    assert baselined.returncode == 2 and "'nosuchservice'" in one_line(baselined)
    # refused before anything was written: no svcmig schema, no service schema
    assert query(database_url, "SELECT count(*) FROM pg_namespace WHERE nspname IN "
                 "('svcmig', 'users', 'orders')") == [(0,)]


def test_lint_against_an_unknown_base_says_which(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "project")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    done = run_cli(root, "lint", "--base", "nosuchref")
    assert done.returncode == 2
    line = one_line(done)
    assert "--base nosuchref: no such commit" in line


def test_the_missing_down_hint_names_commands_that_exist(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "project")
    (root / "services/users/migrations/2099-01-01T0000__users__no_down.sql").write_text(
        "ALTER TABLE users ADD COLUMN bio text;\n")
    done = run_cli(root, "lint", "services/users/migrations/2099-01-01T0000__users__no_down.sql")
    assert "missing-down" in done.stdout and "svcmig downgrade" not in done.stdout
    assert "alembic downgrade" in done.stdout


def test_two_revisions_in_the_same_minute_are_one_line_for_stock_alembic(tmp_path: Path) -> None:
    from tests.conftest import run_alembic

    root = copy_project(tmp_path / "project")
    for slug in ("a", "b"):
        (root / f"services/users/migrations/2099-01-01T0000__users__{slug}.sql").write_text(
            "SELECT 1;\n-- migrate:down\nSELECT 1;\n")
    done = run_alembic(root, "heads")
    assert done.returncode != 0 and "Traceback" not in done.stderr + done.stdout
    assert "same revision id users_209901010000" in done.stderr + done.stdout


def test_revision_no_transaction_writes_revisions_the_runner_reads_so(tmp_path: Path) -> None:
    from migrations_runtime.engine.validate import build_graph

    root = copy_project(tmp_path / "project")
    for kind in ("--sql", None):
        args = ["revision", "users", "-m", f"cic {kind or 'py'}", "--no-transaction"]
        done = run_cli(root, *args, *([kind] if kind else []))
        assert done.returncode == 0, done.stderr
    graph = build_graph(root)
    made = [r for r in graph.revisions.values() if r.slug.startswith("cic")]
    assert len(made) == 2 and all(not r.transactional for r in made)
    assert run_cli(root, "lint", *[str(r.path) for r in made]).returncode == 0


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    done = run_cli(tmp_path, "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"svcmig, version {version('svcmig')}"


# Item 6: an interrupted run and a waiting one say plainly what is going on.

def interruptible(root: Path, *args: str) -> subprocess.Popen[str]:
    """The console script in its own process, with SIGINT delivered as a terminal's Ctrl-C."""
    env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(root)}
    env.pop("DATABASE_URL", None)
    return subprocess.Popen([sys.executable, "-m", "migrations_runtime.cli", *args], cwd=root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


SLOW_NO_TRANSACTION = ("-- migrate:no-transaction\n-- migrate:up\n"
                       "CREATE INDEX CONCURRENTLY items_id ON items (id);\nSELECT pg_sleep(60);\n"
                       "-- migrate:down\nDROP INDEX CONCURRENTLY items_id;\n")
ITEMS = "-- migrate:up\nCREATE TABLE items (id int);\n-- migrate:down\nDROP TABLE items;\n"


def test_ctrl_c_in_a_no_transaction_revision_says_dirty_and_status_shows_it(
        tmp_path: Path, database_url: str) -> None:
    root = write_project(tmp_path / "p", {"shop": {
        "2026-01-01T0000__shop__items.sql": ITEMS,
        "2026-01-02T0000__shop__index.sql": SLOW_NO_TRANSACTION}})
    process = interruptible(root, "migrate", "--database-url", database_url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not query(
            database_url, "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%%'"):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Aborted!" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted during shop_202601020000") and "left dirty" in last
    assert "svcmig repair shop_202601020000 --applied" in last, last

    status = run_cli(root, "status", "--database-url", database_url)
    assert status.returncode == 1
    [row] = [line for line in status.stdout.splitlines() if line.startswith("shop ")]
    assert "shop_202601020000 (DIRTY: stopped halfway)" in row, status.stdout
    assert "is dirty" in status.stdout


def test_a_migrate_waiting_for_the_lock_says_who_holds_it(tmp_path: Path,
                                                         database_url: str) -> None:
    root = write_project(tmp_path / "p", {"shop": {"2026-01-01T0000__shop__items.sql": ITEMS}})
    with psycopg.connect(database_url, autocommit=True,
                         application_name="the-other-migrator") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        done = run_cli(root, "migrate", "--database-url", database_url, "--lock-wait", "12")
    assert done.returncode == 1
    waits = [json.loads(line) for line in done.stderr.splitlines()
             if line.startswith("{") and '"migrator_lock_wait"' in line]
    assert len(waits) == 2, done.stderr  # at 5 s and 10 s
    assert all("the-other-migrator" in w["holders"] and w["limit_s"] == 12 for w in waits)
    assert done.stderr.strip().splitlines()[-1].startswith("error: another migrator holds")


# Item 7: a person at a terminal reads lines, a machine reads JSON.

def on_a_terminal(root: Path, env: dict[str, str], *args: str) -> str:
    """Run the console script with stdout and stderr on a pseudo-terminal; what it showed."""
    main_fd, terminal = pty.openpty()
    full_env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(root), "TERM": "xterm", **env}
    full_env.pop("DATABASE_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "migrations_runtime.cli", *args], cwd=root,
                               env=full_env, stdout=terminal, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        shown += chunk
    os.close(main_fd)
    assert process.wait(timeout=60) == 0, shown
    return shown.decode()


def two_revisions(tmp_path: Path, service: str = "shop") -> Path:
    return write_project(tmp_path / service, {service: {
        f"2026-01-01T0000__{service}__items.sql": ITEMS,
        f"2026-01-02T0000__{service}__more.sql": "-- migrate:up\nCREATE TABLE more (id int);\n"
                                                 "-- migrate:down\nDROP TABLE more;\n"}})


@pytest.mark.parametrize("env, colour", [({}, True), ({"NO_COLOR": "1"}, False),
                                         ({"NO_COLOR": ""}, True), ({"TERM": "dumb"}, False)])
def test_a_terminal_gets_one_line_per_revision(tmp_path: Path, database_url: str,
                                               env: dict[str, str], colour: bool) -> None:
    shown = on_a_terminal(two_revisions(tmp_path), env, "migrate", "--database-url",
                          database_url)
    assert ("\x1b[" in shown) == colour, shown
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    assert re.search(r"\[1/2\] applied +shop_202601010000 .*__items\.sql +\d+ ms", plain), plain
    assert re.search(r"\[2/2\] applied +shop_202601020000 ", plain), plain
    assert '{"event"' not in plain


def test_json_on_request_and_off_a_terminal(tmp_path: Path, database_url: str) -> None:
    shown = on_a_terminal(two_revisions(tmp_path), {}, "migrate", "--log-format", "json",
                          "--database-url", database_url)
    events = [json.loads(line) for line in shown.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["plan", "revision", "revision", "lock_summary"]
    piped = run_cli(two_revisions(tmp_path, "store"), "migrate", "--database-url", database_url)
    piped_events = [json.loads(line)["event"] for line in piped.stderr.splitlines()
                    if line.startswith("{")]  # (the other project's service is a warning here)
    assert [e for e in piped_events if e != "warning"] == ["plan", "revision", "revision",
                                                           "lock_summary"]
