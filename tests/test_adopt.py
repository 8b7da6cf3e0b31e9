"""`svcmig baseline --from-database`: a database whose schemas predate svcmig is adopted with
each service's schema as its root revision, so the guard knows the types, constraints and
indexes that were there before (issue 14's false alarms on adopted tables, and the misses)."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from migrations_runtime.engine.discover import discover_services
from migrations_runtime.guard.linter import Linter
from tests.conftest import fresh_database, query, run_cli, write_project

LEGACY = """
CREATE SCHEMA adopted;
CREATE TYPE adopted.member_status AS ENUM ('active', 'suspended');
CREATE TABLE adopted.members (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  email varchar(100) NOT NULL,
  nickname text,
  status adopted.member_status NOT NULL DEFAULT 'active',
  score numeric(10, 2) CHECK (score >= 0),
  created_at timestamptz NOT NULL DEFAULT now());
CREATE UNIQUE INDEX members_email_key ON adopted.members (lower(email));
CREATE TABLE adopted.notes (id bigserial PRIMARY KEY,
  member_id bigint NOT NULL REFERENCES adopted.members (id), body text);
CREATE VIEW adopted.active_members AS SELECT id, email FROM adopted.members
  WHERE status = 'active';
CREATE FUNCTION adopted.member_count() RETURNS bigint LANGUAGE sql AS
  $$ SELECT count(*) FROM adopted.members $$;
"""


@pytest.fixture
def legacy(server_url: str) -> str:
    with fresh_database(server_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(LEGACY)
            conn.execute("INSERT INTO adopted.members (email) VALUES ('a@example.com')")
        yield url


def adopt(tmp_path: Path, url: str) -> Path:
    root = write_project(tmp_path / "project", {"adopted": {}})
    done = run_cli(root, "baseline", "--from-database", url, "adopted", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    [written] = answer["written"]
    assert written.startswith("services/adopted/migrations/") and written.endswith(
        "__adopted__baseline.sql")
    assert answer["baselined"] == [Path(written).name.split("__")[0].replace("-", "")
                                   .replace("T", "").join(["adopted_", ""])]
    return root


def test_the_schema_becomes_the_root_revision_marked_applied(tmp_path: Path, legacy: str,
                                                             server_url: str) -> None:
    root = adopt(tmp_path, legacy)
    status = run_cli(root, "status", "--database-url", legacy)
    assert status.returncode == 0, status.stdout + status.stderr
    assert query(legacy, "SELECT count(*) FROM adopted.members") == [(1,)]  # data untouched
    [baseline] = (root / "services/adopted/migrations").glob("*.sql")
    text = baseline.read_text()
    assert "CREATE TABLE adopted.members" in text
    # pg_dump's session settings are gone, but for the revision's own function-body check
    assert [line for line in text.splitlines() if line.startswith(("SET ", "SELECT pg_catalog",
                                                                    "\\", "CREATE SCHEMA"))] \
        == ["SET LOCAL check_function_bodies = false;"]
    # the revision rebuilds the same schema on an empty database, through the runner
    with fresh_database(server_url) as empty:
        applied = run_cli(root, "migrate", "--database-url", empty)
        assert applied.returncode == 0, applied.stderr
        columns = ("SELECT table_name, column_name, data_type, is_nullable FROM "
                   "information_schema.columns WHERE table_schema = 'adopted' ORDER BY 1, 2")
        assert query(empty, columns) == query(legacy, columns)


def test_the_guard_knows_what_predates_svcmig(tmp_path: Path, legacy: str) -> None:
    root = adopt(tmp_path, legacy)
    folder = root / "services/adopted/migrations"
    revisions = {
        "2099-01-01T0000__adopted__narrow.sql":
            "ALTER TABLE members ALTER COLUMN email TYPE varchar(50);",
        "2099-01-02T0000__adopted__widen.sql":
            "ALTER TABLE members ALTER COLUMN email TYPE varchar(200);",
        "2099-01-03T0000__adopted__not_null.sql":
            "ALTER TABLE members ALTER COLUMN nickname SET NOT NULL;",
        "2099-01-04T0000__adopted__drop_default.sql":
            "ALTER TABLE members ALTER COLUMN status DROP DEFAULT;",
        "2099-01-05T0000__adopted__backfill.sql":
            "UPDATE notes SET body = '' WHERE body IS NULL;",
    }
    for name, sql in revisions.items():
        (folder / name).write_text(f"{sql}\n-- migrate:down\nSELECT 1;\n")
    findings = Linter(discover_services(root)).lint_paths(sorted(folder.glob("*.sql")))
    found = {(f.path.name.split("__")[-1], f.rule.name) for f in findings}
    assert found == {
        ("narrow.sql", "column-type-change"), ("narrow.sql", "destructive-change-in-expand"),
        ("not_null.sql", "set-not-null-without-check"),
        ("drop_default.sql", "destructive-change-in-expand"),
        ("backfill.sql", "unbatched-data-change"),
    }, found  # the baseline itself lints clean; widening a known varchar is fine


@pytest.mark.parametrize(("setup", "args", "message"), [
    ("history", ["adopted"], "already has revisions"),
    ("none", ["nosuch"], "no service 'nosuch'"),
    ("empty", ["adopted"], "has no objects"),
    ("none", [], "needs the services to adopt"),
])
def test_refusals_are_one_line_and_write_nothing(tmp_path: Path, legacy: str, server_url: str,
                                                 setup: str, args: list[str],
                                                 message: str) -> None:
    files = {"2026-01-01T0000__adopted__x.sql": "SELECT 1;\n"} if setup == "history" else {}
    root = write_project(tmp_path / "project", {"adopted": files})
    with fresh_database(server_url) as empty:
        url = empty if setup == "empty" else legacy
        done = run_cli(root, "baseline", "--from-database", url, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert sorted(p.name for p in (root / "services/adopted/migrations").iterdir()) == sorted(files)


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    root = write_project(tmp_path / "project", {"adopted": {}})
    done = run_cli(root, "baseline", "--from-database",
                   "postgresql://nobody:secret@127.0.0.1:1/nothing", "adopted")
    assert done.returncode == 1 and "pg_dump of schema adopted" in done.stderr
    assert "secret" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
