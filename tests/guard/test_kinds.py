"""The guard by kind (issue 14): each hazard from public bug reports the guard missed, with
inputs of its own beside it, and the false alarms it raised, with their look-alikes. The tables
exist from earlier revisions of service `users` unless a test creates them."""

from __future__ import annotations

import pytest

from migrations_runtime.guard.linter import lint_example


def names(sql: str) -> set[str]:
    return {f.rule.name for f in lint_example(sql)}


# (kind, sql, the rule that must fire)
HAZARDS = [
    # d: long ACCESS EXCLUSIVE / write-blocking operations
    ("refresh-matview", "REFRESH MATERIALIZED VIEW signups_daily;", "blocking-table-operation"),
    ("refresh-matview", "REFRESH MATERIALIZED VIEW users.signups_daily WITH DATA;",
     "blocking-table-operation"),
    ("set-unlogged", "ALTER TABLE sessions SET UNLOGGED;", "blocking-table-operation"),
    ("set-logged", "ALTER TABLE IF EXISTS sessions SET LOGGED;", "blocking-table-operation"),
    ("detach", "ALTER TABLE user_events DETACH PARTITION user_events_2026_11;",
     "blocking-table-operation"),
    ("detach", "ALTER TABLE users.user_events DETACH PARTITION users.user_events_2020;",
     "blocking-table-operation"),
    ("attach", "ALTER TABLE user_events ATTACH PARTITION user_events_2027 FOR VALUES IN (2027);",
     "blocking-table-operation"),
    ("domain", "ALTER DOMAIN positive_int ADD CHECK (VALUE > 0);", "blocking-table-operation"),
    # c: contract-only changes in expand
    ("enum-rename", "ALTER TYPE account_status RENAME VALUE 'suspended' TO 'blocked';",
     "destructive-change-in-expand"),
    ("enum-rename", "ALTER TYPE users.plan_kind RENAME VALUE 'gold' TO 'premium';",
     "destructive-change-in-expand"),
    ("drop-default", "CREATE TABLE orders_copy (currency text NOT NULL DEFAULT 'EUR');\n"
     "-- next revision\nALTER TABLE orders_copy ALTER COLUMN currency DROP DEFAULT;",
     "destructive-change-in-expand"),
    ("drop-default", "CREATE TABLE carts (id bigint PRIMARY KEY DEFAULT 0);\n"
     "-- next revision\nALTER TABLE carts ALTER id DROP DEFAULT;",
     "destructive-change-in-expand"),
    ("drop-object", "DROP VIEW IF EXISTS active_users, paying_users;",
     "destructive-change-in-expand"),
    ("drop-object", "DROP PROCEDURE recompute_scores();", "destructive-change-in-expand"),
    ("rename-object", "ALTER MATERIALIZED VIEW signups_daily RENAME TO signups_per_day;",
     "destructive-change-in-expand"),
    ("rename-object", "ALTER DOMAIN email_address RENAME TO email;",
     "destructive-change-in-expand"),
    ("narrowing", "CREATE TABLE counters (n bigint);\n-- next revision\n"
     "ALTER TABLE counters ALTER COLUMN n TYPE int;", "destructive-change-in-expand"),
    ("narrowing", "CREATE TABLE prices (amount numeric(12, 4));\n-- next revision\n"
     "ALTER TABLE prices ALTER COLUMN amount TYPE numeric(12, 2);",
     "destructive-change-in-expand"),
    # a: strong lock held through work in one transaction
    ("lock-then-backfill", "ALTER TABLE users ADD COLUMN plan text;\n"
     "UPDATE users SET plan = 'free' WHERE plan IS NULL;", "lock-held-during-work"),
    ("lock-then-backfill", "ALTER TABLE users ADD COLUMN plan text;\n"
     "UPDATE users SET plan = 'free' WHERE id > 0;", "lock-held-during-work"),
    ("not-valid-then-validate", "ALTER TABLE order_items ADD CONSTRAINT quantity_positive "
     "CHECK (quantity > 0) NOT VALID;\n"
     "ALTER TABLE order_items VALIDATE CONSTRAINT quantity_positive;", "lock-held-during-work"),
    ("not-valid-then-validate", "ALTER TABLE users ADD CONSTRAINT users_org_fk FOREIGN KEY "
     "(org_id) REFERENCES orgs (id) NOT VALID;\n"
     "ALTER TABLE users VALIDATE CONSTRAINT users_org_fk;", "lock-held-during-work"),
    ("lock-then-index", "ALTER TABLE users ALTER COLUMN bio SET STORAGE EXTERNAL;\n"
     "CREATE INDEX users_bio_idx ON users (bio);", "lock-held-during-work"),
    ("lock-then-lock-read", "LOCK TABLE users IN ACCESS EXCLUSIVE MODE;\n"
     "SELECT id FROM users WHERE plan = 'free' FOR UPDATE;", "lock-held-during-work"),
    # e: data changes by effect
    ("unbounded-backfill", "UPDATE users SET plan = 'free' WHERE plan IS NULL;",
     "unbatched-data-change"),
    ("unbounded-backfill", "UPDATE users SET plan = 'free' WHERE id > 0;",
     "unbatched-data-change"),
    ("unbounded-backfill", "DELETE FROM users WHERE id <> 7;", "unbatched-data-change"),
    ("locking-read", "SELECT user_id FROM user_settings FOR UPDATE;", "unbatched-data-change"),
    ("locking-read", "SELECT s.user_id FROM user_settings s WHERE s.theme = 'dark' "
     "FOR NO KEY UPDATE;", "unbatched-data-change"),
    ("merge", "MERGE INTO users u USING staging s ON u.email = s.email "
     "WHEN MATCHED THEN DELETE;", "unbatched-data-change"),
    ("upsert-select", "INSERT INTO users (id, plan) SELECT id, 'free' FROM legacy_users\n"
     "ON CONFLICT (id) DO UPDATE SET plan = EXCLUDED.plan;", "unbatched-data-change"),
    # b: what runs at migration time is linted, DO blocks included
    ("do-block", "DO $$ BEGIN DELETE FROM cart_items; END $$;", "dml-without-where"),
    ("do-block", "DO $$\nBEGIN\n  EXECUTE 'TRUNCATE cart_items';\nEND\n$$;", "truncate"),
    ("do-block", "DO $do$\nDECLARE r record;\nBEGIN\n  FOR r IN SELECT id FROM users LOOP\n"
     "    PERFORM 1;\n  END LOOP;\n  ALTER TABLE users DROP COLUMN legacy;\nEND\n$do$;",
     "destructive-change-in-expand"),
    ("do-block", "DO LANGUAGE plpgsql $$ BEGIN UPDATE orders.orders SET note = '' "
     "WHERE id = 1; END $$;", "cross-service-write"),
    # found by a breaker round, each standing for its kind
    ("on-only-plain-table", "CREATE INDEX users_email_idx ON ONLY users (email);",
     "create-index-non-concurrently"),
    ("inline-unique", "ALTER TABLE users ADD COLUMN code text UNIQUE;", "unique-without-index"),
    ("inline-check", "ALTER TABLE users ADD COLUMN score int DEFAULT 0 CHECK (score >= 0);",
     "constraint-without-not-valid"),
    ("inline-fk", "ALTER TABLE users ADD COLUMN org_id bigint REFERENCES orgs (id);",
     "constraint-without-not-valid"),
    ("self-join-is-unbounded", "UPDATE users SET a = 1 FROM users u2 WHERE users.id = u2.id;",
     "unbatched-data-change"),
    ("self-equality", "UPDATE users SET a = 1 WHERE id = id;", "unbatched-data-change"),
    ("join-on-unbatched-cte", "WITH stale AS (SELECT id FROM users WHERE last_seen < "
     "'2020-01-01')\nDELETE FROM users USING stale WHERE users.id = stale.id;",
     "unbatched-data-change"),
    ("limit-all", "UPDATE users SET a = 1 WHERE id IN (SELECT id FROM users LIMIT ALL);",
     "unbatched-data-change"),
    ("composite-key-prefix", "CREATE TABLE memberships (tenant_id int, id int, "
     "PRIMARY KEY (tenant_id, id));\n-- next revision\n"
     "UPDATE memberships SET id = id WHERE tenant_id = 1;", "unbatched-data-change"),
    ("locking-read-join", "SELECT u.id FROM users u JOIN user_settings s ON s.user_id = u.id "
     "WHERE s.theme = 'dark' FOR UPDATE;", "unbatched-data-change"),
    ("domain-validate", "ALTER DOMAIN email_address VALIDATE CONSTRAINT email_has_at;",
     "blocking-table-operation"),
    ("collation", "ALTER TABLE users ALTER COLUMN email TYPE text COLLATE \"C\";",
     "column-type-change"),
    ("if-not-exists-is-not-new", "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY);\n"
     "ALTER TABLE users DROP COLUMN legacy;", "destructive-change-in-expand"),
    ("drop-constraint", "ALTER TABLE users DROP CONSTRAINT users_email_key;",
     "destructive-change-in-expand"),
    ("set-default-null", "CREATE TABLE carts (currency text NOT NULL DEFAULT 'EUR');\n"
     "-- next revision\nALTER TABLE carts ALTER COLUMN currency SET DEFAULT NULL;",
     "destructive-change-in-expand"),
    ("drop-extension", "DROP EXTENSION citext CASCADE;", "destructive-change-in-expand"),
    ("narrowing-numeric-to-int", "CREATE TABLE prices (amount numeric(10, 2));\n"
     "-- next revision\nALTER TABLE prices ALTER COLUMN amount TYPE int USING amount::int;",
     "destructive-change-in-expand"),
    ("same-alter-validate-no-transaction", "-- migrate:no-transaction\n"
     "ALTER TABLE users ADD CONSTRAINT c CHECK (a > 0) NOT VALID, VALIDATE CONSTRAINT c;",
     "lock-held-during-work"),
    ("pinned-setting-in-do", "DO $$ BEGIN SET LOCAL lock_timeout = 0; END $$;",
     "session-override"),
    ("transaction-control", "UPDATE users SET a = 1 WHERE id = 1;\nCOMMIT;",
     "refused-by-runner"),
    ("reset-all", "RESET ALL;", "refused-by-runner"),
    ("loop-of-bounded-updates", "DO $$ DECLARE i int; BEGIN FOR i IN 1..100000 LOOP "
     "UPDATE users SET a = 1 WHERE id = i; END LOOP; END $$;", "unbatched-data-change"),
    ("loop-over-a-query", "DO $$ DECLARE r record; BEGIN FOR r IN SELECT id FROM users LOOP "
     "DELETE FROM users WHERE id = r.id; END LOOP; END $$;", "unbatched-data-change"),
    ("execute-dollar-quoted", "DO $$ BEGIN EXECUTE $q$UPDATE users SET a = 1$q$; END $$;",
     "dml-without-where"),
    ("execute-escape-string", "DO $$ BEGIN EXECUTE E'TRUNCATE users'; END $$;", "truncate"),
    ("nested-do", "DO $$ BEGIN EXECUTE 'DO $i$ BEGIN DELETE FROM cart_items; END $i$'; END $$;",
     "dml-without-where"),
    ("do-variables-from-the-table", "DO $$ DECLARE lo bigint; hi bigint; BEGIN\n"
     "  SELECT min(id), max(id) + 1 INTO lo, hi FROM users;\n"
     "  UPDATE users SET plan = 'free' WHERE id >= lo AND id < hi; END $$;",
     "unbatched-data-change"),
    ("commit-in-a-transactional-do", "DO $$ BEGIN COMMIT; END $$;", "refused-by-runner"),
    ("copy-under-a-lock", "ALTER TABLE users ADD COLUMN plan text;\n"
     "CREATE TABLE users_backup AS SELECT * FROM users;", "lock-held-during-work"),
    ("drop-identity-unknown-table", "ALTER TABLE users ALTER COLUMN id DROP IDENTITY IF EXISTS;",
     "destructive-change-in-expand"),
    ("set-tablespace", "ALTER TABLE users SET TABLESPACE fast;", "blocking-table-operation"),
    # f: partitioned tables
    ("partitioned-parent", "CREATE TABLE user_events (user_id bigint, ts timestamptz) "
     "PARTITION BY RANGE (ts);\n-- next revision\n"
     "CREATE INDEX user_events_user_idx ON user_events (user_id);",
     "create-index-non-concurrently"),
]

