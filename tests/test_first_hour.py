"""Issue 15, item 5 and its kind: ordinary mistakes get one line with the documented exit code
(2 for usage), name what was wrong, and leave nothing behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import copy_project, query, run_cli


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
