"""Step 5 of the flow, for Python revisions: running an Alembic revision module's `upgrade` or
`downgrade` through Alembic's `op`, on the revision's own session, inside the runner's rules.

SQLAlchemy and Alembic are imported only when the first Python revision runs.
"""

from __future__ import annotations

import io
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any, TextIO

from .errors import MigrationFileError
from .interrupts import not_swallowed
from .load import Revision, read_text
from .lockwait import HoldTracker
from .report import OUTPUT_LOCK
from .sessions import GuardedConnection
from .statements import forbidden_reason, lexing_changed, split_statements


class PythonRevisions:
    """Runs Python revisions through Alembic's `op` on one revision session. SQLAlchemy and
    Alembic are imported only when the first Python revision runs.

    Every statement the revision sends is parsed first and refused when a revision may not
    contain it (SQL built at run time escapes the preflight check), `autocommit_block()` is
    refused in a transactional revision (a no-op in a non-transactional one, which already runs
    in autocommit), and the session refuses `commit()` while the revision runs."""

    def __init__(self, conn: GuardedConnection) -> None:
        self.conn = conn
        self._connection: Any = None
        self._context: Any = None
        self._transactional = True
        self._path = Path(".")
        self._holds: HoldTracker | None = None
        self._refused: MigrationFileError | None = None  # the running revision's first refusal

    def prepare(self) -> None:
        """Bind SQLAlchemy and an Alembic migration context to the raw connection while it is
        idle (SQLAlchemy's first connect rolls back), once per session."""
        if self._connection is None:
            from alembic.runtime.migration import MigrationContext
            from sqlalchemy import create_engine, event
            from sqlalchemy.pool import StaticPool

            engine = create_engine("postgresql+psycopg://", creator=lambda: self.conn,
                                   poolclass=StaticPool, pool_reset_on_return=None)
            event.listen(engine, "before_cursor_execute", self._refuse_forbidden)
            self._connection = engine.connect()
            # SQLAlchemy's transaction stands for the runner's, which the runner begins and
            # ends on the raw connection: begun here (nothing is sent) and never ended by
            # SQLAlchemy, so Alembic never opens and commits a transaction of its own around
            # DDL (`op.batch_alter_table` as a revision's first operation did, and the commit
            # was refused: a breaker's finding)
            self._connection.begin()
            self._context = MigrationContext.configure(connection=self._connection)

    def _refuse_forbidden(self, _conn: Any, _cursor: Any, statement: str, parameters: Any,
                          *_args: Any) -> None:
        """SQLAlchemy's hook before each statement: refuse what a revision may not send (the
        refusal stands even if the revision catches it), and tell the hold tracker which
        strong locks the statement takes and when, from its parse tree as for a SQL revision
        (at the revision's line that sent it)."""
        changed = lexing_changed(self.conn)
        if changed:
            self._refuse(f"{changed}; leave the setting alone "
                         f"(statement: {statement.strip()[:200]})")
        try:
            parsed = split_statements(_as_server_parameters(statement, parameters), 1,
                                      self._path)
        except MigrationFileError:
            return  # not SQL on its own: the server decides (and says why)
        for found in parsed:
            reason = forbidden_reason(found, self._transactional)
            if reason:
                self._refuse(f"not allowed in a revision: {reason} "
                             f"(statement: {statement.strip()[:200]})")
        if self._holds is not None:
            started, line = time.monotonic(), self._calling_line()
            for found in parsed:
                self._holds.statement(replace(found, line=line), started)

    def _refuse(self, message: str) -> None:
        refused = MigrationFileError(self._path, message)
        self._refused = self._refused or refused
        raise refused

    def _calling_line(self) -> int:
        """The line of the running revision's file that sent the statement (0 if none did)."""
        frame = sys._getframe(1)
        path = str(self._path)
        while frame is not None and frame.f_code.co_filename != path:
            frame = frame.f_back  # type: ignore[assignment]
        return frame.f_lineno if frame is not None else 0

    def run(self, revision: Revision, upgrade: bool, holds: HoldTracker | None = None,
            code: CodeType | None = None) -> None:
        """Run the revision's `upgrade` (or `downgrade`). With `holds`, the strong locks of the
        statements SQLAlchemy sends are tracked as they are sent (when each was taken, and what
        ran after it), and `holds.ask_server` is set: what the parse trees cannot tell (a
        trigger or function that locks, the raw driver connection, bound parameters) is read
        from `pg_locks` before COMMIT."""
        from alembic.operations import Operations

        context = self._context
        context.autocommit_block = _autocommit_block(revision)
        self._transactional, self._path = revision.transactional, revision.path
        self._holds, self._refused = holds, None
        if holds is not None:
            holds.ask_server = True
        self.conn.guarded = True
        try:
            # stdout is the CLI's (`--json` prints one object there); what a revision prints is
            # a log line, so it goes to stderr with the rest of the log
            with not_swallowed(), Operations.context(context), _stdout_to_stderr():
                module = _import_revision(revision, code)
                (module.upgrade if upgrade else module.downgrade)()
            if self._refused is not None:  # caught by the revision: it still fails
                raise self._refused
        except SystemExit as err:  # sys.exit() ends the revision, not the migrator
            raise MigrationFileError(revision.path, f"the revision called sys.exit({err.code!r}); "
                                     "raise an exception to fail it") from err
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # GeneratorExit, CancelledError, a class of its own
            if isinstance(err, Exception):
                raise
            raise MigrationFileError(revision.path, f"{type(err).__name__}: {err}") from err
        finally:
            self.conn.guarded = False
            self._holds = None

    def close(self) -> None:
        if self._connection is not None and not self.conn.closed:
            try:
                self._connection.close()
            except Exception:  # a session an interrupt left busy: closed with it by the runner
                self.conn.close()


