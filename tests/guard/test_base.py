"""`--base GIT_REV` against a real temporary git repository: edited, renamed, deleted and
out-of-order revisions are errors; new revisions are linted; old ones are not."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import Project, RunLint, findings_of


def git(project: Project, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Guard Test", "-c", "user.email=guard@example.com",
         "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args],
        cwd=project.root, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(project: Project) -> Project:
    git(project, "init", "-q")
    project.revision("users", "2026-11-25T1400", "create", "CREATE TABLE users (id int);")
    project.revision("users", "2026-11-25T1500", "email", "ALTER TABLE users ADD COLUMN e text;")
    project.revision("users", "2026-11-25T1600", "wipe", "TRUNCATE users;")  # old, not linted
    project.revision("orders", "2026-11-25T1400", "create", "CREATE TABLE orders (id int);")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "base")
    return project


def rules_by_file(result: object) -> set[tuple[str, str]]:
    return {(str(f["path"]).rsplit("/", 1)[-1], str(f["rule"]))
            for f in findings_of(result)}  # type: ignore[arg-type]


def test_unchanged_tree_is_clean(repo: Project, run_lint: RunLint) -> None:
    result = run_lint("--base", "HEAD", "--format", "json")
    assert result.exit_code == 0, result.output
    assert findings_of(result) == []


def test_edited_renamed_deleted_and_out_of_order(repo: Project, run_lint: RunLint) -> None:
    migrations = repo.root / "services" / "users" / "migrations"
    edited = migrations / "2026-11-25T1500__users__email.sql"
    edited.write_text(edited.read_text() + "CREATE TABLE extra (id int);\n")
    git(repo, "mv", "services/users/migrations/2026-11-25T1400__users__create.sql",
        "services/users/migrations/2026-11-25T1400__users__create_users.sql")
    git(repo, "rm", "-q", "services/orders/migrations/2026-11-25T1400__orders__create.sql")
    repo.revision("users", "2026-11-25T1530", "late", "SELECT 1;")  # untracked, older than 1600
    repo.revision("users", "2026-11-25T1700", "next", "SELECT 1;")  # fine
    git(repo, "add", "services/users/migrations/2026-11-25T1700__users__next.sql")
    result = run_lint("--base", "HEAD", "--format", "json")
    assert result.exit_code == 1
    assert rules_by_file(result) == {
        ("2026-11-25T1500__users__email.sql", "append-only"),
        ("2026-11-25T1400__users__create_users.sql", "append-only"),
        ("2026-11-25T1400__orders__create.sql", "append-only"),
        ("2026-11-25T1530__users__late.sql", "out-of-order"),
    }


def test_committed_changes_count_too(repo: Project, run_lint: RunLint) -> None:
    base = git(repo, "rev-parse", "HEAD").strip()
    repo.revision("users", "2026-11-25T1700", "bad", "DELETE FROM users;")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "feature")
    result = run_lint("--base", base, "--format", "json")
    assert rules_by_file(result) == {("2026-11-25T1700__users__bad.sql", "dml-without-where")}


def test_whitespace_only_edit_is_not_an_edit(repo: Project, run_lint: RunLint) -> None:
    path = repo.root / "services/users/migrations/2026-11-25T1500__users__email.sql"
    path.write_text(path.read_text().replace("\n", "   \r\n"))
    assert run_lint("--base", "HEAD").exit_code == 0


def test_same_minute_as_base_head_is_out_of_order(repo: Project, run_lint: RunLint) -> None:
    repo.revision("users", "2026-11-25T1600", "clash", "SELECT 1;")
    assert ("2026-11-25T1600__users__clash.sql", "out-of-order") in rules_by_file(
        run_lint("--base", "HEAD", "--format", "json"))


def test_paths_narrow_the_base_diff(repo: Project, run_lint: RunLint) -> None:
    repo.revision("users", "2026-11-25T1700", "bad", "DELETE FROM users;")
    assert run_lint("--base", "HEAD", "services/orders").exit_code == 0
    assert run_lint("--base", "HEAD", "services/users").exit_code == 1


def test_unknown_base_is_a_usage_error(repo: Project, run_lint: RunLint) -> None:
    result = run_lint("--base", "no-such-rev")
    assert result.exit_code == 2
    assert "git" in result.output
