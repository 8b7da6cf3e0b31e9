"""What `env.py` runs for stock `alembic` commands, so they keep svcmig's guarantees.

Online, Alembic only decides *what* to run (its revision arithmetic: `heads`, `users@+1`,
`orders@base`, stamps); svcmig's runner runs it: the same validation, advisory lock, bootstrap,
per-service owner sessions, ledger rows and lock_timeout policy as `svcmig migrate`. Offline
(`--sql`), Alembic renders the script, with each revision inside its service's role and
search_path (`plugin.in_service`).
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..engine import ledger
from ..engine.apply import Runner, RunSettings
from ..engine.database import connect, refuse_pooler, sqlalchemy_url
from ..engine.discover import FRAMEWORK_SCHEMA
from ..engine.errors import SvcmigError
from ..engine.lock import migrator_lock
from ..engine.plan import stock_alembic, up_to
from ..engine.preflight import prepare_all
from ..engine.repair import stamp_sql
from ..engine.validate import Graph, build_graph, parents
from .autogenerate import autogenerate_options

log = logging.getLogger("alembic.runtime.migration")

COMMON_OPTIONS = {
    "version_table": ledger.VERSION_TABLE,
    "version_table_schema": FRAMEWORK_SCHEMA,
    "transaction_per_migration": True,
}


def settings_from_environment() -> RunSettings:
    """The runner's settings for stock commands: the defaults, with the lock wait from
    `SVCMIG_LOCK_WAIT_SECONDS`."""
    wait = os.environ.get("SVCMIG_LOCK_WAIT_SECONDS")
    return RunSettings(lock_wait_seconds=float(wait)) if wait else RunSettings()


def database_url(context: Any, root: Path) -> str:
    """Where a stock `alembic` command runs, first found wins: the connection a caller handed
    Alembic in `config.attributes["connection"]` (pytest-alembic's fixtures and Alembic's
    cookbook do this: its own server, database, user and password, never another database);
    `-x url=…`; `sqlalchemy.url` in alembic.ini; `$DATABASE_URL`; the embedded PostgreSQL."""
    from ..dev.embedded import resolve_url

    given = context.config.attributes.get("connection")
    if given is not None:
        return _url_of(given)
    explicit = context.get_x_argument(as_dictionary=True).get("url") or \
        context.config.get_main_option("sqlalchemy.url")
    return resolve_url(explicit or None, root)


def _url_of(given: Any) -> str:
    """The libpq URL of the database behind a SQLAlchemy `Connection` (or `Engine`): read
    from the open psycopg connection itself, so an engine built with a `creator` (no host in
    its URL) is still found; from the engine's URL for other drivers."""
    import psycopg

    if not hasattr(given, "connection"):  # an Engine: ask one of its connections
        with given.connect() as connection:
            return _url_of(connection)
    driver = getattr(given.connection, "driver_connection", None)
    if isinstance(driver, psycopg.Connection):
        info = driver.info
        params = {**info.get_parameters(), "password": info.password or ""}
        return psycopg.conninfo.make_conninfo(
            **{key: value for key, value in params.items() if value})
    return str(given.engine.url.render_as_string(hide_password=False))


def run(context: Any) -> None:
    """Entry point for `migrations_runtime/alembic/env.py`. Logging comes from alembic.ini's
    `[loggers]` sections, as in Alembic's own env.py templates (unless the caller, e.g. a test
    harness, says `config.attributes["configure_logger"] = False`)."""
    config = context.config
    root = Path(config.config_file_name).resolve().parent
    if config.attributes.get("configure_logger", True) and _has_loggers(config):
        from logging.config import fileConfig

        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        _run_offline(context, root)
    else:
        _run_online(context, root)


def _has_loggers(config: Any) -> bool:
    return bool(config.file_config.has_section("loggers"))