# psycopg's client-side placeholders, as SQLAlchemy writes them: %(name)s, %s, and %% for %
_PLACEHOLDER = re.compile(r"%\(\w+\)s|%s|%%")


def _as_server_parameters(statement: str, parameters: Any) -> str:
    """`statement` with its bound parameters as `$1`, which PostgreSQL's parser reads as
    values, so a statement with parameters is checked and tracked like any other (psycopg
    doubles a literal `%` only when there are parameters)."""
    if not parameters:
        return statement
    return _PLACEHOLDER.sub(lambda m: "%" if m.group() == "%%" else "$1", statement)


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send whatever writes to stdout to stderr: `print`, and file descriptor 1 itself
    (`os.write(1, …)`, a subprocess), restored afterwards. What goes through `sys.stdout` and
    `sys.stderr` goes out a whole line at a time (`_WholeLines`); bytes written to a file
    descriptor or a `.buffer` go out as they come."""
    sys.stdout.flush()
    saved = os.dup(1)
    lines, errors = _WholeLines(sys.stderr), _WholeLines(sys.stderr)
    try:
        os.dup2(2, 1)
        with redirect_stdout(lines), redirect_stderr(errors):
            yield
    finally:
        lines.finish()
        errors.finish()
        _KEPT.extend((lines, errors))
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# Every `_WholeLines` a revision printed through, kept for the life of the process: a thread the
# revision started may still be inside `print()` on it, which holds `sys.stdout` as a borrowed
# reference (CPython), so freeing it when the revision ends crashed the process (a breaker's
# revision printing from a daemon thread in a loop: AttributeError, then a segfault).
_KEPT: list[_WholeLines] = []


class _WholeLines(io.TextIOBase):
    """What a revision prints, written to `stream` a whole line at a time (under
    `OUTPUT_LOCK`), so log lines other threads write meanwhile are never cut into; a last
    line without a newline gets one when the revision ends."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._pending = ""
        self._thread = threading.get_ident()  # the revision's; other threads write through

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:  # a subprocess given sys.stdout writes to the stream's descriptor
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding

    @property
    def buffer(self) -> Any:  # bytes written there go to the stream's, as they come
        return self.stream.buffer

    def write(self, text: str) -> int:
        if threading.get_ident() != self._thread:  # a lane's log line, whole: not the revision's
            self._emit(text)
            return len(text)
        self._pending += text
        if "\n" in self._pending:
            whole, self._pending = self._pending.rsplit("\n", 1)
            self._emit(whole + "\n")
        return len(text)

    def finish(self) -> None:
        """The revision ended: its last line, without a newline, goes out with one. Later
        writes (a thread it started) still go out, whole, to `stream`."""
        if self._pending:
            self._emit(self._pending + "\n")
            self._pending = ""
        self._thread = -1  # no thread's: every write goes straight through

    def flush(self) -> None:
        self.stream.flush()

    def _emit(self, text: str) -> None:
        with OUTPUT_LOCK:
            self.stream.write(text)
            self.stream.flush()


def _autocommit_block(revision: Revision) -> Callable[[], Any]:
    def refuse() -> Any:
        raise MigrationFileError(
            revision.path, "autocommit_block() in a transactional revision: it would commit the "
            "runner's transaction before the ledger row; set `transactional = False`")

    return (lambda: nullcontext()) if not revision.transactional else refuse


def _import_revision(revision: Revision, code: CodeType | None = None) -> ModuleType:
    """Execute a Python revision as a fresh module: `code` (what the preflight compiled), else
    the file compiled now. Not imported: a revision runs once per database, so writing its
    bytecode beside it would only cost a file per revision (and litter the migrations
    folder)."""
    module = ModuleType(f"svcmig_revision_{revision.id}")
    module.__file__ = str(revision.path)
    if code is None:
        code = compile(read_text(revision.path).removeprefix("\ufeff"), str(revision.path),
                       "exec")
    exec(code, module.__dict__)
    return module
