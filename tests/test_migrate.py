"""The runner on a real Postgres: apply, phases, failures, anomalies, isolation, repair."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import psycopg
import pytest

from migrations_runtime.engine.apply import RunSettings, migrate, read_plan
from migrations_runtime.engine.backfill_runner import BackfillSettings, run_backfills
from migrations_runtime.engine.errors import LockTimeout, MigrationFailed, PlanError
from migrations_runtime.engine.lock import LOCK_KEY
from migrations_runtime.engine.lockwait import LockPolicy
from migrations_runtime.engine.repair import baseline, repair
from tests.conftest import (
    code_heads,
    fresh_database,
    query,
    revision_count,
    run_cli,
    write_project,
)

FAST = RunSettings(lock_wait_seconds=2, lock=LockPolicy(first_timeout_ms=100, max_timeout_ms=200,
                                                        pause_ms=20, budget_seconds=1))


def ledger(url: str) -> dict[str, str]:
    return dict(query(url, "SELECT revision, state FROM svcmig.schema_migrations"))


def versions(url: str) -> set[str]:
    return {r[0] for r in query(url, "SELECT version_num FROM svcmig.alembic_version")}


def lock_is_free(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        return bool(got and got[0])


def five_revisions(third: str) -> dict[str, str]:
    return {
        "2026-01-01T0000__shop__one.sql": "CREATE TABLE one (id int);",
        "2026-01-02T0000__shop__two.sql": "CREATE TABLE two (id int);",
        "2026-01-03T0000__shop__three.sql": third,
        "2026-01-04T0000__shop__four.sql": "CREATE TABLE four (id int);",
        "2026-01-05T0000__shop__five.sql": "CREATE TABLE five (id int);",
    }


def test_applies_every_service_then_is_a_noop(project: Path, database_url: str) -> None:
    lines: list[dict[str, object]] = []
    result = migrate(database_url, project, log=lines.append)
    assert len(result.results) == revision_count(project)
    assert set(ledger(database_url).values()) == {"applied"}
    assert versions(database_url) == set(code_heads(project).values())
    revision_lines = [line for line in lines if line["event"] == "revision"]
    assert {"service", "revision", "phase", "duration_ms", "outcome"} <= set(revision_lines[0])
    assert all(line["outcome"] == "applied" for line in revision_lines)
    owners = query(database_url, "SELECT schemaname, tablename, tableowner FROM pg_tables "
                                 "WHERE schemaname IN ('users', 'orders')")
    assert {(schema, table) for schema, table, _ in owners} >= {("users", "users"),
                                                               ("orders", "orders")}
    assert all(owner == f"{schema}_owner" for schema, _, owner in owners)
    again = migrate(database_url, project, log=lines.append)
    assert again.results == ()


def one_release_pending(tmp_path: Path, database_url: str) -> Path:
    """shop at its first revision; pending: an expand revision, then a contract one."""
    root = write_project(tmp_path, {"shop": {
        "2026-01-01T0000__shop__one.sql": "CREATE TABLE one (id int, old text);"}})
    migrate(database_url, root, log=lambda _: None)
    folder = root / "services/shop/migrations"
    (folder / "2026-01-02T0000__shop__add.sql").write_text("ALTER TABLE one ADD COLUMN new text;")
    (folder / "2026-01-03T0000__shop__drop.sql").write_text(
        "-- phase: contract\nALTER TABLE one DROP COLUMN old;")
    return root


def test_phases_expand_then_contract(tmp_path: Path, database_url: str) -> None:
    root = one_release_pending(tmp_path, database_url)
    expand = migrate(database_url, root, phase="expand", log=lambda _: None)
    assert [r.revision for r in expand.results] == ["shop_202601020000"]
    assert [s.pending for s in read_plan(database_url, root).services] == [("shop_202601030000",)]
    contract = migrate(database_url, root, phase="contract", log=lambda _: None)
    assert [r.revision for r in contract.results] == ["shop_202601030000"]


def test_fresh_database_gets_every_revision_in_the_expand_phase(
        project: Path, database_url: str) -> None:
    """No code runs against an empty database, so contract revisions need not wait."""
    result = migrate(database_url, project, phase="expand", log=lambda _: None)
    assert len(result.results) == revision_count(project)
    assert "contract" in {r.phase for r in result.results}


def test_syntax_error_in_third_of_five_refuses_the_whole_plan(
        tmp_path: Path, database_url: str) -> None:
    """Every pending revision is parsed before the first one runs: nothing is applied."""
    root = write_project(tmp_path, {"shop": five_revisions(
        "CREATE TABLE three (id int);\nCREATE TABEL broken (id int);\n")})
    with pytest.raises(PlanError) as caught:
        migrate(database_url, root, log=lambda _: None)
    assert "2026-01-03T0000__shop__three.sql:2" in str(caught.value)
    assert "syntax error" in str(caught.value)
    assert ledger(database_url) == {}
    assert query(database_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'shop'") == \
        [(0,)]
    assert lock_is_free(database_url)
    status = read_plan(database_url, root)
    assert [(a.kind, a.revision) for a in status.errors] == [
        ("invalid_revision", "shop_202601030000")]


@pytest.mark.parametrize("third", ["CREATE TABLE three (id int);\n",
                                   "CREATE TABEL broken (id int);\n",
                                   "INSERT INTO missing VALUES (1);\n"],
                         ids=["applied", "refused plan", "failed revision"])
@pytest.mark.parametrize("collecting", [True, False], ids=["gc on", "gc off"])
@pytest.mark.parametrize("caller_froze", [False, True], ids=["", "caller froze"])
def test_a_run_leaves_the_garbage_collector_as_it_found_it(
        tmp_path: Path, database_url: str, third: str, collecting: bool,
        caller_froze: bool) -> None:
    """The run pauses collection while it reads the plan and freezes what it read until it
    ends (`apply._CollectionPause`): afterwards collection is on or off as before and what
    is frozen is what the caller froze (a pre-forking server freezes its own objects; a
    breaker's finding: the run thawed them), whether the run applied, refused or failed."""
    root = write_project(tmp_path, {"shop": five_revisions(third)})
    if caller_froze:
        gc.freeze()
    frozen_before = gc.get_freeze_count()
    (gc.enable if collecting else gc.disable)()
    try:
        try:
            migrate(database_url, root, log=lambda _: None)
        except (PlanError, MigrationFailed):
            pass
        assert gc.isenabled() is collecting
        # frozen objects that die meanwhile leave the count (a few, through reference counts)
        assert frozen_before - 50 <= gc.get_freeze_count() <= frozen_before
    finally:
        gc.unfreeze()
        gc.enable()


def test_runtime_error_rolls_back_the_whole_revision(tmp_path: Path, database_url: str) -> None:
    root = write_project(tmp_path, {"shop": five_revisions(
        "CREATE TABLE three (id int);\n\nINSERT INTO missing VALUES (1);\n")})
    with pytest.raises(MigrationFailed) as caught:
        migrate(database_url, root, log=lambda _: None)
    assert "2026-01-03T0000__shop__three.sql:3" in str(caught.value)
    assert "missing" in str(caught.value)
    assert query(database_url, "SELECT to_regclass('shop.three')") == [(None,)]
    assert versions(database_url) == {"shop_202601020000"}
    assert lock_is_free(database_url)


@pytest.mark.parametrize("header", ["", "-- migrate:no-transaction\n"],
                         ids=["transactional", "no-transaction"])
def test_no_statement_outlives_the_run_deadline(tmp_path: Path, database_url: str,
                                                server_url: str, header: str) -> None:
    """Kind: a run with a deadline (a deploy's worker is stopped then). Each revision's
    statements get at most the time left when it starts, whichever revision it is: the run
    fails cleanly, in time, with the revision rolled back or marked dirty and the lock free."""
    root = write_project(tmp_path, {"shop": five_revisions(
        f"{header}CREATE TABLE three (id int);\nSELECT pg_sleep(5);\n")})
    started = time.monotonic()
    with pytest.raises(MigrationFailed, match="(statement|transaction) timeout"):
        migrate(database_url, root, log=lambda _: None,
                settings=RunSettings(deadline=time.monotonic() + 1.5))
    assert time.monotonic() - started < 4
    assert versions(database_url) == {"shop_202601020000"}
    assert ledger(database_url).get("shop_202601030000") == (None if not header else "dirty")
    assert lock_is_free(database_url)
    # many statements, each shorter than the time left: on PostgreSQL 17+ the revision's whole
    # transaction is bounded too (transaction_timeout); before 17, each statement only
    root = write_project(tmp_path / "many", {"shop": five_revisions(
        f"{header}CREATE TABLE three (id int);\n" + "SELECT pg_sleep(0.6);\n" * 4)})
    with fresh_database(server_url) as other:
        with psycopg.connect(other) as conn:
            version = conn.info.server_version
        started = time.monotonic()
        settings = RunSettings(deadline=time.monotonic() + 1.5)
        if version >= 170000 and not header:
            with pytest.raises(MigrationFailed, match="transaction timeout"):
                migrate(other, root, log=lambda _: None, settings=settings)
            assert time.monotonic() - started < 2.5
        else:
            migrate(other, root, log=lambda _: None, settings=settings)
        assert lock_is_free(other)
    # the setting bounds it too, and the tighter of the two wins
    assert RunSettings(statement_timeout_ms=500,
                       deadline=time.monotonic() + 60).statement_timeout_now() == 500
    assert RunSettings(deadline=time.monotonic() - 5).statement_timeout_now() == 1000


def test_python_revision_error_names_its_line(tmp_path: Path, database_url: str) -> None:
    root = write_project(tmp_path, {"shop": {
        "2026-01-01T0000__shop__one.sql": "CREATE TABLE one (id int);",
        "2026-01-02T0000__shop__two.py": (
            "from alembic import op\nrevision = 'shop_202601020000'\n"
            "down_revision = 'shop_202601010000'\n\ndef upgrade():\n"
            "    op.execute('CREATE TABLE two (id int)')\n    op.drop_column('nope', 'x')\n"),
    }})
    with pytest.raises(MigrationFailed) as caught:
        migrate(database_url, root, log=lambda _: None)
    assert "2026-01-02T0000__shop__two.py:7" in str(caught.value)
    assert query(database_url, "SELECT to_regclass('shop.two')") == [(None,)]
    assert ledger(database_url) == {"shop_202601010000": "applied"}


def test_lock_held_past_deadline_names_the_holder(project: Path, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True, application_name="other-deploy") as other:
        other.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        started = time.monotonic()
        with pytest.raises(LockTimeout) as caught:
            migrate(database_url, project, settings=FAST, log=lambda _: None)
        assert time.monotonic() - started < 30
        pid = other.info.backend_pid
    assert f"pid {pid} (other-deploy" in str(caught.value)
    assert query(database_url, "SELECT to_regclass('svcmig.schema_migrations')") == [(None,)]


def test_locked_table_fails_fast_on_lock_timeout(tmp_path: Path, database_url: str) -> None:
    files = {"2026-01-01T0000__shop__one.sql": "CREATE TABLE one (id int);"}
    root = write_project(tmp_path, {"shop": files})
    migrate(database_url, root, log=lambda _: None)
    (root / "services/shop/migrations/2026-01-02T0000__shop__two.sql").write_text(
        "ALTER TABLE one ADD COLUMN note text;")
    retries: list[dict[str, object]] = []
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE shop.one IN ACCESS SHARE MODE")  # a long read transaction
        started = time.monotonic()
        with pytest.raises(MigrationFailed) as caught:
            migrate(database_url, root, settings=FAST, log=retries.append)
        elapsed = time.monotonic() - started
        blocker.rollback()
    assert "1 s lock budget" in str(caught.value) and "blocked by pid" in str(caught.value)
    assert any(line["event"] == "lock_wait" for line in retries)
    assert elapsed < 10
    assert ledger(database_url) == {"shop_202601010000": "applied"}
    assert lock_is_free(database_url)


def test_cross_service_write_fails_in_postgres(project: Path, database_url: str) -> None:
    migrate(database_url, project, log=lambda _: None)
    (project / "services/orders/migrations/2026-12-01T0000__orders__sneaky.sql").write_text(
        "INSERT INTO users.users (email) VALUES ('x@example.com');")
    with pytest.raises(MigrationFailed, match="permission denied"):
        migrate(database_url, project, log=lambda _: None)
    assert query(database_url, "SELECT count(*) FROM users.users") == [(0,)]


def test_app_role_reaches_only_its_own_schema(project: Path, database_url: str) -> None:
    """DML on its own schema; of another service only what that service granted explicitly."""
    migrate(database_url, project, log=lambda _: None)
    rows = query(database_url, """
        SELECT has_table_privilege('users_app', 'users.users', 'INSERT'),
               has_table_privilege('orders_app', 'orders.orders', 'DELETE'),
               has_table_privilege('orders_app', 'users.users', 'INSERT'),
               has_column_privilege('orders_app', 'users.users', 'email', 'SELECT'),
               has_schema_privilege('orders_app', 'users', 'CREATE'),
               has_table_privilege('users_app', 'orders.orders', 'SELECT')""")
    assert rows == [(True, True, False, False, False, False)]


def test_tampered_file_is_refused(project: Path, database_url: str) -> None:
    migrate(database_url, project, log=lambda _: None)
    path = project / "services/users/migrations/2026-11-02T0900__users__create_users.sql"
    path.write_text(path.read_text().replace("text NOT NULL", "varchar(100) NOT NULL"))
    with pytest.raises(PlanError, match="users_202611020900 was edited"):
        migrate(database_url, project, log=lambda _: None)
    path.write_text(path.read_text() + "\n\n   \n")  # whitespace alone is not tampering
    assert "repair users_202611020900 --accept-checksum" in str(
        read_plan(database_url, project).errors[0].message)
    repair(database_url, project, "users_202611020900", "accept-checksum")
    assert migrate(database_url, project, log=lambda _: None).results == ()


def test_whitespace_edits_are_not_tampering(project: Path, database_url: str) -> None:
    migrate(database_url, project, log=lambda _: None)
    path = project / "services/users/migrations/2026-11-02T0900__users__create_users.sql"
    path.write_bytes(path.read_bytes().replace(b"\n", b"  \r\n") + b"\r\n\r\n")
    assert read_plan(database_url, project).anomalies == ()


def test_missing_file_is_refused(project: Path, database_url: str) -> None:
    migrate(database_url, project, log=lambda _: None)
    (project / "services/orders/migrations/2026-11-13T0900__orders__validate_user_fk.sql").rename(
        project / "deleted.sql")
    with pytest.raises(PlanError, match="orders_202611130900 .* its file is gone"):
        migrate(database_url, project, log=lambda _: None)


def test_out_of_order_revision_is_refused(project: Path, database_url: str) -> None:
    migrate(database_url, project, log=lambda _: None)
    (project / "services/users/migrations/2026-11-15T0000__users__late.sql").write_text(
        "ALTER TABLE users ADD COLUMN late text;")
    with pytest.raises(PlanError) as caught:
        migrate(database_url, project, log=lambda _: None)
    assert f"users_202611150000 is older than {code_heads(project)['users']}" in str(
        caught.value)
    assert "2026-11-15T0000__users__late.sql" in str(caught.value)


# Kind: a database left between releases (expand revisions pending after a contract one):
# every phase has a next step, and `--phase all` applies everything pending, in order.
def releases(tmp_path: Path, database_url: str) -> Path:
    """shop at release 1; pending: release 2's contract revision, then release 3's expand."""
    root = write_project(tmp_path, {"shop": {
        "2026-01-01T0000__shop__one.sql": "CREATE TABLE one (id int, old text);"}})
    migrate(database_url, root, log=lambda _: None)
    folder = root / "services/shop/migrations"
    (folder / "2026-01-02T0000__shop__drop.sql").write_text(
        "-- phase: contract\nALTER TABLE one DROP COLUMN old;")
    (folder / "2026-01-03T0000__shop__add.sql").write_text("ALTER TABLE one ADD COLUMN new text;")
    return root


def test_expand_stops_at_the_release_boundary_and_says_so(tmp_path: Path,
                                                          database_url: str) -> None:
    root = releases(tmp_path, database_url)
    result = migrate(database_url, root, phase="expand", log=lambda _: None)
    assert result.results == ()
    [boundary] = [w for w in result.plan.warnings if w.kind == "release_boundary"]
    assert "stops before contract revision shop_202601020000" in boundary.message
    assert "--phase contract" in boundary.message and "1 later revision(s)" in boundary.message
    assert ledger(database_url) == {"shop_202601010000": "applied"}


def test_contract_then_expand_moves_one_release_at_a_time(tmp_path: Path,
                                                          database_url: str) -> None:
    root = releases(tmp_path, database_url)
    done = migrate(database_url, root, phase="contract", log=lambda _: None)
    assert [r.revision for r in done.results] == ["shop_202601020000"]
    done = migrate(database_url, root, phase="expand", log=lambda _: None)
    assert [r.revision for r in done.results] == ["shop_202601030000"]


def test_phase_all_applies_every_pending_revision_in_order(tmp_path: Path,
                                                           database_url: str) -> None:
    root = releases(tmp_path, database_url)
    done = migrate(database_url, root, phase="all", log=lambda _: None)
    assert [r.revision for r in done.results] == ["shop_202601020000", "shop_202601030000"]
    assert query(database_url, "SELECT column_name FROM information_schema.columns WHERE "
                               "table_schema = 'shop' AND table_name = 'one' ORDER BY 1") \
        == [("id",), ("new",)]


def test_contract_before_expand_is_refused(tmp_path: Path, database_url: str) -> None:
    root = one_release_pending(tmp_path, database_url)
    with pytest.raises(PlanError, match="run `svcmig migrate --phase expand` before"):
        migrate(database_url, root, phase="contract", log=lambda _: None)


@pytest.mark.parametrize("stock", [("upgrade", "orders@+2"), ("upgrade", "users@+1"),
                                   ("downgrade", "users@base")])
def test_any_state_stock_alembic_leaves_continues_with_phase_all(
        project: Path, database_url: str, stock: tuple[str, str]) -> None:
    from tests.conftest import run_alembic

    if stock[0] == "downgrade":
        migrate(database_url, project, log=lambda _: None)
    done = run_alembic(project, *stock, database_url=database_url)
    assert done.returncode == 0, done.stderr
    migrate(database_url, project, phase="all", log=lambda _: None)
    # a service stock Alembic left part-way has rows from before its backfill's revisions:
    # those wait for the backfill (tests/test_backfills.py), then apply
    run_backfills(database_url, project, None, BackfillSettings(sleep_ms=0))
    migrate(database_url, project, phase="all", log=lambda _: None)
    assert len(ledger(database_url)) == revision_count(project)


def test_database_ahead_of_code_is_a_warning_and_a_noop(project: Path, database_url: str) -> None:
    migrate(database_url, project, log=lambda _: None)
    newest = sorted((project / "services/orders/migrations").glob("*__orders__*"))[-1]
    newest.unlink()  # the code rolled back to the release before this revision
    before = query(database_url, "SELECT table_name, column_name FROM information_schema.columns "
                                 "WHERE table_schema = 'orders' ORDER BY 1, 2")
    lines: list[dict[str, object]] = []
    result = migrate(database_url, project, log=lines.append)
    assert result.results == ()
    assert [w.kind for w in result.plan.warnings] == ["ahead"]
    assert any(line.get("kind") == "ahead" for line in lines)
    applied_orders = [rev for rev in ledger(database_url) if rev.startswith("orders_")]
    assert code_heads(project)["orders"] < max(applied_orders)  # nothing was downgraded
    after = query(database_url, "SELECT table_name, column_name FROM information_schema.columns "
                                "WHERE table_schema = 'orders' ORDER BY 1, 2")
    assert after == before


def test_dirty_non_transactional_revision_then_repair(tmp_path: Path, database_url: str) -> None:
    index = "2026-01-02T0000__shop__index.sql"
    root = write_project(tmp_path, {"shop": {
        "2026-01-01T0000__shop__one.sql": "CREATE TABLE one (id int);",
        index: "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY one_id ON one (id);\n"
               "CREATE INDEX CONCURRENTLY one_x ON one (missing_column);\n",
    }})
    with pytest.raises(MigrationFailed, match=f"{index}:3"):
        migrate(database_url, root, log=lambda _: None)
    assert ledger(database_url)["shop_202601020000"] == "dirty"
    assert lock_is_free(database_url)
    with pytest.raises(PlanError, match="shop_202601020000 is dirty"):
        migrate(database_url, root, log=lambda _: None)
    query(database_url, "DROP INDEX shop.one_id")
    repair(database_url, root, "shop_202601020000", "rolled-back")
    (root / "services/shop/migrations" / index).write_text(
        "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY one_id ON one (id);\n")
    result = migrate(database_url, root, log=lambda _: None)
    assert [r.revision for r in result.results] == ["shop_202601020000"]
    assert ledger(database_url)["shop_202601020000"] == "applied"


def test_baseline_adopts_an_existing_schema(tmp_path: Path, database_url: str) -> None:
    root = write_project(tmp_path, {"shop": {
        "2026-01-01T0000__shop__one.sql": "CREATE TABLE one (id int);",
        "2026-01-02T0000__shop__two.sql": "CREATE TABLE two (id int);",
    }})
    query(database_url, "CREATE SCHEMA shop; CREATE TABLE shop.one (id int)")
    assert baseline(database_url, root, ["shop_202601010000"]) == ["shop_202601010000"]
    result = migrate(database_url, root, log=lambda _: None)
    assert [r.revision for r in result.results] == ["shop_202601020000"]
    assert ledger(database_url) == {"shop_202601010000": "baselined",
                                    "shop_202601020000": "applied"}
    with pytest.raises(Exception, match="already has applied revisions"):
        baseline(database_url, root, ["shop"])


def test_migrator_waits_for_a_running_one(project: Path, database_url: str) -> None:
    """A second migrator polls for the lock and then finds nothing to do."""
    holder = psycopg.connect(database_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    threading.Timer(1.0, holder.close).start()
    result = migrate(database_url, project, settings=RunSettings(lock_wait_seconds=20),
                     log=lambda _: None)
    assert len(result.results) == revision_count(project)


def two_releases_behind(tmp_path: Path, database_url: str) -> Path:
    """shop and stock at their first revision; three releases pending, stock's third depending
    on shop's second."""
    root = write_project(tmp_path, {
        "shop": {"2026-01-01T0000__shop__one.sql": "CREATE TABLE one (id int, old text);"},
        "stock": {"2026-01-01T0100__stock__one.sql": "CREATE TABLE items (id int);"}})
    migrate(database_url, root, log=lambda _: None)
    shop, stock = (root / f"services/{s}/migrations" for s in ("shop", "stock"))
    (shop / "2026-01-02T0000__shop__add.sql").write_text("ALTER TABLE one ADD COLUMN a int;")
    (shop / "2026-01-03T0000__shop__drop.sql").write_text(
        "-- phase: contract\nALTER TABLE one DROP COLUMN old;")
    (shop / "2026-01-04T0000__shop__more.sql").write_text("ALTER TABLE one ADD COLUMN b int;")
    (stock / "2026-01-02T0100__stock__add.sql").write_text("ALTER TABLE items ADD COLUMN n int;")
    (stock / "2026-01-05T0100__stock__link.sql").write_text(
        "-- depends-on: shop_202601030000\nALTER TABLE items ADD COLUMN shop_id int;")
    return root


def test_target_moves_forward_to_a_revision_and_what_it_needs(tmp_path: Path,
                                                              database_url: str) -> None:
    root = two_releases_behind(tmp_path, database_url)
    done = migrate(database_url, root, target="shop_202601020000", log=lambda _: None)
    assert [r.revision for r in done.results] == ["shop_202601020000"]
    done = migrate(database_url, root, target="stock", log=lambda _: None)  # a service's head
    order = [r.revision for r in done.results]
    assert sorted(order) == ["shop_202601030000", "stock_202601020100", "stock_202601050100"]
    assert order.index("shop_202601030000") < order.index("stock_202601050100")
    done = migrate(database_url, root, log=lambda _: None)
    assert [r.revision for r in done.results] == ["shop_202601040000"]


def test_an_unknown_target_is_refused_before_anything_runs(tmp_path: Path,
                                                           database_url: str) -> None:
    root = two_releases_behind(tmp_path, database_url)
    done = run_cli(root, "migrate", "--target", "shop_209901010000", database_url=database_url)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--target shop_209901010000: neither a revision id nor a service" in done.stderr
    assert len(ledger(database_url)) == 2
