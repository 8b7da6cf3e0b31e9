"""`svcmig check` through the console script and the pytest fixtures, on real Postgres."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import pytest

from migrations_runtime.tools.progress import Progress
from migrations_runtime.tools.pytest_plugin import (  # noqa: F401 - fixtures used by name
    assert_check_passes,
    svcmig_check,
    svcmig_project_root,
)
from tests.conftest import query, revision_count, run_cli, write_project

ROOT = ("-- migrate:up\nCREATE TABLE items (id bigint PRIMARY KEY);\n"
        "-- migrate:down\nDROP TABLE items;\n")


def leftover_check_databases(server_url: str, name: str) -> list[tuple[object, ...]]:
    return query(server_url, "SELECT datname FROM pg_database WHERE datname = %s", (name,))


def test_repository_services_pass(project: Path, server_url: str) -> None:
    done = run_cli(project, "check", "--database-url", server_url, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] and report["throwaway"] and report["problems"] == []
    assert len(report["applied"]) == revision_count(project)
    assert {s["service"]: s["status"] for s in report["services"]} == {
        "orders": "ok", "users": "ok"}
    users = next(s for s in report["services"] if s["service"] == "users")
    assert any(r.startswith("orders_") for r in users["round_tripped"])  # dependents too
    assert leftover_check_databases(server_url, report["database"]) == []
    assert "upgrade heads 1/" in done.stderr  # plain progress lines when not on a terminal


def test_downgrade_that_leaves_a_column_behind_is_caught(tmp_path: Path,
                                                         server_url: str) -> None:
    root = write_project(tmp_path / "p", {"shop": {
        "2026-01-01T0000__shop__items.sql": ROOT,
        "2026-01-02T0000__shop__add_colour.sql":
            "-- migrate:up\nALTER TABLE items ADD COLUMN colour text NOT NULL DEFAULT 'red';\n"
            "-- migrate:down\nSELECT 1;  -- forgot to drop the column\n",
        "2026-01-03T0000__shop__add_size.sql":
            "-- migrate:up\nALTER TABLE items ADD COLUMN size int;\n"
            "-- migrate:down\nALTER TABLE items DROP COLUMN size;\n"}})
    done = run_cli(root, "check", "--database-url", server_url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "downgrade of shop_202601020000" in done.stdout
    assert "column shop.items.colour is left behind" in done.stdout
    assert "check FAILED" in done.stdout


def test_changed_default_is_caught(tmp_path: Path, server_url: str) -> None:
    root = write_project(tmp_path / "p", {"shop": {
        "2026-01-01T0000__shop__items.sql": ROOT.replace(
            "PRIMARY KEY", "PRIMARY KEY, price int DEFAULT 1"),
        "2026-01-02T0000__shop__price_default.sql":
            "-- migrate:up\nALTER TABLE items ALTER COLUMN price SET DEFAULT 2;\n"
            "-- migrate:down\nALTER TABLE items ALTER COLUMN price SET DEFAULT 3;\n"}})
    done = run_cli(root, "check", "--database-url", server_url, "--json")
    assert done.returncode == 1
    [problem] = json.loads(done.stdout)["problems"]
    assert "column shop.items.price changed from 'integer null default 1" in problem


def test_irreversible_service_is_reported_not_hidden(tmp_path: Path, server_url: str) -> None:
    root = write_project(tmp_path / "p", {"shop": {
        "2026-01-01T0000__shop__items.sql": ROOT,
        "2026-01-02T0000__shop__backfill.sql": "UPDATE items SET id = id WHERE false;",
        "2026-01-03T0000__shop__add_size.sql":
            "-- migrate:up\nALTER TABLE items ADD COLUMN size int;\n"
            "-- migrate:down\nALTER TABLE items DROP COLUMN size;\n"}})
    done = run_cli(root, "check", "--database-url", server_url, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    [shop] = json.loads(done.stdout)["services"]
    assert shop["status"] == "irreversible"
    assert shop["irreversible"] == ["shop_202601020000"]
    assert shop["round_tripped"] == ["shop_202601030000"]  # what is above it is still checked
    text = run_cli(root, "check", "--database-url", server_url)
    assert "irreversible: shop_202601020000 has no downgrade" in text.stdout
    strict = run_cli(root, "check", "--database-url", server_url, "--strict")
    assert strict.returncode == 1 and "--strict" in strict.stdout


def test_in_place_on_an_empty_database(project: Path, database_url: str) -> None:
    done = run_cli(project, "check", "--database-url", database_url, "--in-place", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert "check passed" in done.stdout
    applied = query(database_url, "SELECT count(*) FROM svcmig.schema_migrations")
    assert applied == [(revision_count(project),)]  # left at heads


def test_defaults_to_embedded_postgres(project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    try:
        done = run_cli(project, "check", "--quiet", env=env, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "throwaway database svcmig_check_" in done.stdout
        assert (project / ".svcmig" / "pgdata" / "PG_VERSION").exists()
    finally:
        pid_file = project / ".svcmig" / "pgdata" / "postmaster.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)


@pytest.fixture
def svcmig_server_url(server_url: str) -> str:
    """The plugin's server fixture, pointed at the test suite's server."""
    return server_url


def test_pytest_fixture_runs_the_check(project: Path, svcmig_check) -> None:  # noqa: ANN001,F811
    report = svcmig_check(project)
    assert_check_passes(report)
    assert {s.service for s in report.services} == {"orders", "users"}
    broken = project / "services/users/migrations/2026-12-01T0000__users__leaky.sql"
    broken.write_text("-- migrate:up\nCREATE TABLE leak (id int);\n-- migrate:down\nSELECT 1;\n")
    with pytest.raises(AssertionError, match="table|relation users.leak is left behind"):
        assert_check_passes(svcmig_check(project))


def test_progress_bar_on_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.start("upgrade heads", 4)
    progress.step("users_202611020900")
    progress.finish()
    assert "\r" in out.getvalue() and "[######" in out.getvalue()
    assert "1/4 users_202611020900" in out.getvalue() and out.getvalue().endswith("s\n")
