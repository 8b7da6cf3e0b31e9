"""`svcmig`: the command group. Every command family is imported only when one of its commands
runs (or `--help` lists them), so `svcmig migrate` pays neither for the guard's parser nor for
the dev server, and `svcmig lint` not for the database driver (80 ms of its start-up).

Exit codes: 0 ok, 1 a problem was found, 2 usage error.
"""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

import click
from click.exceptions import NoArgsIsHelpError

from . import common
from .common import EXIT_INTERRUPTED, EXIT_USAGE, fail

# One line per command, imported on use.
LAZY_COMMANDS = {
    "migrate": "migrations_runtime.cli.deploy:migrate_command",
    "status": "migrations_runtime.cli.deploy:status_command",
    "manifest": "migrations_runtime.cli.deploy:manifest_command",
    "baseline": "migrations_runtime.cli.deploy:baseline_command",
    "repair": "migrations_runtime.cli.deploy:repair_command",
    "lint": "migrations_runtime.cli.lint:lint",
    "dev": "migrations_runtime.cli.dev:dev",
    "new-service": "migrations_runtime.cli.authoring:new_service_command",
    "revision": "migrations_runtime.cli.authoring:revision_command",
    "plan": "migrations_runtime.cli.authoring:plan_command",
    "check": "migrations_runtime.cli.authoring:check_command",
    "graph": "migrations_runtime.cli.authoring:graph_command",
    "remote": "migrations_runtime.cli.remote:remote",
    "db": "migrations_runtime.cli.db:db",
    "backfill": "migrations_runtime.cli.backfill:backfill",
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

    def resolve_command(self, ctx: click.Context, args: list[str],
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        """As click's, with "Did you mean …?" drawn from every command: click suggests from
        the commands it holds, and it holds none of the lazy ones."""
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand:
            raise click.exceptions.NoSuchCommand(
                str(args[0]), possibilities=self.list_commands(ctx), ctx=ctx) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="svcmig", prog_name="svcmig")
def cli() -> None:
    """svcmig: per-service Postgres migrations (Alembic branches + SQL files), applied under a
    lock with a checksummed ledger.

    Exit codes: 0 ok, 1 a problem was found, 2 usage error, 130 interrupted."""


def main() -> None:
    """The console script. Click's own errors (an unknown option, a missing argument, a bad
    value) become one `error:` line naming the help to read, like every svcmig error, instead of
    click's usage block; Ctrl-C outside a command's own handling is exit 130, not `Aborted!`."""
    try:
        outcome = cli.main(standalone_mode=False)
    except NoArgsIsHelpError as err:  # `svcmig`, `svcmig remote`: the help is the answer
        click.echo(err.format_message())
        sys.exit(EXIT_USAGE)
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx else "svcmig"
        fail(f"{err.format_message().rstrip('.')}; see `{where} --help`", EXIT_USAGE)
    except click.ClickException as err:
        fail(err.format_message(), err.exit_code)
    except (click.Abort, KeyboardInterrupt):  # click makes Ctrl-C an Abort; a second one may
        interrupted_early()  # arrive while it does
    # without standalone mode click returns the exit code of `--help`, `--version`, ctx.exit()
    sys.exit(outcome if isinstance(outcome, int) else 0)


def interrupted_early() -> NoReturn:
    """Ctrl-C or SIGTERM before a command could report it (while its modules were imported, its
    arguments parsed): exit 130, and with --json still one JSON object on stdout."""
    common.ignore_further_interrupts()
    if "--json" in sys.argv[1:] and not common.json_written:
        common.echo_json({"applied": [], "outcome": "interrupted",
                          "error": "interrupted before the command could report"})
    fail("interrupted", EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
