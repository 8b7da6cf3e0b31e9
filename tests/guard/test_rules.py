"""Every SQL rule fires on each of its bad examples and stays quiet on its good ones; then
hand-written look-alikes that must not fire (or must)."""

from __future__ import annotations

import pytest

from migrations_runtime.guard import rules
from migrations_runtime.guard.findings import StatementRule
from migrations_runtime.guard.linter import lint_example

BAD = [(rule, sql) for rule in rules.STATEMENT_RULES for sql in rule.bad]
GOOD = [(rule, sql) for rule in rules.STATEMENT_RULES for sql in rule.good]


def names(sql: str, **kwargs: object) -> list[str]:
    return [f.rule.name for f in lint_example(sql, **kwargs)]  # type: ignore[arg-type]


def test_every_rule_has_examples() -> None:
    for rule in rules.STATEMENT_RULES:
        assert rule.bad and rule.good, rule.name
        assert rule.doc and rule.hint, rule.name


def test_rule_names_are_unique() -> None:
    assert len(rules.BY_NAME) == len(rules.ALL_RULES)


@pytest.mark.parametrize(("rule", "sql"), BAD, ids=[f"{r.name}-{i}" for i, (r, _) in
                                                     enumerate(BAD)])
def test_bad_example_fires(rule: StatementRule, sql: str) -> None:
    assert rule.name in names(sql)


@pytest.mark.parametrize(("rule", "sql"), GOOD, ids=[f"{r.name}-{i}" for i, (r, _) in
                                                       enumerate(GOOD)])
def test_good_example_is_clean(rule: StatementRule, sql: str) -> None:
    assert names(sql) == []


@pytest.mark.parametrize("sql", [
    "-- DELETE FROM users;\nSELECT 1;",
    "/* TRUNCATE users; DROP TABLE users; */ SELECT 1;",
    "INSERT INTO audit (note) VALUES ('DELETE FROM users; TRUNCATE users;');",
    "CREATE FUNCTION purge() RETURNS void LANGUAGE sql AS $$ DELETE FROM users; $$;",
    "CREATE FUNCTION p() RETURNS void LANGUAGE plpgsql AS $body$\n"
    "BEGIN\n  TRUNCATE users;\n  LOCK TABLE users;\nEND\n$body$;",
    "DO $$ BEGIN RAISE NOTICE 'DELETE FROM users'; END $$;",
    "DO LANGUAGE plpython3u $$ plpy.execute('DELETE FROM users') $$;",
    "CREATE TABLE devices (id bigint, user_id bigint);\n"
    "CREATE INDEX devices_user_idx ON devices (user_id);\n"
    "ALTER TABLE devices ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id);",
    "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;\n"
    "-- next revision\n"
    "ALTER TABLE users VALIDATE CONSTRAINT email_nn;",
    "DELETE FROM users WHERE id = 42;",
    "DELETE FROM users WHERE true AND id = 42;",
    "UPDATE users u SET plan = p.name FROM plans p WHERE u.id = p.user_id;",
    "DELETE FROM users USING banned b WHERE users.id = b.user_id;",
    "UPDATE users SET seen = now() WHERE CURRENT OF c;",
    "CREATE TABLE orders (id int);",  # unqualified: the users schema, not service orders
    "ALTER TABLE users.users ADD COLUMN note text;",
    "SELECT * FROM orders.orders WHERE id = 1;",
    "ALTER TABLE users ADD COLUMN created_at timestamptz DEFAULT now();",
    "ALTER TABLE users ADD COLUMN ts timestamptz DEFAULT CURRENT_TIMESTAMP;",
    "-- phase: contract\nALTER TABLE users DROP COLUMN legacy, DROP COLUMN older;",
    "-- migrate:no-transaction\nVACUUM (ANALYZE) users;",
])
def test_safe_look_alikes_do_not_fire(sql: str) -> None:
    assert names(sql) == []


@pytest.mark.parametrize(("sql", "rule"), [
    ("DELETE FROM users WHERE id = 1 OR true;", "dml-without-where"),
    ("DELETE FROM users WHERE NOT false;", "dml-without-where"),
    ("WITH gone AS (DELETE FROM users RETURNING id) SELECT count(*) FROM gone;",
     "dml-without-where"),
    ("ALTER TABLE users ADD COLUMN n int DEFAULT 0;", None),
    ("DELETE FROM orders.outbox WHERE id = 1;", "cross-service-write"),
    ("ALTER TABLE users SET SCHEMA orders;", "cross-service-write"),
    ("CREATE SCHEMA orders;", "cross-service-write"),
    ("CREATE TABLE users.t (id int);\nCREATE INDEX t_idx ON users.t (id);", None),
    ("CREATE TABLE t (id int);\nCREATE INDEX t_idx ON orders.t (id);",
     "create-index-non-concurrently"),
    ("ALTER TABLE users ADD COLUMN id2 int GENERATED ALWAYS AS IDENTITY;", "volatile-default"),
    ("ALTER TABLE users ADD CONSTRAINT c CHECK (a > 0) NOT VALID, VALIDATE CONSTRAINT c;",
     "lock-held-during-work"),
    ("UPDATE users u SET plan = p.name FROM plans p WHERE u.plan_id = p.id;",
     "unbatched-data-change"),
    ("CREATE TABLE t (a varchar(10));\n-- next revision\n"
     "ALTER TABLE t ALTER COLUMN a TYPE varchar(5);", "column-type-change"),
    ("CREATE TABLE t (a numeric(10, 2));\n-- next revision\n"
     "ALTER TABLE t ALTER COLUMN a TYPE numeric(12, 3);", "column-type-change"),
])
def test_hand_written_cases(sql: str, rule: str | None) -> None:
    found = names(sql)
    assert (rule in found) if rule else found == [], found


