"""The deploy-path commands: `svcmig migrate | status | manifest | baseline | repair`, thin
adapters over `engine.apply`, `engine.manifest` and `engine.repair`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..dev.embedded import Database, resolve_database, resolve_url
from ..engine.apply import STOPPED, RunSettings, migrate, read_plan
from ..engine.discover import find_project_root
from ..engine.errors import RunStopped, SvcmigError
from ..engine.lanes import DEFAULT_JOBS
from ..engine.lockwait import MAX_BUDGET_SECONDS, MAX_TIMEOUT_MS, LockPolicy
from ..engine.manifest import MANIFEST_NAME, load_manifest, write_manifest
from ..engine.plan import PHASE_CHOICES
from ..engine.repair import baseline, repair
from ..engine.report import failure_dict, lock_summary_text, status_text
from .common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    database_url_option,
    echo_json,
    exit_code,
    fail,
    finite,
    ignore_further_interrupts,
    json_option,
    project_root,
    repair_action_options,
    require_action,
    reserve_stdout,
    run,
    stop_on_sigterm,
)
from .output import event_log, log_format_option


@click.command("migrate")
@click.option("--phase", type=click.Choice(PHASE_CHOICES), default="all", show_default=True,
              help="expand: before new code goes live; contract: after it; all: both.")
@database_url_option
@json_option
@log_format_option
@click.option("--lock-wait", type=click.FloatRange(min=0, max=MAX_BUDGET_SECONDS),
              default=60.0, show_default=True, callback=finite,
              help="Seconds to wait for another migrator's lock.")
@click.option("--lock-timeout-ms", type=click.IntRange(min=1, max=MAX_TIMEOUT_MS),
              default=LockPolicy.first_timeout_ms,
              show_default=True, help="lock_timeout of a revision's first attempt at its locks.")
@click.option("--lock-timeout-max-ms", type=click.IntRange(min=1, max=MAX_TIMEOUT_MS),
              default=LockPolicy.max_timeout_ms, show_default=True,
              help="The most any attempt waits: no query on a locked table waits longer.")
@click.option("--lock-budget", type=click.FloatRange(min=0, min_open=True,
                                                    max=MAX_BUDGET_SECONDS), callback=finite,
              default=LockPolicy.budget_seconds, show_default=True,
              help="Seconds a revision may spend on attempts and pauses before it fails.")
@click.option("--long-hold-ms", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Warn when a revision holds a strong lock on a pre-existing table longer.")
@click.option("--strict", is_flag=True, help="Exit 1 when a revision held a strong lock too "
              "long or across work on rows (the revisions stay applied).")
@click.option("--statement-timeout-ms", type=click.IntRange(min=1), default=None,
              help="statement_timeout of every statement of a revision (default: the server's).")
@click.option("--idle-timeout-ms", type=click.IntRange(min=1000), default=60_000,
              show_default=True, help="A frozen migrator's sessions, and their locks, end after "
              "this long (idle_in_transaction_session_timeout; idle_session_timeout on the lock "
              "session, kept alive by a heartbeat).")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Plan from this build-time manifest instead of every file.")
@click.option("--jobs", type=click.IntRange(min=1), default=DEFAULT_JOBS, show_default=True,
              help="Apply this many services' revisions at once (each waits for the revisions "
              "it depends on); 1 applies one revision at a time, in plan order.")
@click.option("--target", default=None, metavar="REV",
              help="Apply only what leads up to this revision (or service's head), and what "
              "it depends on: move a lagging database forward one release at a time.")
def migrate_command(phase: str, database_url: str | None, as_json: bool, log_format: str,
                    lock_wait: float,
                    lock_timeout_ms: int, lock_timeout_max_ms: int, lock_budget: float,
                    long_hold_ms: int, strict: bool, statement_timeout_ms: int | None,
                    idle_timeout_ms: int, manifest_path: Path | None, jobs: int,
                    target: str | None) -> None:
    """Apply pending revisions of every service, in dependency order.

    Each revision waits for its table locks in short attempts (--lock-timeout-ms growing to
    --lock-timeout-max-ms) with pauses in between, until --lock-budget runs out, so live
    queries never queue behind it for long. One `lock_summary` line ends the run.

    With --json, stdout is always one JSON object: the revisions applied, `locks` (what the
    run's locks cost), and `outcome` (`applied`, `refused` with the anomalies, `failed` with
    the revision, file, line and error, or `error`)."""
    try:
        policy = LockPolicy(first_timeout_ms=min(lock_timeout_ms, lock_timeout_max_ms),
                            max_timeout_ms=lock_timeout_max_ms, budget_seconds=lock_budget)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    settings = RunSettings(lock_wait_seconds=lock_wait, lock=policy,
                           statement_timeout_ms=statement_timeout_ms,
                           idle_timeout_ms=idle_timeout_ms, long_hold_ms=long_hold_ms,
                           jobs=jobs)
    stop_on_sigterm()
    if as_json:
        reserve_stdout()
    database: Database | None = None
    try:
        try:
            root = find_project_root()
            database = resolve_database(database_url, root)
            if not as_json:
                click.echo(f"database: {database.description()}")
            graph = load_manifest(manifest_path, root) if manifest_path else None
            result = migrate(database.url, root, phase, settings,  # type: ignore[arg-type]
                             log=event_log(log_format), graph=graph, target=target)
        except KeyboardInterrupt as err:  # before the run began, or after it ended
            raise RunStopped(f"interrupted; {STOPPED}", (), interrupted=True) from err
    except SvcmigError as err:
        interrupted = isinstance(err, RunStopped) and err.interrupted
        if interrupted:
            ignore_further_interrupts()
        if as_json:
            failure = failure_dict(err, phase)
            if database is not None:
                failure["database"] = database.as_dict()
            echo_json(failure)
        fail(str(err), EXIT_INTERRUPTED if interrupted else exit_code(err))
    if as_json:
        echo_json({**result.as_dict(), "outcome": "applied", "database": database.as_dict()})
    else:
        click.echo(f"applied {len(result.results)} revision(s) ({phase} phase)")
        click.echo(status_text(result.plan))
        if result.results:
            click.echo(lock_summary_text(result.locks))
        for warning in result.hold_warnings:
            click.echo(f"warning: {warning['message']}")
    if strict and result.hold_warnings:
        fail(f"--strict: {len(result.hold_warnings)} strong-lock hold warning(s); the "
             "revisions stay applied")


@click.command("manifest")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Where to write it; default: <project root>/{MANIFEST_NAME}.")
@json_option
def manifest_command(output: Path | None, as_json: bool) -> None:
    """Validate every migration and write the build-time manifest the deploy-time migrator
    plans from (`migrate --manifest`), so a no-op deploy reads one file, not every revision."""
    root = project_root()
    target = output or root / MANIFEST_NAME
    graph = run(lambda: write_manifest(root, target))
    if as_json:
        click.echo(json.dumps({"manifest": str(target), "revisions": len(graph.revisions),
                               "services": [s.name for s in graph.services]}, indent=2))
    else:
        click.echo(f"wrote {target}: {len(graph.revisions)} revisions of "
                   f"{len(graph.services)} services")


@click.command("status")
@database_url_option
@json_option
def status_command(database_url: str | None, as_json: bool) -> None:
    """Per service: applied head, code head, pending revisions, anomalies. Exit 1 on errors."""
    root = project_root()
    database: Database = run(lambda: resolve_database(database_url, root))
    if not as_json:
        click.echo(f"database: {database.description()}")
    plan = run(lambda: read_plan(database.url, root))
    if as_json:
        click.echo(json.dumps({
            "services": [s.as_dict() for s in plan.services],
            "anomalies": [a.as_dict() for a in plan.anomalies],
            "database": database.as_dict(),
        }, indent=2))
    else:
        click.echo(status_text(plan))
    if plan.errors:
        sys.exit(1)


@click.command("baseline")
@click.argument("targets", nargs=-1)
@database_url_option
@click.option("--from-database", "from_database", metavar="URL", default=None,
              help="First write each TARGET service's existing schema in URL as its root "
              "revision (pg_dump, schema only), then mark it applied there.")
@json_option
def baseline_command(targets: tuple[str, ...], database_url: str | None,
                     from_database: str | None, as_json: bool) -> None:
    """Adopt svcmig on an existing database: mark TARGETS (services, meaning their code head, or
    revision ids) and everything before them as applied, without running them. Without
    TARGETS, the revisions stock Alembic recorded in public.alembic_version (and what they
    depend on) are the targets. With --from-database URL, TARGETS are services without
    revisions: each one's schema in URL becomes its root revision (so the guard knows the
    types, constraints and indexes that predate svcmig), marked applied in URL."""
    root = project_root()
    written: list[Path] = []
    if from_database:
        if database_url:
            fail("--from-database names the database to adopt; do not add --database-url",
                 EXIT_USAGE)
        if not targets:
            fail("--from-database needs the services to adopt: svcmig baseline "
                 "--from-database URL SERVICE…", EXIT_USAGE)
        from ..tools.adopt import write_baselines

        written = run(lambda: write_baselines(root, from_database, list(targets)))
    url = run(lambda: resolve_url(from_database or database_url, root))
    marked = run(lambda: baseline(url, root, list(targets)))
    if as_json:
        answer: dict[str, list[str]] = {"baselined": marked}
        if from_database:
            answer = {"written": [str(p.relative_to(root)) for p in written], **answer}
        click.echo(json.dumps(answer, indent=2))
    else:
        for path in written:
            click.echo(f"wrote {path.relative_to(root)}")
        click.echo(f"baselined {len(marked)} revision(s): {', '.join(marked)}")


@click.command("repair")
@click.argument("revision")
@repair_action_options
@database_url_option
@json_option
def repair_command(revision: str, action: str | None, database_url: str | None,
                   as_json: bool) -> None:
    """Settle a dirty or edited revision after checking the database by hand."""
    action = require_action(action)
    root = project_root()
    url = run(lambda: resolve_url(database_url, root))
    done = run(lambda: repair(url, root, revision, action))  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps({"revision": revision, "action": action, "result": done}, indent=2))
    else:
        click.echo(done)