LOOK_ALIKES = [
    ("refresh-concurrently", "-- migrate:no-transaction\n"
     "REFRESH MATERIALIZED VIEW CONCURRENTLY signups_daily;"),
    ("new-matview", "CREATE MATERIALIZED VIEW recent AS SELECT 1 AS one WITH NO DATA;\n"
     "REFRESH MATERIALIZED VIEW recent;"),
    ("detach-concurrently", "-- migrate:no-transaction\n"
     "ALTER TABLE user_events DETACH PARTITION user_events_2026_11 CONCURRENTLY;"),
    ("new-table-logged", "CREATE UNLOGGED TABLE staging (id int);\n"
     "ALTER TABLE staging SET LOGGED;"),
    ("enum-add-value", "ALTER TYPE account_status ADD VALUE IF NOT EXISTS 'blocked';"),
    ("contract-rename-value", "-- phase: contract\n"
     "ALTER TYPE account_status RENAME VALUE 'suspended' TO 'blocked';"),
    ("nullable-drop-default", "CREATE TABLE carts (note text DEFAULT '');\n-- next revision\n"
     "ALTER TABLE carts ALTER COLUMN note DROP DEFAULT;"),
    ("widening", "CREATE TABLE counters (n int, label varchar(10));\n-- next revision\n"
     "ALTER TABLE counters ALTER COLUMN label TYPE varchar(40);"),
    ("batched-backfill", "UPDATE users SET plan = 'free' WHERE id >= 10001 AND id < 20001 "
     "AND plan IS NULL;"),
    ("batched-backfill", "UPDATE users SET plan = 'free' WHERE id = ANY('{1,2,3}'::bigint[]);"),
    ("batched-backfill", "WITH batch AS (SELECT id FROM users WHERE plan IS NULL ORDER BY id "
     "LIMIT 1000)\nUPDATE users SET plan = 'free' WHERE id IN (SELECT id FROM batch);"),
    ("validate-next-revision", "ALTER TABLE order_items ADD CONSTRAINT quantity_positive "
     "CHECK (quantity > 0) NOT VALID;\n-- next revision\n"
     "ALTER TABLE order_items VALIDATE CONSTRAINT quantity_positive;"),
    ("cic", "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY users_plan_idx ON users (plan);"),
    ("on-only", "CREATE TABLE user_events (user_id bigint, ts timestamptz) "
     "PARTITION BY RANGE (ts);\n-- next revision\n"
     "CREATE INDEX user_events_user_idx ON ONLY user_events (user_id);"),
    ("nullable-fk-new-column", "ALTER TABLE users ADD COLUMN org_id bigint,\n"
     "  ADD CONSTRAINT users_org_fk FOREIGN KEY (org_id) REFERENCES orgs (id) NOT VALID;"),
    ("lock-read-by-key", "SELECT id FROM users WHERE id = 42 FOR UPDATE;"),
    ("function-body", "CREATE FUNCTION purge_carts() RETURNS void LANGUAGE plpgsql AS $$\n"
     "BEGIN DELETE FROM cart_items; END $$;"),
    ("no-transaction-steps", "-- migrate:no-transaction\nALTER TABLE users ADD COLUMN plan text;\n"
     "UPDATE users SET plan = 'free' WHERE id BETWEEN 1 AND 1000;"),
    # false alarms a breaker round found, each standing for its kind
    ("or-of-keys", "UPDATE users SET a = 1 WHERE id = 1 OR id = 2;"),
    ("in-values", "DELETE FROM users WHERE id IN (VALUES (1), (2));"),
    ("ctid-batch", "DELETE FROM users WHERE ctid IN (SELECT ctid FROM users WHERE "
     "last_seen < '2020-01-01' LIMIT 1000);"),
    ("between-symmetric", "UPDATE users SET a = 1 WHERE id BETWEEN SYMMETRIC 1000 AND 1;"),
    ("for-update-of", "SELECT u.id FROM users u JOIN plans p ON p.id = u.plan_id "
     "WHERE u.id = 5 FOR UPDATE OF u;"),
    ("one-row-after-alter", "ALTER TABLE users ADD COLUMN plan text;\n"
     "UPDATE app_config SET value = '2' WHERE id = 1;"),
    ("rename-index-no-table-lock", "ALTER INDEX users_email_key RENAME TO users_email_uniq;\n"
     "UPDATE users SET plan = 'x' WHERE id BETWEEN 1 AND 500;"),
    ("committing-loop", "-- migrate:no-transaction\nDO $$ DECLARE i int; BEGIN "
     "FOR i IN 0..99 LOOP UPDATE users SET a = 1 WHERE id >= i * 1000 AND id < (i + 1) * 1000; "
     "COMMIT; END LOOP; END $$;"),
    ("widening-under-a-lock", "CREATE TABLE t1 (name varchar(50));\n-- next revision\n"
     "ALTER TABLE users ADD COLUMN nickname text;\n"
     "ALTER TABLE t1 ALTER COLUMN name TYPE varchar(100);"),
    ("one-row-locking-read-under-a-lock", "ALTER TABLE users ADD COLUMN nickname text;\n"
     "SELECT id FROM users WHERE id = 1 FOR UPDATE;"),
    # adopted tables (svcmig baseline): no history, so types and constraints are unknown
    ("adopted-varchar-to-text", "ALTER TABLE legacy_accounts ALTER COLUMN email TYPE text;"),
    ("adopted-validate-then-not-null", "ALTER TABLE legacy_accounts VALIDATE CONSTRAINT "
     "legacy_email_nn;\n-- next revision\n"
     "ALTER TABLE legacy_accounts ALTER COLUMN email SET NOT NULL;"),
]


