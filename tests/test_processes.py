"""Real processes: the console script, stock alembic, a killed migrator, ten at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import code_heads, query, revision_count, run_alembic, run_cli

SLEEPY = ("SELECT pg_sleep(CASE WHEN current_setting('svcmig.test_sleep', true) = 'on' "
          "THEN 60 ELSE 0 END);\n")


def test_cli_migrate_and_status_json(project: Path, database_url: str) -> None:
    done = run_cli(project, "migrate", "--json", "--database-url", database_url)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(report["applied"]) == revision_count(project)
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert {line["revision"] for line in logged if line["event"] == "revision"} == {
        r["revision"] for r in report["applied"]}
    assert [line["event"] for line in logged][-1] == "lock_summary"
    status = run_cli(project, "status", "--json", database_url=database_url)
    assert status.returncode == 0, status.stderr
    services = {s["service"]: s for s in json.loads(status.stdout)["services"]}
    assert services["users"]["applied_head"] == services["users"]["code_head"]
    assert services["orders"]["pending"] == []


def test_cli_refused_plan_exits_1_with_the_reason(project: Path, database_url: str) -> None:
    assert run_cli(project, "migrate", database_url=database_url).returncode == 0
    (project / "services/users/migrations/2026-11-01T0000__users__early.sql").write_text(
        "SELECT 1;")
    done = run_cli(project, "migrate", database_url=database_url)
    assert done.returncode == 1
    assert "users_202611010000 is older than" in done.stderr
    assert run_cli(project, "status", database_url=database_url).returncode == 1
    assert run_cli(project, "migrate", "--phase", "sideways").returncode == 2


def test_cli_defaults_to_embedded_postgres(local_project: Path) -> None:
    """No URL and no DATABASE_URL: an embedded Postgres under .svcmig/, reused by the next run."""
    project = local_project
    first = run_cli(project, "migrate", timeout=180)
    assert first.returncode == 0, first.stderr
    assert f"applied {revision_count(project)} revision(s)" in first.stdout
    assert (project / ".svcmig" / "pgdata" / "PG_VERSION").exists()
    second = run_cli(project, "status")
    assert second.returncode == 0 and code_heads(project)["users"] in second.stdout


def test_stock_alembic_commands(project: Path, database_url: str) -> None:
    heads = run_alembic(project, "heads")
    assert heads.returncode == 0, heads.stderr
    assert sorted(heads.stdout.split("\n")[:2]) == sorted(
        f"{head} ({service}) (head)" for service, head in code_heads(project).items())
    history = run_alembic(project, "history")
    assert "<base> -> users_202611020900 (users), create users" in history.stdout
    assert "users_202611101415 -> users_202611120800 (users), grant orders reference" in (
        history.stdout)
    offline = run_alembic(project, "upgrade", "heads", "--sql")
    assert offline.returncode == 0, offline.stderr
    assert "SET LOCAL ROLE \"users_owner\";" in offline.stdout
    assert "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_key" in offline.stdout

    upgraded = run_alembic(project, "upgrade", "heads", database_url=database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    states = dict(query(database_url, "SELECT revision, state FROM svcmig.schema_migrations"))
    assert len(states) == revision_count(project) and set(states.values()) == {"applied"}
    svcmig_noop = run_cli(project, "migrate", "--json", database_url=database_url)
    assert json.loads(svcmig_noop.stdout)["applied"] == []

    head = code_heads(project)["users"]
    down = run_alembic(project, "downgrade", "users@-1", database_url=database_url)
    assert down.returncode == 0, down.stderr
    assert head not in dict(query(database_url,
                                  "SELECT revision, state FROM svcmig.schema_migrations"))
    assert head not in {r[0] for r in query(database_url,
                                            "SELECT version_num FROM svcmig.alembic_version")}
    again = run_cli(project, "migrate", "--json", database_url=database_url)
    assert [r["revision"] for r in json.loads(again.stdout)["applied"]] == [head]


def test_stock_alembic_revision_names_the_file(project: Path) -> None:
    head = code_heads(project)["users"]
    made = run_alembic(project, "revision", "--head", "users@head", "-m", "add email")
    assert made.returncode == 0, made.stderr
    created = sorted((project / "services/users/migrations").glob("*__users__add_email.py"))
    assert len(created) == 1
    text = created[0].read_text()
    stamp = created[0].name.split("__")[0]
    rev_id = "users_" + stamp.replace("-", "").replace("T", "")
    assert rev_id > head
    assert f"revision = '{rev_id}'" in text
    assert f"down_revision = '{head}'" in text
    heads = run_alembic(project, "heads")
    assert f"{rev_id} (users) (head)" in heads.stdout


def test_killed_migrator_resumes_cleanly(project: Path, database_url: str) -> None:
    assert run_cli(project, "migrate", database_url=database_url).returncode == 0
    (project / "services/users/migrations/2026-12-01T0000__users__slow.sql").write_text(
        "ALTER TABLE users ADD COLUMN slow text;\n" + SLEEPY)
    database = query(database_url, "SELECT current_database()")[0][0]
    query(database_url, f'ALTER DATABASE "{database}" SET svcmig.test_sleep = on')
    env = {**os.environ, "SVCMIG_PROJECT_ROOT": str(project), "DATABASE_URL": database_url}
    victim = subprocess.Popen([sys.executable, "-m", "migrations_runtime.cli", "migrate"],
                              cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not query(database_url, "SELECT 1 FROM pg_stat_activity WHERE query LIKE "
                                  "'SELECT pg_sleep(CASE%%'"):
        if victim.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"migrator never got there: {victim.communicate()}")
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    query(database_url, f'ALTER DATABASE "{database}" RESET svcmig.test_sleep')
    resumed = run_cli(project, "migrate", "--json", "--lock-wait", "30", database_url=database_url)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["revision"] for r in json.loads(resumed.stdout)["applied"]] == ["users_202612010000"]
    states = dict(query(database_url, "SELECT revision, state FROM svcmig.schema_migrations"))
    assert len(states) == revision_count(project) and set(states.values()) == {"applied"}


def test_ten_migrators_at_once(project: Path, database_url: str) -> None:
    def one(_: int) -> subprocess.CompletedProcess[str]:
        return run_cli(project, "migrate", "--json", "--lock-wait", "120",
                       database_url=database_url, timeout=300)

    with ThreadPoolExecutor(max_workers=10) as pool:
        runs = list(pool.map(one, range(10)))
    assert [r.returncode for r in runs] == [0] * 10, [r.stderr for r in runs if r.returncode]
    applied = [a["revision"] for r in runs for a in json.loads(r.stdout)["applied"]]
    count = revision_count(project)
    assert len(applied) == count and len(set(applied)) == count  # each revision exactly once
    rows = query(database_url, "SELECT revision, state FROM svcmig.schema_migrations")
    assert len(rows) == count and {state for _, state in rows} == {"applied"}
    assert {r[0] for r in query(database_url, "SELECT version_num FROM svcmig.alembic_version")} \
        == set(code_heads(project).values())


def test_baseline_and_repair_report_json(tmp_path: Path, database_url: str) -> None:
    from tests.conftest import write_project

    root = write_project(tmp_path / "p", {"shop": {
        "2026-01-01T0000__shop__one.sql": "CREATE TABLE one (id int);"}})
    query(database_url, "CREATE SCHEMA shop; CREATE TABLE shop.one (id int)")
    done = run_cli(root, "baseline", "shop", "--json", database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"baselined": ["shop_202601010000"]}
    (root / "services/shop/migrations/2026-01-01T0000__shop__one.sql").write_text(
        "-- the table the service started with\nCREATE TABLE one (id int);")
    assert run_cli(root, "migrate", database_url=database_url).returncode == 1  # tampered
    fixed = run_cli(root, "repair", "shop_202601010000", "--accept-checksum", "--json",
                    database_url=database_url)
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["action"] == "accept-checksum"
    assert run_cli(root, "migrate", database_url=database_url).returncode == 0
    assert run_cli(root, "repair", "shop_202601010000", database_url=database_url).returncode == 2
