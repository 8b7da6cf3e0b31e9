"""`svcmig`: the command group. The deploy-path commands are registered here; every other family
is imported only when one of its commands runs (or `--help` lists them), so `svcmig migrate`
pays neither for the guard's parser nor for the dev server.

Exit codes: 0 ok, 1 a problem was found, 2 usage error.
"""

from __future__ import annotations

import importlib

import click

from . import deploy

# One line per command defined in another module, imported on use.
LAZY_COMMANDS = {
    "lint": "migrations_runtime.cli.lint:lint",
    "dev": "migrations_runtime.cli.dev:dev",
    "new-service": "migrations_runtime.cli.authoring:new_service_command",
    "revision": "migrations_runtime.cli.authoring:revision_command",
    "plan": "migrations_runtime.cli.authoring:plan_command",
    "check": "migrations_runtime.cli.authoring:check_command",
    "graph": "migrations_runtime.cli.authoring:graph_command",
    "remote": "migrations_runtime.cli.remote:remote",
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
@click.version_option(package_name="svcmig", prog_name="svcmig")
def cli() -> None:
    """svcmig: per-service Postgres migrations (Alembic branches + SQL files), applied under a
    lock with a checksummed ledger.

    Exit codes: 0 ok, 1 a problem was found, 2 usage error."""


for _command in deploy.COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
