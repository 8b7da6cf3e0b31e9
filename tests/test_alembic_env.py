"""Where stock `alembic` commands run (issue 12): the connection a caller hands Alembic, then
`-x url=`, then `sqlalchemy.url`, then `$DATABASE_URL`, then the embedded Postgres. A command
aimed at one database never touches another; a read-only one (`current`) writes nothing."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine

from migrations_runtime.engine.apply import migrate
from migrations_runtime.engine.database import sqlalchemy_url
from tests.conftest import fresh_database, query, revision_count, run_alembic

QUIET = {"log": lambda _line: None}


@pytest.fixture
def other_url(server_url: str) -> Iterator[str]:
    """A second database: what `$DATABASE_URL` points at, with rows that must survive."""
    with fresh_database(server_url) as url:
        yield url


def developers_database(project: Path, url: str) -> list[tuple[object, ...]]:
    """A developer's database, migrated, with a user in it; returns what must survive."""
    migrate(url, project, **QUIET)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users.users (email, email_domain) "
                     "VALUES ('keep@example.com', 'example.com')")
    return survivors(url)


def survivors(url: str) -> list[tuple[object, ...]]:
    return query(url, "SELECT (SELECT count(*) FROM users.users), "
                      "(SELECT count(*) FROM svcmig.schema_migrations)")


def ledger_size(url: str) -> int:
    if query(url, "SELECT to_regclass('svcmig.schema_migrations')") == [(None,)]:
        return 0
    return int(query(url, "SELECT count(*) FROM svcmig.schema_migrations")[0][0])


@pytest.mark.parametrize("hand_over", ["connection", "engine"])
def test_a_connection_handed_to_alembic_is_where_it_runs(
        project: Path, database_url: str, other_url: str, monkeypatch: pytest.MonkeyPatch,
        hand_over: str) -> None:
    """pytest-alembic's way (and Alembic's cookbook's): `config.attributes["connection"]`.
    `$DATABASE_URL` names a developer's database, which up/down must not touch."""
    from alembic import command
    from alembic.config import Config

    before = developers_database(project, other_url)
    monkeypatch.setenv("DATABASE_URL", other_url)
    # built with a creator, as fixtures often are: the URL names no database
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(database_url))
    config = Config(str(project / "alembic.ini"))
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection if hand_over == "connection" else engine
            command.upgrade(config, "heads")
            assert ledger_size(database_url) == revision_count(project)
            command.downgrade(config, "users@base")
    finally:
        engine.dispose()
    assert survivors(other_url) == before
    assert query(database_url, "SELECT count(*) FROM svcmig.schema_migrations "
                               "WHERE service = 'users'") == [(0,)]


@pytest.mark.parametrize("where", ["x-argument", "alembic.ini"])
def test_a_url_given_to_alembic_wins_over_database_url(
        project: Path, database_url: str, other_url: str, where: str) -> None:
    before = developers_database(project, other_url)
    args: list[str] = []
    if where == "x-argument":
        args = ["-x", f"url={database_url}"]
    else:
        ini = project / "alembic.ini"
        ini.write_text(ini.read_text().replace(
            "[alembic]\n", f"[alembic]\nsqlalchemy.url = {sqlalchemy_url(database_url)}\n", 1))
    done = run_alembic(project, *args, "upgrade", "heads", database_url=other_url)
    assert done.returncode == 0, done.stderr
    assert ledger_size(database_url) == revision_count(project)
    assert survivors(other_url) == before


