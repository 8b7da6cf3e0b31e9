"""Discovery, loading and validation: every bad input gets one line naming the file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from migrations_runtime.engine.discover import ProjectError, discover_services
from migrations_runtime.engine.errors import MigrationFileError
from migrations_runtime.engine.load import next_timestamp, parse_sql_source, slugify
from migrations_runtime.engine.validate import GraphError, build_graph, check_alembic_ini
from tests.conftest import REPO, write_project

CREATE = "CREATE TABLE t (id int);\n"


def graph_error(root: Path) -> str:
    with pytest.raises(GraphError) as caught:
        build_graph(root)
    return str(caught.value)


def test_repository_services_form_one_branch_each() -> None:
    graph = build_graph(REPO)
    assert sorted(graph.chains) == ["orders", "users"]
    for name, chain in graph.chains.items():
        assert chain[0].branch_labels == (name,)
        assert all(b.down_revision == a.id for a, b in zip(chain, chain[1:], strict=False))
    kinds = {(r.service, r.kind) for r in graph.revisions.values()}
    assert kinds >= {("users", "sql"), ("users", "python"), ("orders", "sql"), ("orders", "python")}
    ordered = [r.id for r in graph.ordered()]
    assert ordered.index("users_202611120800") < ordered.index("orders_202611120900")
    check_alembic_ini(graph)


def test_malformed_filename(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"shop": {"2026-01-01__shop__create.sql": CREATE}})
    message = graph_error(root)
    assert "2026-01-01__shop__create.sql" in message
    assert "YYYY-MM-DDThhmm__<service>__<slug>.sql" in message


def test_service_in_filename_differs_from_folder(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"shop": {"2026-01-01T0000__billing__create.sql": CREATE}})
    message = graph_error(root)
    assert "2026-01-01T0000__billing__create.sql" in message
    assert "services/billing/migrations" in message


def test_duplicate_timestamp_in_one_service(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"shop": {
        "2026-01-01T0000__shop__create.sql": CREATE,
        "2026-01-01T0000__shop__other.sql": "CREATE TABLE u (id int);",
    }})
    message = graph_error(root)
    assert "shop_202601010000" in message and "same timestamp" in message


def python_revision(rev: str, down: str | None, labels: str = "None") -> str:
    return (f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = {labels}\n"
            "def upgrade():\n    pass\n")


def test_two_heads_in_one_service(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"shop": {
        "2026-01-01T0000__shop__create.sql": CREATE,
        "2026-01-02T0000__shop__a.py": python_revision("shop_202601020000", "shop_202601010000"),
        "2026-01-03T0000__shop__b.py": python_revision("shop_202601030000", "shop_202601010000"),
    }})
    message = graph_error(root)
    assert "two heads" in message
    assert "2026-01-02T0000__shop__a.py" in message and "2026-01-03T0000__shop__b.py" in message


def test_unknown_depends_on(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"shop": {
        "2026-01-01T0000__shop__create.sql": "-- depends-on: users_209901010000\n" + CREATE,
    }})
    message = graph_error(root)
    assert "2026-01-01T0000__shop__create.sql" in message
    assert "users_209901010000" in message and "not a known revision" in message


def test_python_root_without_branch_label(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"shop": {
        "2026-01-01T0000__shop__create.py": python_revision("shop_202601010000", None),
    }})
    assert "branch_labels = ('shop',)" in graph_error(root)


def test_python_revision_id_must_match_file_name(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"shop": {
        "2026-01-01T0000__shop__create.py": python_revision("abc123", None, "('shop',)"),
    }})
    assert "set revision = 'shop_202601010000'" in graph_error(root)


def test_empty_sql_file(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"shop": {
        "2026-01-01T0000__shop__create.sql": "-- only a comment\n\n",
    }})
    message = graph_error(root)
    assert "2026-01-01T0000__shop__create.sql:1" in message and "no SQL" in message


def test_two_up_markers() -> None:
    text = "-- migrate:up\nCREATE TABLE a (id int);\n-- migrate:up\nCREATE TABLE b (id int);\n"
    with pytest.raises(MigrationFileError) as caught:
        parse_sql_source(text, Path("x.sql"))
    assert caught.value.line == 3
    assert "second '-- migrate:up'" in str(caught.value)


def test_unknown_marker_is_refused() -> None:
    with pytest.raises(MigrationFileError, match="unknown marker"):
        parse_sql_source("-- migrate:upp\nSELECT 1;\n", Path("x.sql"))


def test_sql_sections_and_directives() -> None:
    text = ("-- phase: contract\n-- depends-on: users_202601010000, orders_202601010000\n"
            "-- migrate:no-transaction\n-- migrate:up\nDROP INDEX CONCURRENTLY i;\n"
            "-- migrate:down\nCREATE INDEX CONCURRENTLY i ON t (a);\n")
    source = parse_sql_source(text, Path("x.sql"))
    assert source.phase == "contract"
    assert source.depends_on == ("users_202601010000", "orders_202601010000")
    assert not source.transactional
    assert source.up.strip() == "DROP INDEX CONCURRENTLY i;" and source.up_line == 5
    assert source.down is not None and source.down_line == 7


def test_reserved_and_bad_service_names(tmp_path: Path) -> None:
    for bad in ("public", "Users", "pg_stuff"):
        (tmp_path / bad / "services" / bad / "migrations").mkdir(parents=True)
        with pytest.raises(ProjectError, match=bad):
            discover_services(tmp_path / bad)


def test_next_timestamp_stays_after_newest() -> None:
    now = datetime(2026, 11, 25, 14, 5, 30, tzinfo=UTC)
    assert next_timestamp(None, now) == "2026-11-25T1405"
    assert next_timestamp("2026-11-25T1405", now) == "2026-11-25T1406"
    assert next_timestamp("2026-12-01T0000", now) == "2026-12-01T0001"


def test_slugify_refuses_empty() -> None:
    assert slugify("Add e-mail to Users!") == "add_e_mail_to_users"
    with pytest.raises(MigrationFileError, match="no letters or digits"):
        slugify("!!! ???")


def test_alembic_ini_must_list_every_service(tmp_path: Path) -> None:
    root = write_project(tmp_path, {"shop": {"2026-01-01T0000__shop__create.sql": CREATE}})
    (root / "services" / "extra" / "migrations").mkdir(parents=True)
    (root / "services" / "extra" / "migrations" / "2026-01-01T0000__extra__create.sql").write_text(
        CREATE)
    with pytest.raises(Exception, match="services/extra/migrations"):
        check_alembic_ini(build_graph(root))
