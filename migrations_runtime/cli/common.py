"""What every `svcmig` command shares: one-line errors with the documented exit code, the project
root, the database option and JSON output.

Exit codes: 0 ok; 1 a problem was found (refused plan, failed revision, lock timeout, failed
check); 2 a usage error (bad arguments, unknown service or revision, a name that is taken);
130 interrupted (Ctrl-C, or SIGTERM during `migrate`), as shells report a SIGINT.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from ..engine.discover import find_project_root
from ..engine.errors import SvcmigError, UsageProblem
from ..engine.interrupts import InterruptsHeld

F = TypeVar("F", bound=Callable[..., Any])

EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DATABASE_URL_HELP = ("Postgres URL; default: $DATABASE_URL, else the project's embedded Postgres "
                     "under .svcmig/ (started on demand and reused)")


def finite(_ctx: click.Context, param: click.Parameter, value: float) -> float:
    """Refuse NaN (which passes every range check) and infinities as a usage error."""
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds", param=param)
    return value


def fail(message: str, code: int = EXIT_PROBLEM) -> NoReturn:
    """Print `error: <message>` on stderr and exit with `code`; an interrupt's report is not
    cut short by a further Ctrl-C (see `ignore_further_interrupts`)."""
    if code == EXIT_INTERRUPTED:
        ignore_further_interrupts()
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def ignore_further_interrupts() -> None:
    """Once a command reports an interrupt, a second Ctrl-C (or SIGTERM) must not cut the
    report short or end the exit with -2 instead of 130 (the interpreter's shutdown after
    `sys.exit` takes a while)."""
    InterruptsHeld().hold()  # never released: the process is on its way out


def stop_on_sigterm() -> None:
    """SIGTERM (a deploy tool or a CI job stopping the command) ends it as Ctrl-C does: its
    clean-up runs and it exits 130, instead of dying at once with nothing said."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def exit_code(err: SvcmigError) -> int:
    """2 for a usage problem (bad arguments, unknown names), 1 for any other svcmig error."""
    return EXIT_USAGE if isinstance(err, UsageProblem) else EXIT_PROBLEM


def run(action: Callable[[], Any]) -> Any:
    """Run `action`, turning svcmig errors into a one-line message and the right exit code; so
    too a connection to the database lost midway (the server stopped or restarted, a network
    cut), which no svcmig code turned into one of its own errors."""
    try:
        return action()
    except SvcmigError as err:
        fail(str(err), exit_code(err))
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except Exception as err:
        if not _lost_connection(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        fail(f"lost the connection to the database: {first}; check that the server is up "
             "(`svcmig db status` for the embedded one), then run the command again")


def _lost_connection(err: BaseException) -> bool:
    """A psycopg OperationalError (psycopg is imported only by commands that connect)."""
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(err, psycopg.OperationalError)


def write_output(path: Path, content: bytes) -> None:
    """Write a command's --output file, or one line saying why it cannot (exit 2)."""
    try:
        path.write_bytes(content)
    except OSError as err:
        fail(f"cannot write {path}: {err.strerror}; pass an --output in a folder that exists "
             "and you can write to", EXIT_USAGE)


def project_root() -> Path:
    return run(find_project_root)  # type: ignore[no-any-return]


RESERVED_STDOUT = "svcmig.stdout"  # click context meta key: the stream `echo_json` writes to
json_written = False  # whether this process printed its JSON object (`main` reads it)


def reserve_stdout() -> None:
    """Keep stdout for the command's one JSON object (`echo_json`): from now on, whatever else
    writes to stdout — a thread a Python revision started that prints after it ended, a
    subprocess, `os.write(1, ...)` — goes to stderr. For the rest of the process: such a
    thread may print until the very end."""
    sys.stdout.flush()
    reserved: Any = sys.stdout
    try:
        fd = sys.stdout.fileno()
        reserved = os.fdopen(os.dup(fd), "w", encoding=sys.stdout.encoding or "utf-8")
        os.dup2(sys.stderr.fileno(), fd)
    except (AttributeError, OSError, ValueError):  # not a file (a test's runner): Python only
        pass
    click.get_current_context().meta[RESERVED_STDOUT] = reserved
    sys.stdout = sys.stderr


def echo_json(data: object) -> None:
    """Print the command's JSON object on stdout (the one `reserve_stdout` kept, if any)."""
    global json_written
    context = click.get_current_context(silent=True)
    out = context.meta.get(RESERVED_STDOUT) if context is not None else None
    click.echo(json.dumps(data, indent=2, default=str), file=out)
    if out is not None:
        out.flush()
    json_written = True


database_url_option = click.option("--database-url", envvar=None, default=None,
                                   help=DATABASE_URL_HELP)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


REPAIR_ACTIONS = (("applied", "A dirty revision did finish: mark it applied."),
                  ("rolled-back", "A dirty revision left nothing behind (you cleaned up): run "
                                  "it again next time."),
                  ("accept-checksum", "An applied file was edited cosmetically: record its new "
                                      "checksum."))


def repair_action_options(command: F) -> F:
    """`--applied | --rolled-back | --accept-checksum` into `action` (`svcmig repair` and
    `svcmig remote repair`): one flag each, so two at once are refused instead of click
    silently keeping the last; `require_action` refuses none."""

    @functools.wraps(command)
    def with_action(*args: Any, **kwargs: Any) -> Any:
        chosen = [name for name, _ in REPAIR_ACTIONS
                  if kwargs.pop("action_" + name.replace("-", "_"))]
        if len(chosen) > 1:
            given = " and ".join(f"--{name}" for name in chosen)
            raise click.UsageError(f"choose one action, not {given}")
        return command(*args, action=chosen[0] if chosen else None, **kwargs)

    decorated: Any = with_action
    for name, help_text in reversed(REPAIR_ACTIONS):
        decorated = click.option(f"--{name}", "action_" + name.replace("-", "_"),
                                 is_flag=True, help=help_text)(decorated)
    return decorated  # type: ignore[no-any-return]


def require_action(action: str | None) -> str:
    if action is None:
        raise click.UsageError("say what to do: --applied, --rolled-back or --accept-checksum")
    return action