def test_current_on_an_empty_database_writes_nothing(project: Path, database_url: str) -> None:
    done = run_alembic(project, "current", database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert query(database_url, "SELECT to_regnamespace('svcmig'), to_regnamespace('users')") \
        == [(None, None)]


def test_stock_commands_log_as_alembic_ini_says(project: Path, database_url: str) -> None:
    """alembic.ini's [loggers] configure logging, as Alembic's own env.py templates do: an
    upgrade says what it runs, in Alembic's format, on stderr."""
    done = run_alembic(project, "upgrade", "users@+1", database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert "INFO  [alembic.runtime.migration] Running " in done.stderr
    quiet = project / "alembic.ini"
    quiet.write_text(quiet.read_text().replace("[logger_alembic]\nlevel = INFO",
                                               "[logger_alembic]\nlevel = WARNING"))
    done = run_alembic(project, "upgrade", "users@+1", database_url=database_url)
    assert done.returncode == 0 and "Running " not in done.stderr


# Kind: stock commands in a project where one service depends on another's head (Alembic then
# leaves that head out of `heads`): upgrade and every stamp form keep each service's ledger as
# svcmig means it — only the stamped services move, and what they depend on counts as applied.
def depends_on_users_head(project: Path) -> str:
    from tests.conftest import code_heads

    users_head = code_heads(project)["users"]
    (project / "services/orders/migrations/2026-12-01T0000__orders__link_users.sql").write_text(
        f"-- depends-on: {users_head}\nCREATE TABLE orders.user_links (id int);\n")
    return "orders_202612010000"


def statuses(project: Path, url: str) -> dict[str, tuple[str | None, int]]:
    from migrations_runtime.engine.apply import read_plan

    return {s.service: (s.applied_head, len(s.pending)) for s in read_plan(url, project).services}


def test_upgrade_heads_with_a_service_depending_on_another_services_head(
        project: Path, database_url: str) -> None:
    depends_on_users_head(project)
    migrate(database_url, project, **QUIET)
    done = run_alembic(project, "upgrade", "heads", database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert all(pending == 0 for _, pending in statuses(project, database_url).values())


def test_every_stamp_form_moves_only_the_stamped_services(project: Path,
                                                          database_url: str) -> None:
    from tests.conftest import code_heads

    link = depends_on_users_head(project)
    heads = code_heads(project)
    done = run_alembic(project, "stamp", "heads", database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert statuses(project, database_url) == {
        "orders": (link, 0), "users": (heads["users"], 0)}  # users: orders depends on it
    done = run_alembic(project, "stamp", "users@head", database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert statuses(project, database_url)["orders"] == (link, 0)  # orders keeps its head
    earlier = sorted(p.name for p in (project / "services/orders/migrations").glob("*.sql"))[1]
    earlier_id = "orders_" + earlier[:15].replace("-", "").replace("T", "")
    done = run_alembic(project, "stamp", earlier_id, database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert statuses(project, database_url)["orders"][0] == earlier_id
    assert statuses(project, database_url)["users"] == (heads["users"], 0)


def test_an_alembic_project_that_did_not_opt_in_is_left_to_alembic(tmp_path: Path) -> None:
    """Its folders happen to be `services/<x>/migrations`, but its alembic.ini points at its
    own env, not svcmig's: svcmig's plugin (installed in the same environment) stays out."""
    root = tmp_path / "other"
    (root / "env").mkdir(parents=True)
    folder = root / "services" / "billing" / "migrations"
    folder.mkdir(parents=True)
    (root / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/env\n"
        "version_locations = %(here)s/services/billing/migrations\n")
    (root / "env" / "env.py").write_text("")
    (root / "env" / "script.py.mako").write_text(
        "revision = ${repr(up_revision)}\ndown_revision = ${repr(down_revision)}\n"
        "branch_labels = None\ndepends_on = None\n\n\ndef upgrade():\n    pass\n")
    (folder / "ae1027a6acf_first.py").write_text(
        "revision = 'ae1027a6acf'\ndown_revision = None\nbranch_labels = None\n"
        "depends_on = None\n\n\ndef upgrade():\n    pass\n")
    done = run_alembic(root, "heads")
    assert done.returncode == 0, done.stderr
    assert "ae1027a6acf (head)" in done.stdout
    done = run_alembic(root, "revision", "-m", "second")
    assert done.returncode == 0, done.stderr
    assert len(list(folder.glob("*_second.py"))) == 1  # Alembic's own naming


def test_baseline_adopts_a_database_stock_alembic_migrated(project: Path,
                                                           database_url: str) -> None:
    """Stock Alembic recorded orders' head in public.alembic_version (and left out users' head,
    which orders depends on): `svcmig baseline` without targets adopts both chains."""
    from tests.conftest import code_heads, run_cli

    link = depends_on_users_head(project)
    heads = code_heads(project)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO public.alembic_version VALUES (%s)", (link,))
    # before it is adopted, status says so and migrate refuses, applying nothing (its
    # revisions would fail on what stock Alembic already created, or half-apply)
    status = run_cli(project, "status", database_url=database_url)
    assert status.returncode == 1
    assert f"public.alembic_version says {link} applied" in status.stdout + status.stderr
    assert "svcmig baseline" in status.stdout + status.stderr
    refused = run_cli(project, "migrate", database_url=database_url)
    assert refused.returncode != 0 and "svcmig baseline" in refused.stderr
    assert query(database_url, "SELECT count(*) FROM svcmig.schema_migrations") == [(0,)]
    done = run_cli(project, "baseline", database_url=database_url)
    assert done.returncode == 0, done.stderr
    assert statuses(project, database_url) == {
        "orders": (link, 0), "users": (heads["users"], 0)}


# Kind: stock Alembic's version table, which another role may own, read by the migrator: only a
# plain table with a text column is read, and nothing in it runs (a view's function, a cast).
@pytest.mark.parametrize("setup", [
    "CREATE VIEW public.alembic_version AS SELECT 'users_202611020900'::varchar AS version_num "
    "WHERE public.called() IS NOT NULL",
    "CREATE TABLE public.alembic_version (version_num int); "
    "INSERT INTO public.alembic_version VALUES (1)",
    "CREATE TABLE public.alembic_version (v text); INSERT INTO public.alembic_version VALUES ('x')",
    "CREATE TABLE public.alembic_version (version_num varchar(32)); "
    "INSERT INTO public.alembic_version VALUES (NULL)"],
    ids=["view-with-a-function", "int-column", "no-version-num", "null-row"])
def test_an_odd_stock_version_table_is_not_read(project: Path, database_url: str,
                                                 setup: str) -> None:
    from tests.conftest import run_cli

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.calls (n int)")
        conn.execute("CREATE FUNCTION public.called() RETURNS int LANGUAGE sql AS "
                     "$$ INSERT INTO public.calls VALUES (1) RETURNING 1 $$")
        conn.execute(setup)
    for command in ("status", "migrate", "baseline"):
        done = run_cli(project, command, database_url=database_url)
        assert "Traceback" not in done.stderr, done.stderr
    assert query(database_url, "SELECT count(*) FROM public.calls") == [(0,)]
    assert query(database_url, "SELECT count(*) FROM svcmig.schema_migrations WHERE state = "
                 "'applied'")[0][0] > 0  # not taken for stock Alembic's: migrate ran


def test_stock_alembic_upgrade_refuses_a_database_stock_alembic_migrated(
        project: Path, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO public.alembic_version VALUES ('users_202611020900')")
    done = run_alembic(project, "upgrade", "heads", database_url=database_url)
    assert done.returncode != 0 and "svcmig baseline" in done.stderr
    assert query(database_url, "SELECT to_regclass('users.users')") == [(None,)]


def test_baseline_without_targets_or_version_rows_says_what_to_do(
        project: Path, database_url: str) -> None:
    from tests.conftest import run_cli

    done = run_cli(project, "baseline", database_url=database_url)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no TARGETS given and no version rows in public.alembic_version" in done.stderr


def test_baseline_refuses_version_rows_the_code_does_not_know(project: Path,
                                                              database_url: str) -> None:
    from tests.conftest import run_cli

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO public.alembic_version VALUES ('ae1027a6acf')")
    done = run_cli(project, "baseline", database_url=database_url)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "revisions this code does not know: ae1027a6acf" in done.stderr
    assert query(database_url, "SELECT to_regclass('svcmig.schema_migrations')") == [(None,)]


# --- autogenerate per service (issue 12, point 5) ----------------------------------------------
# Kind: Alembic's compare, the peer, judging each service's metadata against its own schema
# only: drift in the service's tables is found and written into that service's folder; other
# services, `public` and svcmig's own schema are never compared.


def alembic_lines(done: subprocess.CompletedProcess[str]) -> str:
    """What Alembic printed, without its INFO chatter."""
    return "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                     if not line.startswith("INFO"))


def test_alembic_check_passes_on_the_repository(project: Path, database_url: str) -> None:
    """The users service's metadata (services/users/schema.py) matches what its migrations
    build; orders has none and is named as not compared."""
    migrate(database_url, project, **QUIET)
    done = run_alembic(project, "check", database_url=database_url)
    assert done.returncode == 0, alembic_lines(done)
    assert "No new upgrade operations detected" in done.stdout
    assert "not compared (no schema.py): orders" in done.stderr


def test_autogenerate_writes_a_services_drift_into_its_folder(project: Path,
                                                               database_url: str) -> None:
    migrate(database_url, project, **QUIET)
    # things outside the users service that its metadata does not describe: never compared
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.stray (id int)")
        conn.execute("CREATE TABLE orders.extra (id int)")
    schema = project / "services/users/schema.py"
    schema.write_text(schema.read_text().replace(
        '    sa.Column("display_name", sa.Text),\n',
        '    sa.Column("display_name", sa.Text),\n    sa.Column("plan", sa.Text),\n'))
    drift = run_alembic(project, "check", database_url=database_url)
    assert drift.returncode != 0
    assert "add_column', 'users', 'users'" in alembic_lines(drift)
    assert "stray" not in alembic_lines(drift) and "extra" not in alembic_lines(drift)
    head = sorted((project / "services/users/migrations").iterdir())[-1].name
    made = run_alembic(project, "revision", "--autogenerate", "--head", "users@head",
                       "-m", "add plan", database_url=database_url)
    assert made.returncode == 0, alembic_lines(made)
    [written] = sorted((project / "services/users/migrations").glob("*__users__add_plan.py"))
    text = written.read_text()
    assert "op.add_column('users', sa.Column('plan'" in text
    assert f"down_revision = 'users_{head[:15].replace('-', '').replace('T', '')}'" in text
    assert "op.create_table" not in text and "drop_table" not in text
    migrate(database_url, project, **QUIET)
    again = run_alembic(project, "check", database_url=database_url)
    assert again.returncode == 0, alembic_lines(again)


@pytest.mark.parametrize(("schema_py", "message"), [
    (None, "orders has no services/orders/schema.py"),
    ("import sqlalchemy as sa\nmetadata = sa.MetaData()\nsa.Table('t', metadata, "
     "sa.Column('id', sa.Integer))\n", "t not in schema 'orders'"),
    ("import sqlalchemy as sa\nmeta = sa.MetaData(schema='orders')\n",
     "define `metadata = sa.MetaData(schema='orders')`"),
    ("raise RuntimeError('typo')\n", "cannot import it: RuntimeError: typo"),
    ("import sys\nsys.exit(0)\n", "cannot import it: SystemExit: 0"),
    ("import sqlalchemy as sa\nmetadata = sa.MetaData(schema='orders')\nsa.Table('orders', "
     "metadata, sa.Column('user_id', sa.BigInteger, sa.ForeignKey('users.users.id')))\n",
     "refers to users.users.id, which this metadata does not describe")],
    ids=["no-schema-module", "table-outside-the-schema", "no-metadata", "broken-module",
         "exits", "foreign-key-to-another-service"])
def test_autogenerate_for_a_service_without_usable_metadata_says_what_to_do(
        project: Path, database_url: str, schema_py: str | None, message: str) -> None:
    migrate(database_url, project, **QUIET)
    if schema_py is not None:
        (project / "services/orders/schema.py").write_text(schema_py)
    before = sorted((project / "services/orders/migrations").iterdir())
    done = run_alembic(project, "revision", "--autogenerate", "--head", "orders@head",
                       "-m", "x", database_url=database_url)
    assert done.returncode != 0
    assert message in alembic_lines(done)
    assert "Traceback" not in done.stderr
    assert sorted((project / "services/orders/migrations").iterdir()) == before


def test_check_on_an_empty_database_writes_nothing(project: Path, database_url: str) -> None:
    done = run_alembic(project, "check", database_url=database_url)
    assert done.returncode != 0
    assert "not up to date" in alembic_lines(done)
    assert query(database_url, "SELECT to_regnamespace('svcmig')") == [(None,)]


# Kind: autogenerate asked for something a service's revision cannot be (no message, several
# services, another service's folder, a head that names no service): one line, nothing written.
@pytest.mark.parametrize(("args", "message"), [
    (["--head", "users@head"], "give the revision a message"),
    (["--head", "users@head", "-m", "!!!"], "give the revision a message"),
    (["--head", "heads", "-m", "x"], "a revision belongs to one service"),
    (["--head", "users@head", "-m", "x", "--version-path", "services/orders/migrations"],
     "is not users's folder"),
    (["--head", "nosuch@head", "-m", "x"], "name one service's head")],
    ids=["no-message", "message-without-letters", "several-services", "other-folder",
         "unknown-service"])
def test_autogenerate_refusals_are_one_line_and_write_nothing(
        project: Path, database_url: str, args: list[str], message: str) -> None:
    migrate(database_url, project, **QUIET)
    before = sorted(project.rglob("*"))
    done = run_alembic(project, "revision", "--autogenerate", *args, database_url=database_url)
    assert done.returncode != 0
    assert message in alembic_lines(done)
    assert "Traceback" not in done.stderr
    assert sorted(project.rglob("*")) == before


@pytest.mark.parametrize("head", ["users", "users@head", "users_2026"],
                         ids=["branch-name", "branch-head", "partial-id"])
def test_autogenerate_head_forms_naming_one_service(project: Path, database_url: str,
                                                    head: str) -> None:
    migrate(database_url, project, **QUIET)
    schema = project / "services/users/schema.py"
    schema.write_text(schema.read_text().replace(
        'server_default=sa.text("now()")),\n    sa.Column("display_name"',
        'server_default=sa.text("now()")),\n    sa.Column("tier", sa.Text, '
        'server_default="free"),\n    sa.Column("display_name"', 1))
    check = run_alembic(project, "check", database_url=database_url)
    assert "add_column', 'users', 'users'" in alembic_lines(check)
    done = run_alembic(project, "revision", "--autogenerate", "--head", head, "-m", "tier",
                       database_url=database_url)
    if head != "users@head":  # Alembic's own rules: a bare branch label names the branch's
        # first revision (not a head), a partial id must name one revision; its own message
        assert done.returncode != 0 and "Traceback" not in done.stderr
        return
    assert done.returncode == 0, alembic_lines(done)
    [written] = (project / "services/users/migrations").glob("*__users__tier.py")
    migrate(database_url, project, **QUIET)
    assert run_alembic(project, "check", database_url=database_url).returncode == 0
    # a changed server default is drift too
    schema.write_text(schema.read_text().replace('server_default="free"',
                                                 'server_default="basic"'))
    changed = run_alembic(project, "check", database_url=database_url)
    assert changed.returncode != 0 and "modify_default" in alembic_lines(changed)
    assert written.is_file()