def test_pg_version_before_11_rewrites_on_any_default() -> None:
    sql = "ALTER TABLE users ADD COLUMN n int DEFAULT 0;"
    assert names(sql, pg_version=10) == ["volatile-default"]
    assert names(sql, pg_version=16) == []


def test_set_not_null_needs_pg12_even_with_check() -> None:
    sql = ("ALTER TABLE users ADD CONSTRAINT nn CHECK (email IS NOT NULL);\n"
           "-- next revision\nALTER TABLE users ALTER COLUMN email SET NOT NULL;")
    assert "set-not-null-without-check" in names(sql, pg_version=11)


def test_finding_positions_are_file_lines() -> None:
    sql = "-- phase: expand\n-- migrate:up\nSELECT 1;\n\n  TRUNCATE users;\n"
    [finding] = lint_example(sql)
    assert (finding.line, finding.column, finding.rule.name) == (5, 3, "truncate")


def test_parse_error_reports_its_line() -> None:
    [finding] = lint_example("SELECT 1;\nSELEC 2;\n")
    assert finding.rule.name == "parse-error"
    assert (finding.line, finding.column) == (2, 1)


@pytest.mark.parametrize(("sql", "expected"), [
    ("-- svcmig:ignore truncate cache table, rebuilt at boot\nTRUNCATE users;", []),
    ("TRUNCATE users; -- svcmig:ignore truncate cache table\nTRUNCATE accounts;", ["truncate"]),
    ("-- svcmig:ignore truncate\nTRUNCATE users;", ["invalid-suppression", "truncate"]),
    ("-- svcmig:ignore no-such-rule because\nTRUNCATE users;",
     ["invalid-suppression", "truncate"]),
    ("-- svcmig:ignore lock-table wrong rule\nTRUNCATE users;", ["truncate"]),
    ("SELECT 1;\n-- svcmig:ignore truncate ok\nTRUNCATE users;\nTRUNCATE accounts;",
     ["truncate"]),
])
def test_suppression(sql: str, expected: list[str]) -> None:
    assert names(sql) == expected


def test_positions_count_characters_not_bytes() -> None:
    [finding] = lint_example("-- café\nSELECT 'é'; TRUNCATE users;")
    assert (finding.line, finding.column) == (2, 13)


def test_down_section_is_parsed_but_not_linted() -> None:
    assert names("SELECT 1;\n-- migrate:down\nDROP TABLE users;") == []
    [finding] = lint_example("-- migrate:up\nSELECT 1;\n-- migrate:down\nSELEC 1;")
    assert (finding.rule.name, finding.line) == ("parse-error", 4)


def test_detach_partition_concurrently_needs_no_transaction() -> None:
    sql = "ALTER TABLE users DETACH PARTITION users_2020 CONCURRENTLY;"
    assert names(sql) == ["concurrently-in-transaction"]
    assert names("-- migrate:no-transaction\n" + sql) == []


def test_docs_cover_every_rule() -> None:
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "guard.md").read_text(encoding="utf-8")
    missing = [rule.name for rule in rules.ALL_RULES if f"`{rule.name}`" not in docs]
    assert missing == []


def test_trees_built_without_pglast_validation_are_the_same() -> None:
    """The linter parses without pglast's per-attribute checks (for speed): the trees of every
    rule example equal the validated ones."""
    from pglast import parser

    from migrations_runtime.guard.linter import (
        EXAMPLE_SEPARATOR,
        parse_statements,
        unchecked_nodes,
    )

    for rule in rules.STATEMENT_RULES:
        for sql in (*rule.bad, *rule.good):
            for part in sql.split(f"\n{EXAMPLE_SEPARATOR}\n"):
                body = "\n".join(line for line in part.splitlines()
                                  if not line.startswith("-- "))
                with unchecked_nodes():
                    fast = [s.node for s in parse_statements(body).statements]
                checked = [item.stmt for item in parser.parse_sql(body)]
                assert fast == checked, (rule.name, part)
