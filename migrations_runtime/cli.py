"""`svcmig`: the command line. It only adapts arguments and output; the work is in the flow's
modules.

Exit codes: 0 ok, 1 a problem was found (refused plan, failed revision, lock timeout),
2 usage error.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .apply import RunSettings, json_log_to_stderr, migrate, read_plan
from .database import resolve_url
from .discover import find_project_root
from .errors import SvcmigError
from .manifest import MANIFEST_NAME, load_manifest, write_manifest
from .plan import PHASE_CHOICES
from .repair import baseline, repair
from .report import status_text

DATABASE_URL_HELP = ("Postgres URL; default: $DATABASE_URL, else the project's embedded Postgres "
                     "under .svcmig/ (started on demand and reused)")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _run(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except SvcmigError as err:
        _fail(str(err))


def _root() -> Path:
    return _run(find_project_root)  # type: ignore[no-any-return]


# Commands defined in their own modules, imported only when used (or listed by --help), so
# `svcmig migrate` pays neither for the guard's parser nor for the dev server. One line each.
LAZY_COMMANDS = {
    "lint": "migrations_runtime.guard.cli:lint",
    "dev": "migrations_runtime.dev_server:dev",
    "new-service": "migrations_runtime.cli_authoring:new_service_command",
    "revision": "migrations_runtime.cli_authoring:revision_command",
    "plan": "migrations_runtime.cli_authoring:plan_command",
    "check": "migrations_runtime.cli_authoring:check_command",
    "graph": "migrations_runtime.cli_authoring:graph_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module_name, attribute = LAZY_COMMANDS[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module_name), attribute)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """svcmig: per-service Postgres migrations (Alembic branches + SQL files), applied under a
    lock with a checksummed ledger.

    Exit codes: 0 ok, 1 a problem was found, 2 usage error."""


database_url_option = click.option("--database-url", envvar=None, default=None,
                                   help=DATABASE_URL_HELP)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


@cli.command("migrate")
@click.option("--phase", type=click.Choice(PHASE_CHOICES), default="all", show_default=True,
              help="expand: before new code goes live; contract: after it; all: both.")
@database_url_option
@json_option
@click.option("--lock-wait", type=float, default=60.0, show_default=True,
              help="Seconds to wait for another migrator's lock.")
@click.option("--lock-timeout-ms", type=int, default=5000, show_default=True,
              help="lock_timeout of each revision's transaction.")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Plan from this build-time manifest instead of every file.")
def migrate_command(phase: str, database_url: str | None, as_json: bool, lock_wait: float,
                    lock_timeout_ms: int, manifest_path: Path | None) -> None:
    """Apply pending revisions of every service, in dependency order."""
    root = _root()
    url = _run(lambda: resolve_url(database_url, root))
    graph = _run(lambda: load_manifest(manifest_path, root)) if manifest_path else None
    settings = RunSettings(lock_wait_seconds=lock_wait, lock_timeout_ms=lock_timeout_ms)
    result = _run(lambda: migrate(url, root, phase, settings,  # type: ignore[arg-type]
                                  log=json_log_to_stderr, graph=graph))
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, default=str))
        return
    click.echo(f"applied {len(result.results)} revision(s) ({phase} phase)")
    click.echo(status_text(result.plan))


@cli.command("manifest")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Where to write it; default: <project root>/{MANIFEST_NAME}.")
@json_option
def manifest_command(output: Path | None, as_json: bool) -> None:
    """Validate every migration and write the build-time manifest the deploy-time migrator
    plans from (`migrate --manifest`), so a no-op deploy reads one file, not every revision."""
    root = _root()
    target = output or root / MANIFEST_NAME
    graph = _run(lambda: write_manifest(root, target))
    if as_json:
        click.echo(json.dumps({"manifest": str(target), "revisions": len(graph.revisions),
                               "services": [s.name for s in graph.services]}, indent=2))
    else:
        click.echo(f"wrote {target}: {len(graph.revisions)} revisions of "
                   f"{len(graph.services)} services")


@cli.command("status")
@database_url_option
@json_option
def status_command(database_url: str | None, as_json: bool) -> None:
    """Per service: applied head, code head, pending revisions, anomalies. Exit 1 on errors."""
    root = _root()
    url = _run(lambda: resolve_url(database_url, root))
    plan = _run(lambda: read_plan(url, root))
    if as_json:
        click.echo(json.dumps({
            "services": [s.as_dict() for s in plan.services],
            "anomalies": [a.as_dict() for a in plan.anomalies],
        }, indent=2))
    else:
        click.echo(status_text(plan))
    if plan.errors:
        sys.exit(1)


@cli.command("baseline")
@click.argument("targets", nargs=-1, required=True)
@database_url_option
@json_option
def baseline_command(targets: tuple[str, ...], database_url: str | None, as_json: bool) -> None:
    """Adopt svcmig on an existing database: mark TARGETS (services, meaning their code head, or
    revision ids) and everything before them as applied, without running them."""
    root = _root()
    url = _run(lambda: resolve_url(database_url, root))
    marked = _run(lambda: baseline(url, root, list(targets)))
    if as_json:
        click.echo(json.dumps({"baselined": marked}, indent=2))
    else:
        click.echo(f"baselined {len(marked)} revision(s): {', '.join(marked)}")


@cli.command("repair")
@click.argument("revision")
@click.option("--applied", "action", flag_value="applied",
              help="A dirty revision did finish: mark it applied.")
@click.option("--rolled-back", "action", flag_value="rolled-back",
              help="A dirty revision left nothing behind (you cleaned up): run it again next time.")
@click.option("--accept-checksum", "action", flag_value="accept-checksum",
              help="An applied file was edited cosmetically: record its new checksum.")
@database_url_option
@json_option
def repair_command(revision: str, action: str | None, database_url: str | None,
                   as_json: bool) -> None:
    """Settle a dirty or edited revision after checking the database by hand."""
    if action is None:
        raise click.UsageError("say what to do: --applied, --rolled-back or --accept-checksum")
    root = _root()
    url = _run(lambda: resolve_url(database_url, root))
    done = _run(lambda: repair(url, root, revision, action))  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps({"revision": revision, "action": action, "result": done}, indent=2))
    else:
        click.echo(done)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
