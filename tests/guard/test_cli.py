"""`svcmig lint` end to end through click: selection, exit codes, output formats, Python
revisions and the framework rules on file names and history."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from .conftest import Project, RunLint, findings_of

SCHEMA = Path(__file__).with_name("sarif-schema-2.1.0.json")

PY_REVISION = '''"""add email"""
import sqlalchemy as sa
from alembic import op

revision = "users_202611251500"
down_revision = {down!r}
{extra}

def upgrade() -> None:
    op.add_column("users", sa.Column("email", sa.Text(), nullable=False))
    op.create_index("users_email_idx", "users", ["email"])


def downgrade() -> None:
    op.drop_column("users", "email")
'''


def test_clean_project_exits_0(project: Project, run_lint: RunLint) -> None:
    project.revision("users", "2026-11-25T1400", "create", "CREATE TABLE users (id int);",
                     down="DROP TABLE users;")
    result = run_lint()
    assert result.exit_code == 0, result.output
    assert "0 error(s), 0 warning(s)" in result.output


def test_warning_exits_0_unless_strict(project: Project, run_lint: RunLint) -> None:
    project.revision("users", "2026-11-25T1400", "create", "CREATE TABLE users (id int);",
                     down=None)
    assert run_lint("--all").exit_code == 0
    strict = run_lint("--all", "--strict")
    assert strict.exit_code == 1
    assert "warning missing-down" in strict.output


def test_error_exits_1_with_text_and_hint(project: Project, run_lint: RunLint) -> None:
    path = project.revision("users", "2026-11-25T1400", "wipe", "TRUNCATE users;")
    result = run_lint(str(path))
    assert result.exit_code == 1
    first, hint = result.output.splitlines()[:2]
    assert first.startswith(
        "services/users/migrations/2026-11-25T1400__users__wipe.sql:2:1 error truncate ")
    assert hint.startswith("  hint: ")


def test_parse_error_exits_2_and_names_the_line(project: Project, run_lint: RunLint) -> None:
    project.revision("users", "2026-11-25T1400", "ok", "CREATE TABLE users (id int);")
    project.revision("users", "2026-11-25T1401", "broken", "SELECT 1;\nCREAT TABLE x (id int);")
    result = run_lint("--format", "json")
    assert result.exit_code == 2
    [finding] = findings_of(result)
    assert (finding["rule"], finding["line"]) == ("parse-error", 3)


@pytest.mark.parametrize("args", [["--all", "--base", "HEAD"], ["--format", "xml"],
                                  ["--pg-version", "abc"], ["no/such/path.sql"]])
def test_usage_errors_exit_2(project: Project, run_lint: RunLint, args: list[str]) -> None:
    assert run_lint(*args).exit_code == 2


def test_outside_a_project_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   run_lint: RunLint) -> None:
    monkeypatch.chdir(tmp_path.parent)
    assert run_lint().exit_code == 2


def test_directory_paths_select_revisions(project: Project, run_lint: RunLint) -> None:
    project.revision("users", "2026-11-25T1400", "wipe", "TRUNCATE users;")
    project.revision("orders", "2026-11-25T1400", "ok", "CREATE TABLE orders (id int);")
    project.write("services/users/handler.py", "print('not a migration')\n")
    assert run_lint("services/orders").exit_code == 0
    assert run_lint("services/users").exit_code == 1


def test_json_output(project: Project, run_lint: RunLint) -> None:
    project.revision("users", "2026-11-25T1400", "x", "SELECT 1;\nLOCK TABLE users;")
    [finding] = findings_of(run_lint("--format", "json"))
    assert finding == {
        "path": "services/users/migrations/2026-11-25T1400__users__x.sql", "line": 3,
        "column": 1, "severity": "error", "rule": "lock-table",
        "message": finding["message"], "hint": finding["hint"]}


def test_sarif_output_is_valid_sarif_2_1_0(project: Project, run_lint: RunLint) -> None:
    project.revision("users", "2026-11-25T1400", "x", "TRUNCATE users;", down=None)
    project.revision("users", "2026-11-25T1401", "y", "SELECT 1;")
    result = run_lint("--format", "sarif")
    log = json.loads(result.output)
    jsonschema.validate(log, json.loads(SCHEMA.read_text(encoding="utf-8")))
    results = log["runs"][0]["results"]
    assert {r["ruleId"] for r in results} == {"truncate", "missing-down"}
    assert {r["level"] for r in results} == {"error", "warning"}
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    assert all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in results)


def test_github_annotations(project: Project, run_lint: RunLint) -> None:
    project.revision("users", "2026-11-25T1400", "x", "TRUNCATE users;")
    [line] = run_lint("--format", "github").output.splitlines()
    assert line.startswith("::error file=services/users/migrations/2026-11-25T1400__users__x.sql,"
                           "line=2,col=1,title=truncate::TRUNCATE users.users")


def test_python_revision_is_rendered_and_linted(project: Project, run_lint: RunLint) -> None:
    project.revision("users", "2026-11-25T1400", "create", "CREATE TABLE users (id int);")
    project.write("services/users/migrations/2026-11-25T1500__users__add_email.py",
                  PY_REVISION.format(down="users_202611251400", extra=""))
    found = findings_of(run_lint("--format", "json"))
    # the index builds while the ADD COLUMN's lock is held: one transaction
    assert {(f["rule"], f["line"]) for f in found} == {
        ("not-null-column-without-default", 9), ("create-index-non-concurrently", 9),
        ("lock-held-during-work", 9)}


def test_python_revision_suppression(project: Project, run_lint: RunLint) -> None:
    project.revision("users", "2026-11-25T1400", "create", "CREATE TABLE users (id int);")
    extra = ("# svcmig:ignore create-index-non-concurrently table has 10 rows\n"
             "# svcmig:ignore not-null-column-without-default table is empty in every stage\n"
             "# svcmig:ignore lock-held-during-work table has 10 rows")
    project.write("services/users/migrations/2026-11-25T1500__users__add_email.py",
                  PY_REVISION.format(down="users_202611251400", extra=extra))
    result = run_lint()
    assert result.exit_code == 0, result.output


def test_python_revision_that_fails_to_render(project: Project, run_lint: RunLint) -> None:
    project.write("services/users/migrations/2026-11-25T1500__users__boom.py",
                  'revision = "users_202611251500"\ndown_revision = None\n\n'
                  'def upgrade():\n    raise RuntimeError("boom")\n')
    result = run_lint("--format", "json")
    assert result.exit_code == 2
    [finding] = findings_of(result)
    assert (finding["rule"], finding["line"]) == ("parse-error", 4)


def test_two_heads_in_a_service(project: Project, run_lint: RunLint) -> None:
    project.revision("users", "2026-11-25T1400", "create", "CREATE TABLE users (id int);")
    project.write("services/users/migrations/2026-11-25T1500__users__add_email.py",
                  PY_REVISION.format(down=None, extra=""))
    found = findings_of(run_lint("--format", "json"))
    assert "one-head-per-service" in {f["rule"] for f in found}


def test_file_names_and_folders(project: Project, run_lint: RunLint) -> None:
    project.write("services/users/migrations/add_email.sql", "SELECT 1;\n")
    project.write("services/users/migrations/2026-11-25T1400__orders__x.sql", "SELECT 1;\n")
    stray = project.write("sql/2026-11-25T1400__users__y.sql", "-- migrate:up\nTRUNCATE users;\n")
    found = findings_of(run_lint("--format", "json", "services", str(stray)))
    assert {(f["path"], f["rule"]) for f in found} >= {
        ("services/users/migrations/add_email.sql", "filename-convention"),
        ("services/users/migrations/2026-11-25T1400__orders__x.sql", "wrong-service-folder"),
        ("sql/2026-11-25T1400__users__y.sql", "wrong-service-folder"),
        ("sql/2026-11-25T1400__users__y.sql", "truncate"),
    }


def test_history_of_earlier_revisions_is_used(project: Project, run_lint: RunLint) -> None:
    project.revision("users", "2026-11-25T1400", "create", "CREATE TABLE users (email text);")
    project.revision("users", "2026-11-25T1401", "check",
                     "ALTER TABLE users ADD CONSTRAINT nn CHECK (email IS NOT NULL) NOT VALID;")
    project.revision("users", "2026-11-25T1402", "validate",
                     "ALTER TABLE users VALIDATE CONSTRAINT nn;")
    last = project.revision("users", "2026-11-25T1403", "set",
                            "ALTER TABLE users ALTER COLUMN email SET NOT NULL;")
    result = run_lint(str(last))
    assert result.exit_code == 0, result.output


def test_runs_as_a_module(project: Project) -> None:
    project.revision("users", "2026-11-25T1400", "x", "TRUNCATE users;")
    done = subprocess.run([sys.executable, "-m", "migrations_runtime.cli", "lint", "--format",
                           "json"], capture_output=True, text=True, cwd=project.root, check=False,
                          env={"PYTHONPATH": str(Path(__file__).parents[2]), "PATH": ""})
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)[0]["rule"] == "truncate"


def test_parallel_run_matches_serial_run(project: Project) -> None:
    from migrations_runtime.cli.lint import _all_revision_files
    from migrations_runtime.engine.discover import discover_services
    from migrations_runtime.guard import rules
    from migrations_runtime.guard.linter import Linter

    for service in ("users", "orders"):
        project.revision(service, "2026-11-25T1400", "create", f"CREATE TABLE {service} (i int);")
        project.revision(service, "2026-11-25T1401", "wipe", f"TRUNCATE {service};", down=None)
    services = discover_services(project.root)
    files = _all_revision_files(services)
    serial = Linter(services, workers=1).lint_paths(files)
    parallel = Linter(services, workers=2).lint_paths(files)
    assert parallel == serial and len(serial) == 4
    assert {f.rule for f in parallel} == {rules.BY_NAME["truncate"], rules.MISSING_DOWN}


def test_paths_are_shown_as_display_path_shows_them(project: Project, tmp_path_factory:
                                                    pytest.TempPathFactory) -> None:
    """The formatters resolve each folder once; every kind of path reads as display_path
    (which resolves each path whole) reads it."""
    from migrations_runtime.guard.formatters import _Shown, display_path

    real = project.revision("users", "2026-11-25T1400", "real", "SELECT 1;")
    outside = tmp_path_factory.mktemp("elsewhere") / "2026-11-25T1401__users__out.sql"
    outside.write_text("SELECT 1;\n", encoding="utf-8")
    linked = real.with_name("2026-11-25T1402__users__linked.sql")
    linked.symlink_to(outside)
    back = real.with_name("2026-11-25T1403__users__back.sql")
    back.symlink_to(real)
    (project.root / "services/link").symlink_to(project.root / "services/users")
    paths = [real, outside, linked, back, Path("alembic.ini"), Path("services/users/../x.sql"),
             Path("services/link/migrations") / real.name, project.root, Path("."),
             Path("services/users/migrations/missing.sql"), outside.parent / "missing.sql"]
    shown = _Shown(project.root)
    assert [shown(p) for p in paths] == [display_path(p, project.root) for p in paths]
