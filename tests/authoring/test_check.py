"""`svcmig check` through the console script and the pytest fixtures, on real Postgres."""

from __future__ import annotations

import io
import json
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


def py_revision(rev: str, previous: str, downgrade: str, extra: str = "") -> str:
    return (f"from alembic import op\n\nrevision = {rev!r}\ndown_revision = {previous!r}\n"
            f"{extra}\n\ndef upgrade():\n    op.execute('ALTER TABLE items ADD COLUMN n int')\n"
            f"\n\ndef downgrade():\n    {downgrade}\n")


# The kind "a revision check cannot round-trip": each service's head is one spelling of "no
# downgrade"; only the ones that say why they cannot be undone are accepted.
CANNOT_ROUND_TRIP = {
    "nodown": "UPDATE items SET id = id WHERE false;",  # no down section at all
    "emptydown": ("-- migrate:up\nALTER TABLE items ADD COLUMN n int;\n-- migrate:down\n"
                  "-- nothing to do here, right?\n"),  # a comment is not a declaration
    "pypass": "pass",  # the template's downgrade, left as it is
    "pydocstring": '"""Irreversible."""',  # a docstring does nothing either
}
DECLARED = {
    "sqlwhy": ("-- migrate:up\nALTER TABLE items ADD COLUMN n int;\n-- migrate:down\n"
               "--   Irreversible:  the old values were never kept\n"),
    "pywhy": 'irreversible = "the old values were never kept"',
    "pytrue": "irreversible = True",
}


def shop(service: str, head: str) -> dict[str, str]:
    files = {f"2026-01-01T0000__{service}__items.sql": ROOT}
    rev, previous = f"{service}_202601020000", f"{service}_202601010000"
    if service.startswith("py"):
        declared = head if head.startswith("irreversible") else ""
        body = "pass" if declared else head
        files[f"2026-01-02T0000__{service}__n.py"] = py_revision(rev, previous, body, declared)
    else:
        files[f"2026-01-02T0000__{service}__n.sql"] = head
    files[f"2026-01-03T0000__{service}__add_size.sql"] = (
        "-- migrate:up\nALTER TABLE items ADD COLUMN size int;\n"
        "-- migrate:down\nALTER TABLE items DROP COLUMN size;\n")
    return files


def test_revisions_check_cannot_round_trip_fail_unless_declared(
        tmp_path: Path, server_url: str) -> None:
    cases = {**CANNOT_ROUND_TRIP, **DECLARED}
    root = write_project(tmp_path / "p", {name: shop(name, head) for name, head in cases.items()})
    done = run_cli(root, "check", "--database-url", server_url, "--json", "--no-trace")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    by_name = {s["service"]: s for s in report["services"]}
    for name in cases:
        service = by_name[name]
        expected = "failed" if name in CANNOT_ROUND_TRIP else "irreversible"
        assert service["status"] == expected, service
        assert service["irreversible"] == [f"{name}_202601020000"]
        assert service["round_tripped"] == [f"{name}_202601030000"]  # the rest is still checked
        assert bool(service["problems"]) == (name in CANNOT_ROUND_TRIP), service
    assert all("does not declare itself irreversible" in p for p in report["problems"])
    text = run_cli(root, "check", "--database-url", server_url, "--no-trace")
    assert text.returncode == 1
    assert "error: nodown: nodown_202601020000 (services/nodown/migrations/" in text.stdout
    assert "-- irreversible: <why>" in text.stdout and 'irreversible = "<why>"' in text.stdout

    lint = run_cli(root, "lint", "--all", "--format", "json")
    flagged = {f["path"].split("/")[1] for f in json.loads(lint.stdout)
               if f["rule"] == "missing-down"}
    assert flagged == set(CANNOT_ROUND_TRIP)  # the guard agrees with check


def test_declared_irreversible_passes_and_strict_refuses(tmp_path: Path,
                                                          server_url: str) -> None:
    root = write_project(tmp_path / "p", {name: shop(name, head)
                                          for name, head in DECLARED.items()})
    done = run_cli(root, "check", "--database-url", server_url, "--no-trace")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "irreversible: sqlwhy_202601020000 has no downgrade" in done.stdout
    strict = run_cli(root, "check", "--database-url", server_url, "--strict", "--no-trace")
    assert strict.returncode == 1 and "--strict" in strict.stdout


@pytest.mark.parametrize("value", ['""', '"   "', "3", "['why']"])
def test_an_empty_or_odd_irreversible_value_is_a_one_line_error(tmp_path: Path,
                                                                value: str) -> None:
    root = write_project(tmp_path / "p", {"pyodd": shop("pyodd", f"irreversible = {value}")})
    done = run_cli(root, "plan", "--offline")
    assert done.returncode == 1, done.stdout + done.stderr
    message = done.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    assert "pyodd__n.py" in message and "irreversible must say why" in message


def test_in_place_on_an_empty_database(project: Path, database_url: str) -> None:
    done = run_cli(project, "check", "--database-url", database_url, "--in-place", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert "check passed" in done.stdout
    applied = query(database_url, "SELECT count(*) FROM svcmig.schema_migrations")
    assert applied == [(revision_count(project),)]  # left at heads


def test_defaults_to_embedded_postgres(local_project: Path) -> None:
    project = local_project
    done = run_cli(project, "check", "--quiet", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "throwaway database svcmig_check_" in done.stdout
    assert (project / ".svcmig" / "pgdata" / "PG_VERSION").exists()
    # the trace applies each revision's parents on its throwaway database: a contract
    # revision that requires a backfill is not held there (users_202611300911 was traced
    # without users_202611300910 before: "traced-error")
    assert "traced-error" not in done.stdout + done.stderr


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
