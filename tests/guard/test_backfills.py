"""Backfills (issue 16) linted like revisions, by kind: what the runner refuses when it loads a
backfill, a batch that touches rows outside its range, writes to another service, escapes from
the batch's session — each at its file:line in every output format — and well-formed backfills
that pass, including the forms the revision rules would call whole-table DML. Then append-only
for backfills against a git base, and the whole-table hints of revision rules pointing here."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from migrations_runtime.guard import rules
from migrations_runtime.guard.linter import lint_example

from .conftest import Project, RunLint, findings_of
from .test_base import git

SCHEMA = Path(__file__).with_name("sarif-schema-2.1.0.json")
STAMP = "2026-12-01T0900"
PY_BACKFILL = '''"""Copy each user's legacy plan."""
key = "users.id"
batch_size = 500


def batch(conn, start, end):
    return conn.execute("UPDATE users SET plan = legacy_plan WHERE id >= %s AND id < %s",
                        (start, end)).rowcount
'''


def backfill(project: Project, service: str, text: str, slug: str = "fill",
             folder: str | None = None, stamp: str = STAMP, ext: str = "sql") -> Path:
    return project.write(f"services/{folder or service}/backfills/{stamp}__{service}__{slug}"
                         f".{ext}", text)


def lint_one(run_lint: RunLint, path: Path) -> list[tuple[str, int]]:
    return [(str(f["rule"]), int(f["line"]))  # type: ignore[call-overload]
            for f in findings_of(run_lint("--format", "json", str(path)))]


# (kind, service, backfill file, rule that must fire, its line)
HAZARDS = [
    # a batch that touches rows outside its range
    ("bound-under-or", "users", "-- key: users.id\nUPDATE users SET plan = 'free'\n"
     "WHERE id >= :start AND id < :end OR plan IS NULL;", "backfill-outside-range", 2),
    ("bound-under-or", "users", "UPDATE users SET plan = 'free' WHERE id >= :start OR true;",
     "backfill-outside-range", 1),
    ("start-outside-the-filter", "users", "-- key: users.id\n-- batch-size: 500\n"
     "UPDATE users SET first_batch = :start WHERE id < :end;", "backfill-outside-range", 3),
    ("start-outside-the-filter", "users", "UPDATE users SET first_batch = :start "
     "WHERE id < :end;", "backfill-outside-range", 1),
    ("end-included", "users", "-- key: sessions.id\n"
     "DELETE FROM sessions WHERE id BETWEEN :start AND :end;", "backfill-outside-range", 2),
    ("end-included", "users", "UPDATE users SET a = 1 WHERE id >= :start AND id <= :end;",
     "backfill-outside-range", 1),
    ("start-skipped", "users", "UPDATE users SET a = 1 WHERE id > :start AND id < :end;",
     "backfill-outside-range", 1),
    ("bounds-on-another-column", "users", "-- key: users.id\nUPDATE users SET a = 1\n"
     "WHERE legacy_id >= :start AND legacy_id < :end;", "backfill-outside-range", 2),
    ("unbounded-cte", "users", "-- key: users.id\n"
     "WITH gone AS (DELETE FROM login_attempts RETURNING user_id)\n"
     "UPDATE users SET attempts = 0 WHERE id >= :start AND id < :end;",
     "backfill-outside-range", 2),
    ("insert-select-unbounded", "users", "-- key: users.id\n"
     "INSERT INTO user_stats (user_id, n) SELECT id, :start FROM users WHERE id < :end;",
     "backfill-outside-range", 2),
    ("merge-inserts-outside", "users", "-- key: users.id\nMERGE INTO users u USING imports i\n"
     "ON u.id = i.user_id AND u.id >= :start AND u.id < :end\n"
     "WHEN MATCHED THEN UPDATE SET name = i.name\n"
     "WHEN NOT MATCHED THEN INSERT (id, name) VALUES (i.user_id, i.name);",
     "backfill-outside-range", 2),
    ("locking-read-unbounded", "users", "-- key: users.id\nUPDATE users SET a = 1 "
     "WHERE id >= :start AND id < :end\n  AND org_id IN (SELECT id FROM orgs FOR UPDATE);",
     "backfill-outside-range", 2),
    ("no-bounds-at-all", "users", "UPDATE users SET plan = 'free' WHERE plan IS NULL;",
     "backfill-outside-range", 1),
    ("missing-end", "users", "\n\nDELETE FROM sessions WHERE id >= :start;",
     "backfill-outside-range", 3),
    # writes to another service
    ("cross-service", "orders", "UPDATE users.users SET plan = 'x'\n"
     "WHERE id >= :start AND id < :end;", "cross-service-write", 1),
    ("cross-service", "orders", "-- key: orders.id\n"
     "UPDATE users.users SET plan = 'x' WHERE id >= :start AND id < :end;",
     "cross-service-write", 2),
    ("cross-service", "orders", "-- key: orders.id\n"
     "WITH moved AS (DELETE FROM users.outbox WHERE id >= :start AND id < :end RETURNING id)\n"
     "INSERT INTO archive (id) SELECT id FROM moved;", "cross-service-write", 2),
    # escapes from the batch's session
    ("session-escape", "users", "-- key: users.id\nUPDATE users SET note = "
     "set_config('search_path', 'orders', true) WHERE id >= :start AND id < :end;",
     "session-override", 2),
    ("session-escape", "users", "-- key: users.id\nUPDATE users SET note = "
     "set_config('lock_timeout', '0', true) WHERE id >= :start AND id < :end;",
     "session-override", 2),
    # what the runner refuses when it loads a backfill
    ("not-a-data-change", "users", "-- :start :end\nALTER TABLE users ADD COLUMN plan text;",
     "refused-by-runner", 2),
    ("not-a-data-change", "users", "DO $$ BEGIN UPDATE users SET a = 1 WHERE id > 0; END $$;",
     "refused-by-runner", 1),
    ("not-a-data-change", "users", "SELECT count(*) FROM users "
     "WHERE id >= :start AND id < :end;", "refused-by-runner", 1),
    ("several-statements", "users", "UPDATE users SET a = 1 WHERE id >= :start AND id < :end;\n"
     "UPDATE users SET b = 1 WHERE id >= :start AND id < :end;", "refused-by-runner", 1),
    ("key-unknown", "users", "INSERT INTO audit (n) SELECT count(*) FROM users "
     "WHERE id >= :start AND id < :end;", "refused-by-runner", 1),
    ("parse-error", "users", "-- key: users.id\n\nUPDATE users SET a = 1\n"
     "WHER id >= :start AND id < :end;", "parse-error", 4),
    ("revision-directive", "users", "-- requires-backfill: users.other\n"
     "UPDATE users SET a = 1 WHERE id >= :start AND id < :end;", "parse-error", 1),
    ("bad-batch-size", "users", "-- batch-size: lots\n"
     "UPDATE users SET a = 1 WHERE id >= :start AND id < :end;", "parse-error", 1),
]

GOOD = [
    ("range-and-filter", "users", "-- The plan of users who signed up before it existed.\n"
     "-- key: users.id\n-- batch-size: 2000\n"
     "UPDATE users SET plan = 'free' WHERE id >= :start AND id < :end AND plan IS NULL;"),
    ("key-from-the-statement", "users", "DELETE FROM login_attempts\n"
     "WHERE id >= :start AND id < :end AND created_at < now() - interval '90 days';"),
    ("param-on-the-left", "users", "UPDATE users SET a = 1 WHERE :start <= id AND :end > id;"),
    ("casts", "users", "-- key: users.id\nUPDATE users SET plan = 'free'\n"
     "WHERE id >= :start::bigint AND id < :end::bigint AND plan IS NULL;"),
    ("between-end-minus-one", "users", "-- key: users.id\n"
     "UPDATE users SET a = 1 WHERE id BETWEEN :start AND :end - 1;"),
    ("own-schema-qualified", "users", "UPDATE users.users SET a = 1 "
     "WHERE users.id >= :start AND users.id < :end;"),
    ("volatile-per-row", "users", "UPDATE users SET token = gen_random_uuid()\n"
     "WHERE id >= :start AND id < :end AND token IS NULL;"),
    ("insert-select-bounded", "users", "-- key: users.id\n"
     "INSERT INTO user_stats (user_id, n) SELECT u.id, 0 FROM users u\n"
     "WHERE u.id >= :start AND u.id < :end ON CONFLICT (user_id) DO NOTHING;"),
    ("join-to-the-key-table", "users", "-- key: users.id\nUPDATE user_settings s "
     "SET theme = 'light' FROM users u\n"
     "WHERE s.user_id = u.id AND u.id >= :start AND u.id < :end AND u.theme IS NULL;"),
    ("cte-batch", "users", "-- key: users.id\nWITH b AS (SELECT id FROM users "
     "WHERE id >= :start AND id < :end AND plan IS NULL)\n"
     "UPDATE users SET plan = 'free' WHERE id IN (SELECT id FROM b);"),
    ("merge-bounded-source", "users", "-- key: users.id\nMERGE INTO users u USING "
     "(SELECT * FROM imports WHERE user_id >= :start AND user_id < :end) i\n"
     "ON u.id = i.user_id WHEN MATCHED THEN UPDATE SET name = i.name\n"
     "WHEN NOT MATCHED THEN INSERT (id, name) VALUES (i.user_id, i.name);"),
    ("reads-another-service", "users", "-- key: users.id\nUPDATE users u SET order_count = "
     "(SELECT count(*) FROM orders.orders o WHERE o.user_id = u.id)\n"
     "WHERE u.id >= :start AND u.id < :end;"),
    ("moves-rows-in-its-range", "orders", "-- key: orders.id\n"
     "WITH moved AS (DELETE FROM orders WHERE id >= :start AND id < :end "
     "AND status = 'void' RETURNING *)\nINSERT INTO orders_archive SELECT * FROM moved;"),
    ("suppressed", "users", "-- key: users.id\n"
     "-- svcmig:ignore backfill-outside-range the update is idempotent: a boundary row twice "
     "is fine\nUPDATE users SET a = 1 WHERE id BETWEEN :start AND :end;"),
]


@pytest.mark.parametrize(("kind", "service", "text", "rule", "line"), HAZARDS,
                         ids=[f"{k}-{i}" for i, (k, *_) in enumerate(HAZARDS)])
def test_bad_backfill_is_reported_at_its_line(project: Project, run_lint: RunLint, kind: str,
                                              service: str, text: str, rule: str,
                                              line: int) -> None:
    path = backfill(project, service, text + "\n")
    assert (rule, line) in lint_one(run_lint, path), kind


@pytest.mark.parametrize(("kind", "service", "text"), GOOD,
                         ids=[f"{k}-{i}" for i, (k, *_) in enumerate(GOOD)])
def test_good_backfill_passes(project: Project, run_lint: RunLint, kind: str, service: str,
                              text: str) -> None:
    path = backfill(project, service, text + "\n")
    result = run_lint("--format", "json", str(path))
    assert (result.exit_code, findings_of(result)) == (0, []), kind


def test_whole_table_rules_of_revisions_do_not_fire_on_a_bounded_backfill(
        project: Project, run_lint: RunLint) -> None:
    """The same statement is `unbatched-data-change` in a revision (the batch bounds are its
    own) and clean as a backfill; `lock-held-during-work` has nothing to follow."""
    sql = "UPDATE users SET plan = 'free' WHERE id >= $1 AND plan IS NULL;"
    assert "unbatched-data-change" in {f.rule.name for f in lint_example(sql)}
    backfill(project, "users", "UPDATE users SET plan = 'free'\n"
             "WHERE id >= :start AND id < :end AND plan IS NULL;\n")
    assert run_lint("--all").exit_code == 0


def test_bad_names_and_folders(project: Project, run_lint: RunLint) -> None:
    good = "UPDATE users SET a = 1 WHERE id >= :start AND id < :end;\n"
    project.write("services/users/backfills/fill_plan.sql", good)
    backfill(project, "users", good, folder="orders", slug="misplaced")
    backfill(project, "users", good, slug="twice")
    backfill(project, "users", good, slug="twice", stamp="2026-12-02T0900")
    backfill(project, "users", "key = 'users.id'\ndef batch(conn, start):\n    pass\n",
             slug="py_bad", ext="py")
    project.write("services/users/backfills/README.md", "How to write a backfill.\n")
    found = {(Path(str(f["path"])).name, f["rule"])
             for f in findings_of(run_lint("--all", "--format", "json"))}
    assert found == {
        ("fill_plan.sql", "filename-convention"),
        (f"{STAMP}__users__misplaced.sql", "wrong-service-folder"),
        ("2026-12-02T0900__users__twice.sql", "refused-by-runner"),
        (f"{STAMP}__users__py_bad.py", "refused-by-runner"),
    }


def test_misplaced_backfill_is_linted_as_its_own_service(project: Project,
                                                         run_lint: RunLint) -> None:
    path = backfill(project, "users", "UPDATE users.users SET a = 1 "
                    "WHERE id >= :start AND id < :end;\n", folder="orders")
    assert lint_one(run_lint, path) == [("wrong-service-folder", 1)]


def test_python_backfill_is_checked_as_far_as_it_loads(project: Project,
                                                      run_lint: RunLint) -> None:
    backfill(project, "users", PY_BACKFILL, ext="py")
    result = run_lint("--all")
    assert result.exit_code == 0, result.output


def test_selection_all_folders_and_files(project: Project, run_lint: RunLint) -> None:
    project.revision("users", "2026-11-25T1400", "create", "CREATE TABLE users (id int);")
    bad = backfill(project, "users", "UPDATE users SET a = 1 WHERE id >= :start OR true;\n")
    for args in ((), ("--all",), ("services/users",), ("services",), (str(bad),)):
        result = run_lint("--format", "json", *args)
        assert result.exit_code == 1, args
        assert [f["path"] for f in findings_of(result)] == [
            f"services/users/backfills/{STAMP}__users__fill.sql"], args
    assert run_lint("services/orders").exit_code == 0


def test_a_backfill_that_does_not_parse_exits_2(project: Project, run_lint: RunLint) -> None:
    backfill(project, "users", "UPDATE users SET a = 1\nWHER id >= :start AND id < :end;\n")
    assert run_lint("--all").exit_code == 2


def test_text_and_github_formats_point_at_the_backfill(project: Project,
                                                       run_lint: RunLint) -> None:
    backfill(project, "orders", "-- key: orders.id\n"
             "UPDATE users.users SET plan = 'x' WHERE id >= :start AND id < :end;\n")
    where = f"services/orders/backfills/{STAMP}__orders__fill.sql"
    text = run_lint("--all").output.splitlines()
    assert text[0].startswith(f"{where}:2:1 error cross-service-write ")
    [github] = run_lint("--all", "--format", "github").output.splitlines()
    assert github.startswith(f"::error file={where},line=2,col=1,title=cross-service-write::")


def test_sarif_includes_backfill_findings(project: Project, run_lint: RunLint) -> None:
    project.revision("users", "2026-11-25T1400", "x", "TRUNCATE users;")
    backfill(project, "users", "-- key: users.id\n"
             "DELETE FROM sessions WHERE id BETWEEN :start AND :end;\n", slug="purge")
    backfill(project, "users", "-- key: users.id\nALTER TABLE users ADD COLUMN b int;\n",
             slug="ddl")
    log = json.loads(run_lint("--all", "--format", "sarif").output)
    jsonschema.validate(log, json.loads(SCHEMA.read_text(encoding="utf-8")))
    results = log["runs"][0]["results"]
    located = {(r["ruleId"], r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
                r["locations"][0]["physicalLocation"]["region"]["startLine"]) for r in results}
    assert located == {
        ("truncate", "services/users/migrations/2026-11-25T1400__users__x.sql", 2),
        ("backfill-outside-range", f"services/users/backfills/{STAMP}__users__purge.sql", 2),
        ("refused-by-runner", f"services/users/backfills/{STAMP}__users__ddl.sql", 2),
    }
    driver_rules = log["runs"][0]["tool"]["driver"]["rules"]
    assert all(driver_rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in results)


# --- append-only against a git base -----------------------------------------------------------

@pytest.fixture
def repo(project: Project) -> Project:
    git(project, "init", "-q")
    project.revision("users", "2026-11-25T1400", "create", "CREATE TABLE users (id int);")
    backfill(project, "users", "UPDATE users SET plan = 'free'\n"
             "WHERE id >= :start AND id < :end AND plan IS NULL;\n", slug="fill_plan")
    backfill(project, "users", "DELETE FROM sessions WHERE id >= :start AND id < :end;\n",
             slug="purge")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "base")
    return project


def rules_by_file(result: object) -> set[tuple[str, str]]:
    return {(Path(str(f["path"])).name, str(f["rule"]))
            for f in findings_of(result)}  # type: ignore[arg-type]


def test_edited_backfill_is_append_only(repo: Project, run_lint: RunLint) -> None:
    path = repo.root / f"services/users/backfills/{STAMP}__users__fill_plan.sql"
    path.write_text(path.read_text().replace("'free'", "'trial'"))
    result = run_lint("--base", "HEAD", "--format", "json")
    assert result.exit_code == 1
    assert rules_by_file(result) == {(f"{STAMP}__users__fill_plan.sql", "append-only")}


def test_whitespace_edit_new_and_deleted_backfills(repo: Project, run_lint: RunLint) -> None:
    path = repo.root / f"services/users/backfills/{STAMP}__users__fill_plan.sql"
    path.write_text(path.read_text().replace("\n", "  \r\n"))
    (repo.root / f"services/users/backfills/{STAMP}__users__purge.sql").unlink()
    assert run_lint("--base", "HEAD").exit_code == 0
    backfill(repo, "users", "UPDATE users SET a = 1 WHERE id >= :start OR true;\n",
             slug="late", stamp="2020-01-01T0000")  # older than the base: backfills have no order
    assert rules_by_file(run_lint("--base", "HEAD", "--format", "json")) == {
        ("2020-01-01T0000__users__late.sql", "backfill-outside-range")}


def test_renamed_backfill(repo: Project, run_lint: RunLint) -> None:
    folder = "services/users/backfills"
    git(repo, "mv", f"{folder}/{STAMP}__users__fill_plan.sql",
        f"{folder}/{STAMP}__users__fill_plans.sql")
    git(repo, "mv", f"{folder}/{STAMP}__users__purge.sql",
        f"{folder}/2026-12-05T0900__users__purge.sql")  # the same name, users.purge
    assert rules_by_file(run_lint("--base", "HEAD", "--format", "json")) == {
        (f"{STAMP}__users__fill_plans.sql", "append-only")}


# --- the hints of whole-table DML in revisions point to backfills --------------------------

@pytest.mark.parametrize(("sql", "rule"), [
    ("UPDATE users SET active = true;", "dml-without-where"),
    ("UPDATE users SET plan = 'free' WHERE plan IS NULL;", "unbatched-data-change"),
    ("DO $$ DECLARE i int; BEGIN FOR i IN 1..9 LOOP UPDATE users SET a = 1 WHERE id = i; "
     "END LOOP; END $$;", "unbatched-data-change"),
    ("ALTER TABLE users ADD COLUMN plan text;\nUPDATE users SET plan = 'free' WHERE plan IS NULL;",
     "lock-held-during-work"),
])
def test_whole_table_dml_in_a_revision_points_to_a_backfill(sql: str, rule: str) -> None:
    [finding] = [f for f in lint_example(sql) if f.rule.name == rule]
    assert "services/users/backfills/" in finding.message
    assert "svcmig backfill run" in finding.message
    assert "backfill" in finding.rule.hint and "svcmig backfill run" in finding.rule.hint


def test_held_lock_before_a_validate_does_not_point_to_backfills() -> None:
    [finding] = lint_example("ALTER TABLE users ADD CONSTRAINT c CHECK (a > 0) NOT VALID;\n"
                             "ALTER TABLE users VALIDATE CONSTRAINT c;")
    assert "backfills/" not in finding.message


def test_traced_hints_point_to_backfills() -> None:
    for rule in (rules.TRACED_REWRITE, rules.TRACED_LOCK_HELD, rules.TRACED_UNBOUNDED_SCAN):
        assert "backfills/" in rule.hint and "svcmig backfill run" in rule.hint, rule.name


@pytest.mark.parametrize(("name", "text"), [
    ("2026-12-01T0000__users__needs.sql",
     "-- phase: contract\n-- requires-backfill: users.nope\nSELECT 1;\n"),
    ("2026-12-01T0000__users__needs.py",
     'revision = "users_202612010000"\ndown_revision = None\nphase = "contract"\n'
     'requires_backfill = ["users.nope"]\n\ndef upgrade():\n    pass\n'),
])
def test_requires_backfill_naming_no_backfill_is_a_finding(tmp_path: Path, name: str,
                                                           text: str) -> None:
    """The planner would refuse every run of every service; the guard says so before merge."""
    from migrations_runtime.guard.backfills import unknown_backfill_findings, unknown_backfills

    revision = tmp_path / "services" / "users" / "migrations" / name
    revision.parent.mkdir(parents=True)
    revision.write_text(text)
    assert unknown_backfills(("users.nope",), revision) == ["users.nope"]
    folder = tmp_path / "services" / "users" / "backfills"
    folder.mkdir()
    (folder / "2026-12-01T0001__users__nope.sql").write_text(
        "UPDATE users SET x = 1 WHERE id >= :start AND id < :end;")
    assert unknown_backfills(("users.nope",), revision) == []
    assert [f.rule.name for f in unknown_backfill_findings(("users.gone",), revision)] == [
        "refused-by-runner"]