def _run_offline(context: Any, root: Path) -> None:
    """`--sql`: the script bootstraps what `svcmig migrate` would, runs each revision inside its
    service, and writes each revision's ledger row after it. Alembic's own version rows go to a
    temporary table (`pg_temp`): in svcmig the version table is a view over the ledger."""
    graph = build_graph(root)
    given = context.config.attributes.get("connection")
    url = (context.get_x_argument(as_dictionary=True).get("url")
           or context.config.get_main_option("sqlalchemy.url")
           or os.environ.get("DATABASE_URL", "postgresql://")) if given is None else _url_of(given)

    def write_ledger(ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        for statement in _ledger_statements(graph, step):
            ctx.impl.static_output(statement + ctx.impl.command_terminator)

    context.configure(url=sqlalchemy_url(url), literal_binds=True,
                      on_version_apply=write_ledger,
                      **{**COMMON_OPTIONS, "version_table_schema": "pg_temp"})
    with context.begin_transaction():
        impl = context.get_context().impl
        # written as they are (context.execute would double every % for a DB-API driver)
        bootstrap = [*ledger.FRAMEWORK_DDL, *(
            statement for service in graph.services
            for statement in ledger.service_bootstrap_sql(service))]
        for sql in bootstrap:
            impl.static_output(sql.strip() + impl.command_terminator)
        context.run_migrations()


def _ledger_statements(graph: Graph, step: Any) -> list[str]:
    """The ledger rows an Alembic step (`MigrationInfo`) leaves: a migration records or forgets
    its revision; a stamp moves each service it touches to its destination."""
    if not step.is_stamp:
        revision = graph.revisions[step.up_revision_id]
        return [ledger.record_sql(revision, "applied", None) if step.is_upgrade
                else ledger.forget_sql(revision.id)]
    destinations = [r for r in step.destination_revision_ids if r in graph.revisions]
    if not destinations:  # to base: the services it comes from lose their rows
        return [statement for service in {graph.revisions[r].service
                                          for r in step.source_revision_ids
                                          if r in graph.revisions}
                for statement in stamp_sql(graph, service, None)]
    # Only the destinations' services move (Alembic may list other services' heads as the
    # stamp's sources: they stay as they are); what a destination depends on is applied too,
    # as Alembic counts it among the destination's ancestors.
    moved = {graph.revisions[r].service: r for r in destinations}
    needed: dict[str, str] = {}
    for rev_id in destinations:
        for dependency in up_to(graph, rev_id):
            revision = graph.revisions[dependency]
            if revision.service not in moved and revision.id > needed.get(revision.service, ""):
                needed[revision.service] = revision.id
    return [*(statement for service, target in moved.items()
              for statement in stamp_sql(graph, service, target)),
            *(statement for service, target in needed.items()
              for statement in stamp_sql(graph, service, target, forget_later=False))]


def alembic_heads(graph: Graph, rows: set[str]) -> tuple[str, ...]:
    """The version rows as Alembic itself would keep them. svcmig keeps one row per service;
    Alembic drops a head that another head depends on, and refuses to upgrade from heads that
    "overlap" (one an ancestor of another through `depends_on`)."""
    covered: set[str] = set()
    for head in rows:
        stack = [p for p in parents(graph.revisions[head])] if head in graph.revisions else []
        while stack:
            rev_id = stack.pop()
            if rev_id in covered or rev_id not in graph.revisions:
                continue
            covered.add(rev_id)
            stack.extend(parents(graph.revisions[rev_id]))
    return tuple(sorted(rows - covered))


def _run_online(context: Any, root: Path) -> None:
    from alembic.runtime.migration import RevisionStep
    from alembic.util import CommandError
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    settings = settings_from_environment()
    try:
        graph = build_graph(root)
        url = database_url(context, root)
        migrator = connect(url, idle_in_transaction_ms=settings.idle_timeout_ms)
    except SvcmigError as err:
        raise CommandError(str(err)) from err
    try:
        refuse_pooler(migrator, url)
        engine = create_engine(sqlalchemy_url("postgresql://"), creator=lambda: migrator,
                               poolclass=StaticPool, pool_reset_on_return=None)
        with engine.connect() as connection:
            compare = autogenerate_options(context, graph)
            context.configure(connection=connection, **COMMON_OPTIONS, **compare)
            migration_context = context.get_context()
            # `current` and the like pass dont_mutate, autogenerate compares: they read and
            # never write
            read_only = bool(migration_context.opts.get("dont_mutate")) or bool(compare)
            lock = nullcontext() if read_only else migrator_lock(
                migrator, settings.lock_wait_seconds, settings.idle_timeout_ms)
            with lock:
                if not read_only:
                    ledger.bootstrap(migrator, graph.services)
                    stock = stock_alembic(graph, ledger.read_state(migrator))
                    if stock is not None:  # as `svcmig migrate` refuses it
                        raise CommandError(stock.message)
                heads = alembic_heads(graph, set(migration_context.get_current_heads()))
                work = migration_context.opts.get("fn")
                steps = list(work(heads, migration_context)) if work else []
                if steps and read_only:
                    raise CommandError("this command may not change the database")
                # every revision the command will run up is read and checked before the first
                # runs, as `svcmig migrate` does
                prepared, problems = prepare_all(
                    graph.revisions[step.revision.revision] for step in steps
                    if isinstance(step, RevisionStep) and step.is_upgrade)
                if problems:
                    raise CommandError("\n".join(p.message for p in problems))
                runner = Runner(migrator, url, settings, _log, prepared,
                                [s.schema for s in graph.services])
                for upgrade in (True, False):  # every token the command needs, up front
                    runner.issue_tokens([graph.revisions[step.revision.revision]
                                         for step in steps if isinstance(step, RevisionStep)
                                         and step.is_upgrade == upgrade], upgrade)
                try:
                    for step in steps:
                        if isinstance(step, RevisionStep):
                            log.info("Running %s", step)
                            runner.apply(graph.revisions[step.revision.revision],
                                         step.is_upgrade)
                        else:
                            _stamp(migrator, graph, step)
                finally:
                    runner.close()
    except SvcmigError as err:
        raise CommandError(str(err)) from err
    finally:
        migrator.close()


def _stamp(migrator: Any, graph: Graph, step: Any) -> None:
    """A stamp moves heads without running anything: in svcmig's terms, the ledger of each
    service it touches ends at the stamped revision (the version table is a view over it)."""
    log.info("Running %s", step)
    for rev_id in (*step.from_revisions, *step.to_revisions):
        if rev_id not in graph.revisions:
            raise SvcmigError(f"cannot stamp {rev_id}: not a revision of this project")
    # what Alembic's on_version_apply would be given for this step (`MigrationInfo`'s fields)
    info = SimpleNamespace(is_stamp=True, is_upgrade=step.is_upgrade, up_revision_id=None,
                           source_revision_ids=step.from_revisions,
                           destination_revision_ids=step.to_revisions)
    with migrator.transaction():
        for statement in _ledger_statements(graph, info):
            migrator.execute(statement)


def _log(line: dict[str, object]) -> None:
    """The runner's structured lines, through Alembic's logger (alembic.ini configures it)."""
    if line.get("event") == "revision" and line.get("outcome") == "failed":
        log.error("%s", line.get("error"))
    elif line.get("event") in ("warning", "lock_wait", "invalid_index_dropped", "lock_summary"):
        log.warning("%s", line)