@pytest.mark.parametrize(("kind", "sql", "rule"), HAZARDS,
                         ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(HAZARDS)])
def test_hazard_is_reported(kind: str, sql: str, rule: str) -> None:
    assert rule in names(sql), (kind, names(sql))


@pytest.mark.parametrize(("kind", "sql"), LOOK_ALIKES,
                         ids=[f"{k}-{i}" for i, (k, _) in enumerate(LOOK_ALIKES)])
def test_look_alike_is_clean(kind: str, sql: str) -> None:
    assert names(sql) == set(), kind


def test_a_do_block_finding_points_at_its_line_in_the_body() -> None:
    sql = "SELECT 1;\nDO $$\nBEGIN\n  PERFORM 1;\n  DELETE FROM cart_items;\nEND $$;\n"
    [finding] = lint_example(sql)
    assert (finding.rule.name, finding.line) == ("dml-without-where", 5)


def test_a_do_block_that_does_not_compile_is_a_parse_error() -> None:
    [finding] = lint_example("DO $$ BEGIN DELET FROM users; END $$;")
    assert finding.rule.name == "parse-error" and "PL/pgSQL" in finding.message


def test_a_suppression_on_a_do_block_covers_what_it_runs() -> None:
    sql = ("-- svcmig:ignore dml-without-where cart_items is a cache, emptied at each release\n"
           "DO $$ BEGIN DELETE FROM cart_items; END $$;")
    assert names(sql) == set()
