"""`svcmig new-service` and `svcmig revision` through the console script, seen by stock
`alembic`, `svcmig plan`, `svcmig graph` and `svcmig migrate`; and their refusals."""

from __future__ import annotations

import json
from pathlib import Path

from migrations_runtime.engine.validate import build_graph
from tests.authoring.helpers import assert_one_line_error, tree
from tests.conftest import (
    code_heads,
    query,
    revision_count,
    run_alembic,
    run_cli,
    write_project,
)


def test_newcomer_walkthrough(project: Path, database_url: str) -> None:
    """docs/cli.md's walkthrough: new-service → revision → alembic heads → plan → graph."""
    ini_before = (project / "alembic.ini").read_text().splitlines()
    made = run_cli(project, "new-service", "payments", "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    root_id = created["revision"]
    assert root_id.startswith("payments_")
    handler = (project / "services/payments/handler.py").read_text()
    assert "lambda_entrypoint(SERVICE, app)" in handler and "users service" in handler
    from infra.service_spec import load_spec  # the CDK app reads what new-service declared

    spec = load_spec(project / "services/payments")
    assert spec.handler == "services.payments.handler.handler"
    assert [(r.method, r.path) for r in spec.routes] == [("GET", "/payments"),
                                                         ("GET", "/payments/{item_id}")]
    [root_file] = (project / "services/payments/migrations").glob("*__create_payments.sql")
    assert "-- migrate:down" in root_file.read_text()
    ini_after = (project / "alembic.ini").read_text().splitlines()
    changed = [(a, b) for a, b in zip(ini_before, ini_after, strict=True) if a != b]
    assert changed == [(
        "version_locations = %(here)s/services/orders/migrations "
        "%(here)s/services/users/migrations",
        "version_locations = %(here)s/services/orders/migrations "
        "%(here)s/services/payments/migrations %(here)s/services/users/migrations")]
    heads = run_alembic(project, "heads")
    assert f"{root_id} (payments) (head)" in heads.stdout, heads.stderr

    sql = run_cli(project, "revision", "payments", "-m", "Add amount!", "--sql", "--json")
    assert sql.returncode == 0, sql.stderr
    sql_rev = json.loads(sql.stdout)
    assert sql_rev["kind"] == "sql" and sql_rev["revision"] > root_id
    assert sql_rev["files"][0].endswith("__payments__add_amount.sql")
    text = (project / sql_rev["files"][0]).read_text()
    assert "-- migrate:up" in text and "-- migrate:down" in text

    users_head = code_heads(project)["users"]
    py = run_cli(project, "revision", "payments", "-m", "add currency", "--contract",
                 "--depends-on", "users", "--json")
    assert py.returncode == 0, py.stderr
    py_rev = json.loads(py.stdout)
    assert py_rev == {**py_rev, "kind": "python", "phase": "contract", "depends_on": [users_head]}
    source = (project / py_rev["files"][0]).read_text()
    assert f"Revision ID: {py_rev['revision']}" in source
    assert f"revision = '{py_rev['revision']}'" in source
    assert f"down_revision = '{sql_rev['revision']}'" in source
    assert f"depends_on = '{users_head}'" in source and 'phase = "contract"' in source

    heads = run_alembic(project, "heads")
    assert f"{py_rev['revision']} (payments) (head)" in heads.stdout, heads.stderr
    stock = run_alembic(project, "revision", "--head", "payments@head", "-m", "stock alembic")
    assert stock.returncode == 0, stock.stderr
    assert len(list((project / "services/payments/migrations").glob("*stock_alembic.py"))) == 1

    plan = run_cli(project, "plan", "--json", database_url=database_url)
    assert plan.returncode == 0, plan.stderr
    steps = [s["revision"] for s in json.loads(plan.stdout)["steps"]]
    assert steps.index(users_head) < steps.index(py_rev["revision"])
    assert [s for s in steps if s.startswith("payments_")][:3] == [
        root_id, sql_rev["revision"], py_rev["revision"]]

    graph = run_cli(project, "graph")
    assert graph.returncode == 0, graph.stderr
    assert 'subgraph lane_1["payments"]' in graph.stdout
    assert f"{users_head} -.->|depends on| {py_rev['revision']}" in graph.stdout

    migrated = run_cli(project, "migrate", database_url=database_url)
    assert migrated.returncode == 0, migrated.stderr
    assert query(database_url, "SELECT to_regclass('payments.payments') IS NOT NULL") == [(True,)]


def test_plan_text_sql_and_refusal(project: Path, database_url: str) -> None:
    offline = run_cli(project, "plan", "--sql", "--offline",
                      env={"DATABASE_URL": "postgresql://nobody@invalid.invalid/none"})
    assert offline.returncode == 0, offline.stderr
    sql = offline.stdout
    assert sql.index("CREATE TABLE users") < sql.index("CREATE TABLE orders")
    assert '-- in a session logged in as users_owner' in sql
    assert 'SET LOCAL search_path = "users";' in sql
    assert "ALTER TABLE users ADD COLUMN display_name TEXT;" in sql  # a Python revision
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_user_id_idx" in sql
    transactional = sum(r.transactional for r in build_graph(project).revisions.values())
    assert transactional < revision_count(project)  # CONCURRENTLY ones run without BEGIN
    assert sql.count("BEGIN;") == transactional == sql.count("COMMIT;")

    nothing = run_cli(project, "plan", "--sql", "--from", "users", "--from", "orders")
    assert nothing.returncode == 0, nothing.stderr
    assert "0 revision(s)" in nothing.stdout and "bootstrap" not in nothing.stdout

    text = run_cli(project, "plan", "--phase", "all", database_url=database_url)
    assert text.returncode == 0, text.stderr
    assert f"{revision_count(project)} revision(s) to apply (all phase)" in text.stdout
    assert run_cli(project, "migrate", database_url=database_url).returncode == 0
    (project / "services/users/migrations/2026-11-01T0000__users__early.sql").write_text(
        "SELECT 1;")
    refused = run_cli(project, "plan", database_url=database_url)
    assert refused.returncode == 1
    assert "users_202611010000 is older than" in refused.stdout


def test_bad_inputs_get_one_line_and_leave_nothing(project: Path, database_url: str) -> None:
    before = tree(project)
    cases = [
        (("new-service", "Payments"), 2, "lowercase identifier"),
        (("new-service", "public"), 2, "reserved"),
        (("new-service", "users"), 2, "already exists"),
        (("revision", "payments", "-m", "add x"), 2, "unknown service 'payments'"),
        (("revision", "users", "-m", "!!! ---"), 2, "no letters or digits"),
        (("revision", "users", "-m", "x", "--depends-on", "nope_1"), 2, "neither a revision"),
        (("revision", "users", "-m", "x", "--depends-on", "users_202611020900"), 2,
         "in service 'users' itself"),
        (("plan", "--from", "nope"), 2, "neither a revision id nor a service"),
        (("graph", "--output", "graph.txt"), 2, "--format"),
        (("graph", "--format", "png"), 2, "--output"),
        (("check", "--in-place"), 2, "--database-url"),
    ]
    for args, code, words in cases:
        assert_one_line_error(run_cli(project, *args), code, words)
    assert tree(project) == before

    assert run_cli(project, "migrate", database_url=database_url).returncode == 0
    not_empty = run_cli(project, "check", "--database-url", database_url, "--in-place")
    assert_one_line_error(not_empty, 2, "is not empty", "orders", "users")

    # Two heads in one service: every command that needs the graph refuses, naming the fix.
    (project / "services/users/migrations/2026-11-30T0000__users__fork.py").write_text(
        "revision = 'users_202611300000'\ndown_revision = 'users_202611120800'\n"
        "def upgrade():\n    pass\n")
    before = tree(project)
    forked = run_cli(project, "revision", "users", "-m", "add email")
    assert_one_line_error(forked, 1, "two heads", "down_revision")
    assert tree(project) == before


def test_graph_with_no_services(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    (root / "services").mkdir(parents=True)
    (root / "alembic.ini").write_text("[alembic]\nversion_locations =\npath_separator = space\n")
    assert_one_line_error(run_cli(root, "graph"), 1, "no services", "svcmig new-service")
    made = run_cli(root, "new-service", "first")
    assert made.returncode == 0, made.stderr
    assert "version_locations = %(here)s/services/first/migrations" in (
        root / "alembic.ini").read_text()
    assert "first_" in run_cli(root, "graph", "--format", "dot").stdout


def test_new_service_refuses_without_path_separator(tmp_path: Path) -> None:
    root = tmp_path / "p"
    (root / "services").mkdir(parents=True)
    (root / "alembic.ini").write_text("[alembic]\nversion_locations = \n")
    before = tree(root)
    assert_one_line_error(run_cli(root, "new-service", "first"), 1, "path_separator = space")
    assert tree(root) == before


def test_plan_sql_from_applied_revisions_without_a_database(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", {
        "shop": {"2026-01-01T0000__shop__one.sql": "CREATE TABLE one (id int);",
                 "2026-01-02T0000__shop__two.sql": "-- phase: contract\nDROP TABLE one;"},
        "mail": {"2026-01-01T0100__mail__one.sql": "CREATE TABLE sent (id int);",
                 "2026-01-03T0000__mail__two.sql":
                     "-- depends-on: shop_202601020000\nCREATE TABLE two (id int);"}})
    done = run_cli(root, "plan", "--sql", "--from", "shop_202601010000", "--from",
                   "mail_202601010100",
                   env={"DATABASE_URL": "postgresql://nobody@invalid.invalid/none"})
    assert done.returncode == 0, done.stderr
    sql = done.stdout
    assert "CREATE TABLE one" not in sql and "CREATE TABLE sent" not in sql
    assert "bootstrap" not in sql
    assert sql.index("DROP TABLE one;") < sql.index("CREATE TABLE two (id int);")
    assert 'SET LOCAL search_path = "mail";' in sql
    as_json = run_cli(root, "plan", "--json", "--from", "shop_202601010000", "--from",
                      "mail_202601010100")
    steps = [s["revision"] for s in json.loads(as_json.stdout)["steps"]]
    assert steps == ["shop_202601020000", "mail_202601030000"]
