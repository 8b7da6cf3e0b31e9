"""Step 5 of the flow: apply a plan to one database, under the migrator lock.

The migrator's session holds the advisory lock, bootstraps and reads the ledger; every revision
runs in its service's own session, logged in as `<service>_owner` (`sessions.py`), so Postgres
itself keeps a revision inside its service whatever the revision contains. After each revision
the session is reset (`statements.SESSION_RESET_SQL`): nothing a revision set, of any service,
is visible to the next one.

Per transactional revision: one transaction holding the service's settings (search_path,
statement_timeout, the attempt's lock_timeout), the statements, and the revision's ledger row,
then COMMIT. A lock request that times out (SQLSTATE 55P03) is retried under the run's
`LockPolicy` (`lockwait.py`): short attempts, pauses for queued traffic, a budget; the tables a
revision locks strongly, and for how long, are measured. A non-transactional revision runs in
autocommit and keeps its ledger row `dirty` until it has finished; a statement that times out
on a lock is retried the same way (a concurrent index build's INVALID leftover dropped first);
when it fails, INVALID indexes its builds left are dropped, and a revision that changed nothing
is not left dirty.
"""

from __future__ import annotations

import gc
import json
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import generators, pq, sql

from . import ledger
from .database import DEFAULT_IDLE_IN_TRANSACTION_MS, connect, refuse_pooler
from .discover import Service
from .errors import MigrationFailed, MigrationFileError, PlanError, RunStopped
from .interrupts import InterruptLatch, InterruptsHeld
from .lanes import DEFAULT_JOBS, LaneRun, assign_lanes, linked_services, run_lanes
from .load import Revision, checksum, read_text
from .lock import alive_marker, migrator_lock, session_alive_sql
from .lockwait import (
    HELD_LOCKS_SQL,
    Blocker,
    BlockerWatch,
    HoldTracker,
    LockPolicy,
    LockStats,
)
from .plan import PhaseChoice, Plan, make_plan
from .preflight import Prepared, file_stat, preflight
from .python_revisions import PythonRevisions
from .report import OUTPUT_LOCK, RevisionResult, RunResult, json_log
from .sessions import GuardedConnection, RevisionSessions
from .statements import (
    OWN_ERROR_PREFIX,
    SESSION_RESET_SQL,
    UNKNOWN_LOCKS,
    Statement,
    check_statements,
    enter_service_sql,
    fail_unless,
    lexing_changed,
    queues_traffic,
    quote_ident,
    revision_statements,
    service_of,
)
from .validate import Graph, build_graph

# Before the runner's own statements in a revision's session: the revision may have put its
# schema (and functions or operators named like built-in ones) first on the search path.
CATALOG_ONLY = "SET LOCAL search_path = pg_catalog, pg_temp"


@dataclass(frozen=True)
class RunSettings:
    lock_wait_seconds: float = 60.0  # for another migrator's advisory lock
    lock: LockPolicy = field(default_factory=LockPolicy)  # for the tables a revision locks
    # Per statement of a revision; None: no limit beyond the server's own setting.
    statement_timeout_ms: int | None = None
    # When the run must be over (a `time.monotonic()` instant; a deploy's worker is stopped
    # then): each revision's `statement_timeout` is at most the time left when it starts.
    deadline: float | None = None
    # A frozen migrator's revision session (idle in a transaction) and its lock session (idle,
    # no heartbeat) end after this long, so their locks go with them.
    idle_timeout_ms: int = DEFAULT_IDLE_IN_TRANSACTION_MS
    # A strong lock on a pre-existing table held longer than this is a `long_lock_hold` warning.
    long_hold_ms: int = 1000
    # How many services' revisions are applied at once (`lanes.py`); 1: one at a time.
    jobs: int = DEFAULT_JOBS

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"jobs must be at least 1, not {self.jobs}")

    def statement_timeout_now(self) -> int | None:
        """`statement_timeout` (ms) for a revision starting now: `statement_timeout_ms`,
        bounded by the time left before `deadline` (at least 1 s, so the server still names
        the statement it cancels)."""
        if self.deadline is None:
            return self.statement_timeout_ms
        left = max(1000, int((self.deadline - time.monotonic()) * 1000))
        return left if self.statement_timeout_ms is None else min(left, self.statement_timeout_ms)


def _error_line(conn: psycopg.Connection, err: psycopg.Error, statement: Statement,
                start: str) -> int:
    """The file line of `err` in `statement`, sent after the text `start` in the same query
    string: the server counts the error's position from the string's start, in characters,
    or in bytes in a SQL_ASCII database."""
    position = err.diag.statement_position
    if conn.info.parameter_status("server_encoding") == "SQL_ASCII":
        encoding = conn.info.encoding
        into = int(position) - 1 - len(start.encode(encoding)) if position else 0
        return statement.line + statement.sql.encode(encoding)[:max(into, 0)].count(b"\n")
    into = int(position) - 1 - len(start) if position else 0
    return statement.line + statement.sql[:max(into, 0)].count("\n")


def _python_error_line(err: BaseException, path: Path) -> int | None:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == path]
    return frames[-1].lineno if frames else None


def _detached_partition(statement: Statement) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(parent, partition) RangeVars of an `ALTER TABLE … DETACH PARTITION … CONCURRENTLY`."""
    if statement.kind != "AlterTableStmt":
        return None
    for cmd in (statement.node or {}).get("cmds", []):
        action = cmd.get("AlterTableCmd", {})
        detach = action.get("def", {}).get("PartitionCmd", {})
        if action.get("subtype") == "AT_DetachPartition" and detach.get("concurrent"):
            return statement.node["relation"], detach["name"]
    return None


def _qualified_name(relation: dict[str, Any], schema: str) -> str:
    """A RangeVar as a quoted, schema-qualified name (the service's schema when unqualified)."""
    return f"{quote_ident(relation.get('schemaname') or schema)}.{quote_ident(relation['relname'])}"


def _describe(err: psycopg.Error) -> str:
    diag = err.diag
    text = diag.message_primary or str(err).strip().splitlines()[0]
    detail = f" ({diag.message_detail})" if diag.message_detail else ""
    hint = f" Hint: {diag.message_hint}" if diag.message_hint else ""
    return f"{text}{detail} [SQLSTATE {err.sqlstate}]{hint}"


# What a `fail_unless` check in the finish says when the transaction is not the one the
# revision began in.
ESCAPED = "the revision ended the runner's transaction"


def _own_error(err: psycopg.Error) -> str | None:
    """The message of a failed `statements.fail_unless` check, or None."""
    if not isinstance(err, pg_errors.InvalidTextRepresentation):
        return None
    text = err.diag.message_primary or ""
    start = text.find(OWN_ERROR_PREFIX)
    return text[start + len(OWN_ERROR_PREFIX):].rstrip('"') if start >= 0 else None


# Whatever defaults a revision left on the session, the runner's transactions are these.
BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE"
# A query before the revision's first statement: from then on Postgres refuses `SET TRANSACTION
# ISOLATION LEVEL` and `SET TRANSACTION SNAPSHOT` ("must be called before any query"). Under
# REPEATABLE READ the finish's check that the migrator still holds its lock read pg_class as
# of the transaction's start, and a revision committed after a frozen migrator lost its lock
# (a breaker's finding).
SNAPSHOT_TAKEN = "SELECT"

EXISTING_RELATIONS_SQL = """
    SELECT n.nspname, c.relname, n.nspname || '.' || coalesce(t.relname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_index x ON x.indexrelid = c.oid LEFT JOIN pg_class t ON t.oid = x.indrelid
    WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'm', 'i', 'I')"""


_DONE = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY)


def run_batch(conn: psycopg.Connection, sql: str) -> None:
    """Run statements whose results nobody reads, in one round trip, through psycopg's own
    generators but without building a cursor result for each of the 20-odd statements of a
    revision's batch (25–60 µs a revision, `bench/`). An error raises the exception psycopg
    would."""
    conn.pgconn.send_query(sql.encode(conn.info.encoding))
    # psycopg's own wait: Ctrl-C cancels the statement on the server, as in `execute`
    for result in conn.wait(generators.execute(conn.pgconn)):
        if result.status not in _DONE:
            raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)


class LockTimedOut(Exception):
    """One attempt's lock_timeout ran out (55P03); `blockers` were in the way."""

    def __init__(self, waited_ms: int, blockers: list[Blocker]) -> None:
        self.waited_ms = waited_ms
        self.blockers = blockers
        super().__init__(f"lock timeout after {waited_ms} ms")


class Runner:
    """Applies revisions, each in its service's own session, while the migrator's session
    (`migrator`) holds the lock. `prepared` holds what the preflight already read; `schemas`
    are the services' schemas, whose tables at the start are the "pre-existing" ones."""

    def __init__(self, migrator: psycopg.Connection, url: str, settings: RunSettings,
                 log: Callable[[dict[str, object]], None],
                 prepared: dict[str, Prepared] | None = None,
                 schemas: list[str] | None = None) -> None:
        self.settings = settings
        self.log = log
        self.sessions = RevisionSessions(migrator, url, settings.idle_timeout_ms, log)
        self.prepared = prepared or {}
        self.stats = LockStats()
        self.warnings: list[dict[str, object]] = []
        self._python: dict[str, PythonRevisions] = {}
        # (revision, upgrade) → the Python revision's code the preflight compiled, while the
        # file is as the preflight read it (`_statements`)
        self._code: dict[tuple[str, bool], CodeType] = {}
        self._tokens: dict[tuple[str, bool], str] = {}  # (revision, upgrade) → its token
        # service → its revisions to run, (revision, upgrade) → revision; and the session (pid)
        # their tokens are bound to
        self._planned: dict[str, dict[tuple[str, bool], Revision]] = {}
        self._bound: dict[str, int] = {}
        self._watch = BlockerWatch(migrator)
        self._timeout_ms = settings.lock.first_timeout_ms  # the current attempt's
        self._active: psycopg.Connection | None = None  # the session a revision last used
        self.stopping = threading.Event()  # set when the run stops early (`lanes.py`)
        self.retry_on_failure = False  # the next revision may run again if it fails (`lanes.py`)
        self._held_line: dict[str, object] | None = None
        self._alive = alive_marker(migrator)  # see `_finish_sql`
        rows = migrator.execute(EXISTING_RELATIONS_SQL, (schemas or [],)).fetchall()
        self._existing = {(schema, name): table for schema, name, table in rows}

    def issue_tokens(self, revisions: Iterable[Revision], upgrade: bool = True) -> None:
        """Say which revisions the run will apply (or, `upgrade` False, revert): the tokens with
        which their transactions show which ledger row they may write (see
        `ledger.FRAMEWORK_DDL`) are issued per service, in one round trip, bound to the session
        that runs them."""
        for revision in revisions:
            if revision.transactional:
                self._planned.setdefault(revision.service, {})[(revision.id, upgrade)] = revision

    def _token(self, revision: Revision, upgrade: bool, pid: int) -> str:
        """The revision's token for the session `pid` (also for a retried attempt)."""
        key = (revision.id, upgrade)
        planned = self._planned.setdefault(revision.service, {})
        if key not in planned:  # not announced: issue the service's tokens again
            planned[key] = revision
            self._bound.pop(revision.service, None)
        self._bind(revision.service, pid)
        return self._tokens[key]

    def _bind(self, service: str, pid: int) -> None:
        """Issue the service's tokens (128 random bits each, of which the database keeps a
        digest) for its session `pid`, unless they are issued for it already: once per
        session, in one round trip, before its first revision runs."""
        planned = self._planned.get(service)
        if not planned or self._bound.get(service) == pid:
            return
        fresh = {secrets.token_hex(16): (r, up) for (_, up), r in planned.items()}
        self.sessions.migrator.execute(ledger.issue_tokens_sql(service, fresh, pid))
        self._tokens.update({(r.id, up): token for token, (r, up) in fresh.items()})
        self._bound[service] = pid

    def prefetch(self, service: Service, python: bool) -> None:
        """Log in as `service`'s owner, issue its tokens and, when it has `python` revisions
        to run, bind SQLAlchemy and Alembic to its session, in the background while the
        current service's revisions run (tokens for 200 revisions: 2 ms; the binding: 2.7 ms,
        plus Alembic's import, 0.22 s, the first time)."""
        def ready(conn: GuardedConnection) -> None:
            self._bind(service.name, conn.info.backend_pid)
            if python:
                runner = PythonRevisions(conn)
                runner.prepare()
                self._python[service.name] = runner

        self.sessions.prefetch(service, ready)

    def _python_for(self, service: str, conn: psycopg.Connection) -> PythonRevisions:
        runner = self._python.get(service)
        if runner is None or runner.conn is not conn:
            assert isinstance(conn, GuardedConnection)
            runner = self._python[service] = PythonRevisions(conn)
        return runner

    def _waiting(self, conn: psycopg.Connection, starts: bool) -> None:
        """A statement of the current attempt starts or ends: watch it for blockers."""
        if starts:
            self._watch.watch(conn.info.backend_pid, self._timeout_ms)
        else:
            self._watch.done()

    def _execute(self, conn: psycopg.Connection, revision: Revision, upgrade: bool,
                 statements: list[Statement] | None, prefix: str = "",
                 holds: HoldTracker | None = None,
                 finish: Callable[[], str] | None = None) -> int:
        """Run the revision's body; returns how many SQL statements completed. `prefix` (the
        runner's own statements, which cannot fail) shares the first statement's round trip;
        `holds` learns which strong locks each statement takes. `finish` (the ledger row,
        COMMIT and the reset; built just before it is sent) shares the last statement's round
        trip, so a one-statement revision costs one: the server reads the whole batch before
        it runs any of it, so the ledger row is read as it was written whatever the
        statement changes."""
        if statements is None or not statements:
            if prefix:
                conn.execute(prefix)
            if statements is None:  # watched as a whole: its raw connection passes no hook
                self._waiting(conn, True)
                try:
                    self._python_for(revision.service, conn).run(
                        revision, upgrade, holds, self._code.get((revision.id, upgrade)))
                finally:
                    self._watch.done()
            return 0
        done = 0
        for index, statement in enumerate(statements):
            last = finish is not None and index == len(statements) - 1
            changed = lexing_changed(conn)
            if changed:  # an earlier statement (a DO block, a function) changed it
                raise MigrationFileError(revision.path, f"before this statement, {changed}; "
                                         "leave the setting alone", statement.line)
            lead = f"{prefix}; " if prefix and not done else ""
            started = time.monotonic()
            try:
                self._waiting(conn, True)
                # a newline first: the statement may end in a -- comment
                run_batch(conn, lead + statement.sql + (f"\n; {finish()}" if last and finish
                                                        else ""))
            except psycopg.Error as err:
                blockers = self._watch.done()
                # also when the server refused the text before running it (a syntax error, a
                # character the database's encoding lacks): the transaction is idle then
                err.add_note(f"svcmig-line:{_error_line(conn, err, statement, lead)}")
                if last and conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
                    self._finish_failed(conn, revision, upgrade, err)
                    if holds is not None:
                        holds.statement(statement, started)
                    return done + 1
                own = _own_error(err)
                if own is not None and last:
                    raise MigrationFailed(revision.id, revision.path, own) from err
                if self._lock_timed_out(err):
                    waited = int((time.monotonic() - started) * 1000)
                    raise LockTimedOut(waited, blockers) from err
                raise
            self._watch.done()
            if holds is not None:
                holds.statement(statement, started)
            done += 1
        return done

    def _lock_timed_out(self, err: psycopg.Error) -> bool:
        """lock_timeout fired, the server broke a deadlock (SQLSTATE 40P01: a concurrent
        index build waiting for an older transaction that waits for the build's table, e.g.
        another lane's revision or live traffic), or the blocker watch cancelled a wait that
        outlived its timeout. Each ends the attempt having done nothing: tried again."""
        return isinstance(err, pg_errors.LockNotAvailable | pg_errors.DeadlockDetected) or (
            isinstance(err, pg_errors.QueryCanceled) and self._watch.cancelled)

    @contextmanager
    def _failure_as(self, revision: Revision) -> Iterator[None]:
        """Turn a database or Python error into `MigrationFailed` naming the file and line."""
        try:
            yield
        except (MigrationFailed, LockTimedOut):
            raise
        except MigrationFileError as err:
            raise MigrationFailed(revision.id, revision.path, err.message,
                                  err.line or _python_error_line(err, revision.path)) from err
        except psycopg.Error as err:
            if self._lock_timed_out(err):  # a Python revision's statement
                raise LockTimedOut(self._timeout_ms, self._watch.done()) from err
            notes = [n for n in getattr(err, "__notes__", []) if n.startswith("svcmig-line:")]
            line = int(notes[-1].split(":")[1]) if notes else _python_error_line(err, revision.path)
            raise MigrationFailed(revision.id, revision.path, _describe(err), line) from err
        except Exception as err:  # a Python revision's own bug, or a database error wrapped
            cause = getattr(err, "orig", None)  # SQLAlchemy's DBAPIError around psycopg's
            if isinstance(cause, psycopg.Error) and self._lock_timed_out(cause):
                raise LockTimedOut(self._timeout_ms, self._watch.done()) from err
            line = _python_error_line(err, revision.path)
            raise MigrationFailed(revision.id, revision.path, f"{type(err).__name__}: {err}",
                                  line) from err

    def apply(self, revision: Revision, upgrade: bool = True) -> RevisionResult:
        """Run one revision in one direction and record it; raises `MigrationFailed`."""
        started = time.monotonic()
        try:
            statements = self._statements(revision, upgrade)
            if revision.transactional:
                self._apply_transactional(revision, upgrade, statements, started)
            else:
                self._apply_autocommit(revision, upgrade, statements, started)
        except MigrationFailed as err:
            line = json_log(revision, upgrade, started, "failed", error=str(err))
            if self.retry_on_failure and not err.dirty:
                self._held_line = line  # the lane says whether it runs again (`log_held`)
            else:
                self.log(line)
            raise
        self._tokens.pop((revision.id, upgrade), None)  # used: its transaction committed
        self._code.pop((revision.id, upgrade), None)
        self._planned.get(revision.service, {}).pop((revision.id, upgrade), None)
        result = RevisionResult.of(revision, started, "applied" if upgrade else "reverted")
        self.log(json_log(revision, upgrade, started, result.outcome))
        return result

    def log_held(self, again: bool) -> None:
        """Log the failed revision's line `apply` held back: `retrying` when it runs again,
        else `failed`."""
        line, self._held_line = self._held_line, None
        if line is not None:
            self.log({**line, "outcome": "retrying" if again else "failed"})

    def _statements(self, revision: Revision, upgrade: bool) -> list[Statement] | None:
        """A SQL revision's statements, checked before anything runs (None for Python). What
        the preflight read is used when the file has not changed since; otherwise the file is
        read again and must still have the checksum it was planned with."""
        try:
            prepared = self.prepared.get(revision.id) if upgrade else None
            if prepared is not None and file_stat(revision.path) == prepared.stat:
                if prepared.code is not None:
                    self._code[(revision.id, upgrade)] = prepared.code
                return prepared.statements
            text = read_text(revision.path)
            if checksum(text) != revision.checksum:
                raise MigrationFileError(revision.path, "the file changed after it was planned "
                                         "(or since the manifest was built); run again")
            if revision.kind == "python":
                return None
            statements = revision_statements(revision, upgrade, text)
            check_statements(statements, revision.transactional, revision.path)
            return statements
        except MigrationFileError as err:
            raise MigrationFailed(revision.id, revision.path, err.message, err.line) from err
        except OSError as err:
            raise MigrationFailed(revision.id, revision.path, f"cannot read the file: {err}",
                                  None) from err

    def _session(self, revision: Revision) -> GuardedConnection:
        """The service's session, with the service's tokens bound to it."""
        try:
            conn = self.sessions.session(service_of(revision))
            self._bind(revision.service, conn.info.backend_pid)
            self._active = conn
            return conn
        except Exception as err:
            raise MigrationFailed(revision.id, revision.path, str(err)) from err

    @staticmethod
    def _ledger_sql(revision: Revision, upgrade: bool, duration_ms: int | ledger.Elapsed) -> str:
        """The ledger row says the revision is applied (or, going down, that it is not); the
        version view follows."""
        if upgrade:  # a pending transactional revision has no row; a dirty one has one
            return ledger.record_sql(revision, "applied", duration_ms,
                                     new_row=revision.transactional)
        return ledger.forget_own_sql(revision.id) if revision.transactional else \
            ledger.forget_sql(revision.id)

    def _mark_dirty(self, revision: Revision, err: MigrationFailed, why: str) -> None:
        """What ran may be committed and no transaction will take it back: say so in the
        ledger (written by the migrator), so `status` and the next run stop on it."""
        try:
            self.sessions.migrator.execute(ledger.record_sql(revision, "dirty", None))
        except psycopg.Error:
            pass  # the error below still says it
        err.dirty = True
        err.add(f"; {why}, so the revision is marked dirty: check what it left, then "
                f"`svcmig repair {revision.id} --applied` (or --rolled-back)")

    def _enter_sql(self, revision: Revision, transactional: bool, upgrade: bool = True) -> str:
        """Put the (clean) session inside the service: search_path, the attempt's lock_timeout
        and, when set, statement_timeout; a transactional revision's transaction starts here."""
        timeout = self.settings.statement_timeout_now()
        whole = []  # PostgreSQL 17+: the whole transaction too, not each statement alone
        if transactional and self.settings.deadline is not None and timeout is not None and \
                self.sessions.migrator.info.server_version >= 170000:
            whole = [f"SET LOCAL transaction_timeout = {timeout}"]
        return "; ".join([*([BEGIN] if transactional else []), *enter_service_sql(
            service_of(revision), transactional, self._timeout_ms, timeout), *whole,
            *([SNAPSHOT_TAKEN] if transactional else [])])

    def _finish(self, conn: psycopg.Connection, revision: Revision, upgrade: bool,
                started: float, transactional: bool,
                holds: HoldTracker | None = None, xid: int | None = None,
                attempt_started: float | None = None) -> None:
        """Record the revision (its ledger row), commit, and leave the session clean for the
        next revision, in one round trip; with `holds` that must ask the server, the strong
        locks held are read first, in the same round trip.

        The reset (`SESSION_RESET_SQL`: what DISCARD ALL does) runs after COMMIT, in its own
        implicit transaction: inside the revision's transaction it would come too late for what
        the transaction's start already took (a read-only default) and too early for what takes
        effect at commit (UNLISTEN). When that round trip fails, the ledger says whether the
        COMMIT happened; the session is replaced either way. `xid`: the transaction the
        revision started in (a Python revision's), which must still be the one that commits;
        `attempt_started`: when it began (a lock read from the server was taken since)."""
        duration = int((time.monotonic() - started) * 1000)
        if not transactional:  # its rows are the migrator's: a revision cannot rewrite them
            try:  # on the migrator's own session: it succeeds only while the lock is held
                self.sessions.migrator.execute(self._ledger_sql(revision, upgrade, duration))
            except psycopg.OperationalError as err:
                raise MigrationFailed(revision.id, revision.path, self._lost_lock_message(
                    "its ledger row is not written")) from err
            self._rollback(conn)
            return
        changed = lexing_changed(conn)
        if changed:  # the ledger row's literals are written for the pinned values
            raise MigrationFileError(revision.path, f"{changed}; leave the setting alone")
        probe = holds is not None and holds.ask_server
        try:
            cursor = conn.execute(self._finish_sql(revision, upgrade, duration,
                                                   conn.info.backend_pid, probe, xid))
        except psycopg.Error as err:
            self._finish_failed(conn, revision, upgrade, err, xid)
            return
        if holds is not None:
            if probe:
                cursor.nextset()  # past CATALOG_ONLY's (empty) result
                holds.from_server(cursor.fetchall(), attempt_started or started)
            self._recorded(revision, holds)

    def _finish_sql(self, revision: Revision, upgrade: bool, duration: int | ledger.Elapsed,
                    pid: int, probe: bool = False, xid: int | None = None) -> str:
        """The round trip that ends a transactional revision (see `_finish`): the runner's
        search path, the strong locks held (with `probe`), the deferred constraints and
        triggers (run now, so none runs after the ledger row and the duration counts them),
        every open cursor closed (a `WITH HOLD` cursor's query would otherwise run at COMMIT),
        checks that the migrator still holds its lock (a migrator frozen for longer than the
        idle timeout lost its session, and with it the lock, to `idle_session_timeout`;
        another may be running now) and, with `xid`, that the transaction is still the one
        the revision began in, then the revision's token, its ledger row, COMMIT and the
        reset."""
        checks = [fail_unless(session_alive_sql(self._alive),
                              self._lost_lock_message("the revision was not committed"))]
        if xid is not None:
            checks.append(fail_unless(f"pg_catalog.txid_current() = {int(xid)}", ESCAPED))
        return "; ".join([
            CATALOG_ONLY, *([HELD_LOCKS_SQL] if probe else []), "SET CONSTRAINTS ALL IMMEDIATE",
            "CLOSE ALL", *checks,
            ledger.present_token_sql(self._token(revision, upgrade, pid)),
            self._ledger_sql(revision, upgrade, duration), "COMMIT", *SESSION_RESET_SQL])

    def _finish_failed(self, conn: psycopg.Connection, revision: Revision, upgrade: bool,
                       err: psycopg.Error, xid: int | None = None) -> None:
        """The round trip with the ledger row failed; the session is replaced. A Python
        revision (`xid`: the transaction it began in) whose transaction is not that one any
        more ended the runner's: what it ran may be committed, so it is marked dirty, whatever
        the ledger says (the revision could have written its row itself). One of the runner's
        checks failing, or a SQL revision's transaction failing (SQL cannot end it), committed
        nothing. Otherwise the ledger says whether COMMIT happened (returns if so)."""
        own = _own_error(err)
        if own == ESCAPED or (xid is not None and own is None and isinstance(
                err, (pg_errors.InsufficientPrivilege, pg_errors.InvalidTextRepresentation))):
            conn.close()
            failed = MigrationFailed(revision.id, revision.path, "the revision ended the "
                                     "runner's transaction (a commit from inside it)")
            self._mark_dirty(revision, failed, "what ran before may be committed")
            raise failed from err
        if own is not None or conn.info.transaction_status == \
                psycopg.pq.TransactionStatus.INERROR:
            conn.close()
            raise MigrationFailed(revision.id, revision.path, own or _describe(err)) from err
        committed = self._committed(revision, upgrade)
        conn.close()
        if not committed:
            raise err

    def _recorded(self, revision: Revision, holds: HoldTracker) -> None:
        """After COMMIT: what the revision held and created."""
        self._measure(revision, holds)
        self._existing.update(holds.created)

    def _check_lock(self, revision: Revision) -> None:
        """Before each statement of a non-transactional revision (each commits on its own):
        the migrator's session, and with it the lock, is still there."""
        try:
            self.sessions.migrator.execute("SELECT 1")
        except psycopg.OperationalError as err:
            raise MigrationFailed(revision.id, revision.path, self._lost_lock_message(
                "the statements after it did not run")) from err

    def _lost_lock_message(self, consequence: str) -> str:
        return ("the migrator lost its lock while the revision ran (its session ended: was the "
                "process stopped or frozen for longer than --idle-timeout-ms "
                f"{self.settings.idle_timeout_ms}, or the session terminated?); {consequence}; "
                "another migrator may be running: check `svcmig status`, then run again")

    def _measure(self, revision: Revision, holds: HoldTracker) -> None:
        """How long the revision held each strong lock (until now, just after COMMIT)."""
        ended = time.monotonic()
        for hold in holds.holds.values():
            held_ms = int((ended - hold.since) * 1000)
            self.stats.held(revision.id, hold.table, hold.mode, held_ms)
            where = f"{revision.path}:{hold.line}" if hold.line else str(revision.path)
            if held_ms > self.settings.long_hold_ms:
                self._warn("long_lock_hold", revision, f"{where}: revision {revision.id} held "
                           f"{hold.mode} on {hold.table} for {held_ms} ms (over "
                           f"{self.settings.long_hold_ms} ms): every query on {hold.table} "
                           "waited that long. Keep catalog changes in their own revision and "
                           "move the work on rows to a batched backfill",
                           table=hold.table, mode=hold.mode, held_ms=held_ms)
            if hold.later_slow:
                kind, line = hold.later_slow[0]
                self._warn("lock_held_across_statements", revision, f"{where}: revision "
                           f"{revision.id} takes {hold.mode} on {hold.table} and then runs "
                           f"{kind} (line {line}) in the same transaction: the lock is held "
                           "while the later statement works through the table. Put the later "
                           "statements in a revision of their own (or a batched backfill)",
                           table=hold.table, mode=hold.mode, held_ms=held_ms)

    def _warn(self, kind: str, revision: Revision, message: str, **facts: object) -> None:
        line = {"event": "warning", "kind": kind, "revision": revision.id,
                "service": revision.service, "message": message, **facts}
        self.warnings.append(line)
        self.stats.long_holds.append({k: v for k, v in line.items() if k != "event"})
        self.log(line)

    def _committed(self, revision: Revision, upgrade: bool) -> bool:
        row = self.sessions.migrator.execute(
            f"SELECT state FROM {ledger.LEDGER_TABLE} WHERE revision = %s",
            (revision.id,)).fetchone()
        return (row is not None and row[0] == "applied") if upgrade else row is None

    def _lock_wait(self, revision: Revision, attempt: int, timed_out: LockTimedOut,
                   started: float, queues: bool, line: int | None = None) -> bool:
        """Record an attempt that gave up on a lock, then, if the budget leaves room for
        another, pause so queued traffic drains; False when there is none (no pause)."""
        self.stats.waited(timed_out.waited_ms)
        policy = self.settings.lock
        pause = policy.pause_seconds(timed_out.waited_ms)
        more = policy.another_attempt(started, attempt, pause, queues)
        self.log({"event": "lock_wait", "revision": revision.id, "attempt": attempt + 1,
                  "waited_ms": timed_out.waited_ms, "line": line,
                  "blockers": [b.as_dict() for b in timed_out.blockers],
                  "pause_ms": int(pause * 1000) if more else 0})
        # a run that is stopping (`lanes.py`: another lane failed, or Ctrl-C) waits no longer
        return more and not self.stopping.wait(pause)

    def _out_of_budget(self, revision: Revision, attempts: int, started: float,
                       last: LockTimedOut | None, line: int | None = None) -> MigrationFailed:
        policy = self.settings.lock
        who = "; ".join(b.describe() for b in last.blockers) if last and last.blockers else \
            "a session that had ended by the time it was asked (see pg_stat_activity)"
        if self.stopping.is_set():
            return MigrationFailed(
                revision.id, revision.path, f"the run stopped (a revision on another lane "
                f"failed, or it was interrupted) while this revision waited for its locks, "
                f"blocked by {who}. " + ("Nothing of it was applied; " if revision.transactional
                                         else "") + "run again", line)
        return MigrationFailed(
            revision.id, revision.path,
            f"could not get its locks within the {policy.budget_seconds:g} s lock budget "
            f"({attempts} attempts of {policy.first_timeout_ms}–{policy.max_timeout_ms} ms over "
            f"{time.monotonic() - started:.1f} s): blocked by {who}. "
            + ("Nothing of it was applied; " if revision.transactional else "")
            + "end or wait out the blocking transaction and run again (or raise --lock-budget)",
            line)

    def _apply_transactional(self, revision: Revision, upgrade: bool,
                             statements: list[Statement] | None, started: float) -> None:
        last: LockTimedOut | None = None
        attempts = 0
        queues = statements is None or any(queues_traffic(s) for s in statements)
        # the ledger row shares the last statement's round trip unless the statements cannot
        # tell which locks they take (then the finish asks the server, in a round trip of its own)
        merged = bool(statements) and not any(s.kind in UNKNOWN_LOCKS for s in statements or [])

        def finish() -> str:
            elapsed = ledger.Elapsed(int((time.monotonic() - started) * 1000))
            return self._finish_sql(revision, upgrade, elapsed, conn.info.backend_pid)
        for attempt, timeout_ms in self.settings.lock.attempts(started, queues):
            self._timeout_ms = timeout_ms
            attempts = attempt + 1
            attempt_started = time.monotonic()
            conn = self._session(revision)
            holds = HoldTracker(self._existing, service_of(revision).schema)
            xid: int | None = None  # a Python revision's transaction, which it could end
            try:
                with self._failure_as(revision):
                    prefix = self._enter_sql(revision, True, upgrade)
                    if statements is None:
                        self._python_for(revision.service, conn).prepare()
                        xid = self._begin_python(conn, prefix)
                        prefix = ""
                    self._execute(conn, revision, upgrade, statements, prefix=prefix,
                                  holds=holds, finish=finish if merged else None)
                    if merged:
                        self._recorded(revision, holds)
                        return
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
                        raise MigrationFileError(
                            revision.path, "the revision ended the runner's transaction (a "
                            "commit or rollback from inside it, e.g. through the raw psycopg "
                            "connection)")
                    self._finish(conn, revision, upgrade, started, True, holds, xid,
                                 attempt_started)
                return
            except LockTimedOut as timed_out:
                escaped = self._escaped(conn, xid)
                if escaped:
                    err = MigrationFailed(revision.id, revision.path, "a lock timeout after the "
                                          "revision ended the runner's transaction")
                    self._mark_dirty(revision, err, "what ran before may be committed")
                    raise err from timed_out
                last = timed_out
                if not self._lock_wait(revision, attempt, timed_out, started, queues):
                    break
            except MigrationFailed as err:
                escaped = self._escaped(conn, xid)
                if escaped and not err.dirty:
                    self._mark_dirty(revision, err, "the revision ended the runner's "
                                     "transaction before it failed, and what ran until then may "
                                     "be committed")
                raise
        raise self._out_of_budget(revision, attempts, started, last)

    @staticmethod
    def _begin_python(conn: psycopg.Connection, prefix: str) -> int:
        """Start a Python revision's transaction; its id, so the runner can tell whether the
        revision ended it (through the raw connection) and began another."""
        cursor = conn.execute(f"{prefix}; SELECT pg_catalog.txid_current()")
        while cursor.nextset():
            pass
        row = cursor.fetchone()
        assert row is not None
        return int(row[0])

    def _escaped(self, conn: psycopg.Connection, xid: int | None) -> bool:
        """After a failure in a transactional revision, roll it back; whether something inside
        the revision had ended the runner's transaction: the session is not in a transaction
        any more (it would be in a failed one), or (a Python revision, whose transaction `xid`
        is) that transaction committed although the runner never committed it."""
        escaped = not conn.closed and \
            conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        self._rollback(conn)
        if escaped or xid is None:
            return escaped
        try:
            row = self.sessions.migrator.execute("SELECT pg_catalog.txid_status(%s)",
                                                 (xid,)).fetchone()
        except psycopg.Error:
            return False
        return row is not None and row[0] == "committed"

    @staticmethod
    def _rollback(conn: psycopg.Connection) -> None:
        """End a failed revision's transaction and leave the session clean; a session that
        cannot do that is closed (the server rolls back; the next use opens a new one)."""
        if conn.closed:
            return
        try:
            rollback = [] if conn.info.transaction_status == \
                psycopg.pq.TransactionStatus.IDLE else ["ROLLBACK"]
            conn.execute("; ".join([*rollback, *SESSION_RESET_SQL]))
        except psycopg.Error:
            conn.close()

    def _apply_autocommit(self, revision: Revision, upgrade: bool,
                          statements: list[Statement] | None, started: float) -> None:
        """CREATE INDEX CONCURRENTLY and friends: no transaction, so the ledger row says `dirty`
        from before the first statement until every statement has succeeded, going up and
        going down (then the row goes). A statement that times out on a lock did nothing (bar
        a concurrent build's INVALID index, dropped first) and is tried again under the lock
        policy."""
        conn = self._session(revision)
        schema = service_of(revision).schema
        done = 0
        with self._failure_as(revision):
            if statements is None:
                self._python_for(revision.service, conn).prepare()
            before = {i.name for i in ledger.invalid_indexes(self.sessions.migrator, [schema])}
            self.sessions.migrator.execute(ledger.record_sql(revision, "dirty", None) if upgrade
                                           else ledger.set_state_sql(revision.id, "dirty"))
            conn.execute(self._enter_sql(revision, False))
        try:
            with self._failure_as(revision):
                for statement in statements or []:
                    self._check_lock(revision)
                    self._drop_invalid_target(conn, statement, schema)
                    if not self._finalize_pending_detach(conn, statement, schema):
                        # the budget is for this statement's lock waits, from its start
                        self._run_with_retries(conn, revision, upgrade, statement,
                                               time.monotonic(),
                                               before)
                    done += 1
                if statements is None:
                    self._execute(conn, revision, upgrade, None)
                    done = -1  # a Python revision's progress is unknown
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    raise MigrationFileError(
                        revision.path, "the revision left a transaction open; end every "
                        "BEGIN it starts with COMMIT")
                self._finish(conn, revision, upgrade, started, transactional=False)
        except (MigrationFailed, LockTimedOut) as failure:
            err = failure if isinstance(failure, MigrationFailed) else \
                self._out_of_budget(revision, 1, started, failure)
            self._end_transaction(conn)  # a revision's own BEGIN, left open by the failure
            left = self._clean_up_invalid(conn, schema, before)
            first = statements[0] if statements else None
            # a DO block or a procedure may have committed part of its work before failing,
            # and a concurrent detach its first transaction (the partition is "pending")
            atomic = first is not None and first.kind not in ("DoStmt", "CallStmt") and \
                _detached_partition(first) is None
            if done == 0 and atomic and left is not None:
                self._undo_dirty(revision, upgrade)
                err.add(f"; nothing was left behind{left} and the revision is "
                        + ("not applied" if upgrade else "still applied"))
            else:
                err.add(f"; the revision is dirty: {done if done >= 0 else 'some'} of its "
                        f"{'' if upgrade else 'down '}statements completed{left or ''}. Check "
                        f"what they left, then `svcmig repair {revision.id} --applied` (or "
                        "--rolled-back)")
            self._rollback(conn)
            if err is failure:
                raise
            raise err from failure

    def _run_with_retries(self, conn: psycopg.Connection, revision: Revision, upgrade: bool,
                          statement: Statement, started: float, before: set[str]) -> None:
        last: LockTimedOut | None = None
        attempts = 0
        for attempt, timeout_ms in self.settings.lock.attempts(started,
                                                               queues_traffic(statement)):
            attempts = attempt + 1
            if timeout_ms != self._timeout_ms or attempt:
                self._timeout_ms = timeout_ms
                conn.execute(f"SET lock_timeout = {timeout_ms}")
            try:
                self._execute(conn, revision, upgrade, [statement])
                return
            except LockTimedOut as timed_out:
                last = timed_out
                self._clean_up_invalid(conn, service_of(revision).schema, before)
                if not self._lock_wait(revision, attempt, timed_out, started,
                                       queues_traffic(statement), statement.line):
                    break
        raise self._out_of_budget(revision, attempts, started, last, statement.line)

    @staticmethod
    def _end_transaction(conn: psycopg.Connection) -> None:
        if conn.closed or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            return
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            conn.close()

    def _drop_invalid_target(self, conn: psycopg.Connection, statement: Statement,
                             schema: str) -> None:
        """A named concurrent index build whose index already exists INVALID (an earlier build
        failed) would be skipped by IF NOT EXISTS, or fail: drop the leftover first."""
        node = statement.node or {}
        if statement.kind != "IndexStmt" or not node.get("concurrent") or not node.get("idxname"):
            return
        name = node["idxname"]
        if any(i.name == name for i in ledger.invalid_indexes(self.sessions.migrator, [schema])):
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                sql.Identifier(schema), sql.Identifier(name)))
            self.log({"event": "invalid_index_dropped", "index": f"{schema}.{name}",
                      "reason": "left INVALID by an earlier build; building it again"})

    def _finalize_pending_detach(self, conn: psycopg.Connection, statement: Statement,
                                 schema: str) -> bool:
        """`DETACH PARTITION … CONCURRENTLY` of a partition an earlier, interrupted detach left
        pending would fail ("already pending detach"): finish that one instead (FINALIZE, as
        the PostgreSQL documentation says). True when it did."""
        found = _detached_partition(statement)
        if found is None:
            return False
        parent, partition = (_qualified_name(r, schema) for r in found)
        row = self.sessions.migrator.execute(
            "SELECT inhdetachpending FROM pg_catalog.pg_inherits WHERE inhrelid = "
            "pg_catalog.to_regclass(%s) AND inhparent = pg_catalog.to_regclass(%s)",
            (partition, parent)).fetchone()
        if not row or not row[0]:
            return False
        conn.execute(f"ALTER TABLE {parent} DETACH PARTITION {partition} FINALIZE")
        self.log({"event": "detach_finalized", "partition": partition,
                  "reason": "left pending by an earlier, interrupted DETACH … CONCURRENTLY"})
        return True

    def _clean_up_invalid(self, conn: psycopg.Connection, schema: str,
                          before: set[str]) -> str | None:
        """Drop (concurrently) the INVALID indexes this revision's failed builds left. Returns
        a note for the error message, or None when the clean-up itself failed."""
        if conn.closed:
            return None
        try:
            left = [i for i in ledger.invalid_indexes(self.sessions.migrator, [schema])
                    if i.name not in before]
            for index in left:
                conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                    sql.Identifier(index.schema), sql.Identifier(index.name)))
                self.log({"event": "invalid_index_dropped", "index": f"{schema}.{index.name}",
                          "reason": "left INVALID by the failed build"})
        except psycopg.Error:
            return None
        names = ", ".join(f"{schema}.{i.name}" for i in left)
        return f" (dropped the INVALID index {names} the failed build left)" if left else ""

    def _undo_dirty(self, revision: Revision, upgrade: bool) -> None:
        """Nothing of the revision ran: no row going up, `applied` again going down."""
        try:
            self.sessions.migrator.execute(ledger.forget_sql(revision.id) if upgrade
                                           else ledger.set_state_sql(revision.id, "applied"))
        except psycopg.Error:
            pass  # the row stays dirty; status reports it

    def cancel(self) -> None:
        """Cancel what the revision session last used is running (from another thread: a run
        that is stopping now, `lanes.py`); nothing when it is idle."""
        conn = self._active
        if conn is not None and not conn.closed:
            with suppress(psycopg.Error):
                conn.cancel_safe(timeout=5)

    def release(self, service: str) -> None:
        """The run needs no more of `service`: close its session (an idle backend still has
        to process every other session's catalog changes)."""
        python = self._python.pop(service, None)
        if python is not None:
            python.close()
        self.sessions.release(service)

    def close(self) -> None:
        """End the run's sessions; the run's token digests go (no later session, even one that
        happens to get a pid a revision session had, can present one)."""
        self.sessions.settle()  # a login under way may still add its Python binding
        for python in self._python.values():
            python.close()
        self._watch.close()
        if self._bound and not self.sessions.migrator.closed:
            try:
                self.sessions.migrator.execute(ledger.clear_tokens_sql(self._bound))
            except psycopg.Error:
                pass  # the next run's bootstrap deletes them
        self.sessions.close()


class _CollectionPause:
    """No garbage collection while the preflight reads every pending revision, then what it
    read frozen (`gc.freeze`) until `thaw` at the end of the run. The preflight builds the
    revisions' parse trees (a million objects at 10,000 revisions, none in a reference cycle),
    which live until the run ends: the collector's full passes, started again and again as
    that heap grew, scanned all of it each time (0.2–0.3 s of a 7 s apply at 50x200,
    `bench/bench_migrate.py`), and so would later passes. A caller that froze objects of its
    own (a pre-forking server) is left as it was: unfreezing cannot tell theirs from ours, so
    nothing is frozen then."""

    def __init__(self) -> None:
        self.enabled = gc.isenabled()
        self.froze = False

    def __enter__(self) -> None:
        gc.disable()

    def __exit__(self, *_exc: object) -> None:
        if gc.get_freeze_count() == 0:
            gc.freeze()  # before collecting again: the first pass would scan all of it
            self.froze = True
        if self.enabled:
            gc.enable()

    def thaw(self) -> None:
        if self.froze:
            gc.unfreeze()
            self.froze = False


# Which service owners may already use which other services' schemas (a grant, a membership,
# PUBLIC): (schema's service, owner's service) for every pair of the given services.
SCHEMA_ACCESS_SQL = (
    "SELECT s.name, o.name FROM unnest(%(services)s::text[]) s(name), "
    "unnest(%(services)s::text[]) o(name) WHERE s.name <> o.name "
    "AND pg_catalog.to_regnamespace(s.name) IS NOT NULL "
    "AND pg_catalog.to_regrole(o.name || '_owner') IS NOT NULL "
    "AND pg_catalog.has_schema_privilege(o.name || '_owner', s.name, 'USAGE')")


def _linked(conn: psycopg.Connection, graph: Graph, plan: Plan,
            prepared: dict[str, Prepared]) -> dict[str, str]:
    """The plan's services' groups, those that must share a lane (`lanes.linked_services`)."""
    if len({revision.service for revision in plan.steps}) < 2:
        return {}
    access = conn.execute(SCHEMA_ACCESS_SQL,
                          {"services": [s.name for s in graph.services]}).fetchall()

    def text_of(revision: Revision) -> str:
        found = prepared.get(revision.id)
        if found is not None and found.statements is not None:
            return "\n".join(statement.sql for statement in found.statements)
        return read_text(revision.path)

    return linked_services(plan.steps, text_of, graph.revisions,
                           [(one, other) for one, other in access])


def _one_line_at_a_time(log: Callable[[dict[str, object]], None],
                        ) -> Callable[[dict[str, object]], None]:
    """`log` for lanes that run at once (`lanes.py`): one line at a time, whole."""
    def locked(line: dict[str, object]) -> None:
        with OUTPUT_LOCK:
            log(line)

    return locked


def _connect_migrator(url: str, settings: RunSettings) -> psycopg.Connection:
    conn = connect(url, idle_in_transaction_ms=settings.idle_timeout_ms)
    try:
        refuse_pooler(conn, url)
    except Exception:
        conn.close()
        raise
    return conn


STOPPED = ("the revision running then was rolled back (a non-transactional one is left dirty), "
           "and the lock is released with the session; see `svcmig status`, then run again")


def _ledger_states(conn: psycopg.Connection, running: Sequence[Revision]) -> dict[str, str] | None:
    """The ledger's state of each revision running when the run was interrupted (none for a
    revision without a row): `applied` when the interrupt came after its COMMIT, before the
    runner heard back; `dirty` for one without a transaction that stopped halfway (one a lane
    cancelled was cleaned up and has no row). None when the ledger cannot be read."""
    if not running:
        return {}
    if conn.closed:
        return None
    try:
        rows = conn.execute(f"SELECT revision, state FROM {ledger.LEDGER_TABLE} WHERE revision "
                            "= ANY(%s)", ([revision.id for revision in running],)).fetchall()
    except psycopg.Error:
        return None
    return dict(rows)


def _interrupted(running: Sequence[Revision], dirty: Sequence[Revision], applied: int) -> str:
    """What an interruption left: `running`, the revisions that were running (one a lane) and
    did not commit; `dirty`, those of them without a transaction left halfway."""
    if dirty:
        return (f"interrupted during {dirty[0].id}, which runs without a transaction: it is "
                f"left dirty, after {applied} revision(s); check what it left behind (e.g. an "
                f"INVALID index), then `svcmig repair {dirty[0].id} --applied` or "
                "`--rolled-back`; the lock is released with the session")
    if not running:
        return (f"interrupted between revisions, after {applied} revision(s); the lock is "
                "released with the session; see `svcmig status`, then run again")
    return (f"interrupted during {', '.join(r.id for r in running)} after {applied} "
            f"revision(s); {STOPPED}")


def migrate(url: str, root: Path, phase: PhaseChoice = "all",
            settings: RunSettings | None = None,
            log: Callable[[dict[str, object]], None] | None = None,
            graph: Graph | None = None, target: str | None = None) -> RunResult:
    """Load, plan, check and apply under the migrator lock (with `target`, only what leads up
    to that revision or service head, `plan.up_to`). The one API behind the CLI, the Lambda
    handler and the tests. Raises `PlanError` (nothing
    applied; `.plan` has the anomalies) or `MigrationFailed` (earlier revisions stay applied
    and are in `.applied`, the failed one rolled back or left dirty, the lock released)."""
    settings = settings or RunSettings()
    log = log or json_log_to_stderr
    graph = graph or build_graph(root)
    conn = _connect_migrator(url, settings)
    schemas = [s.schema for s in graph.services]
    results: list[RevisionResult] = []
    running: list[Revision] = []  # the revisions being applied, for an interruption's message
    collection = _CollectionPause()
    signals_held = InterruptsHeld()
    with InterruptLatch() as latch:  # around the hold, which puts the latch's handlers back
        try:
            def waiting(seconds: float, holders: str) -> None:
                log({"event": "migrator_lock_wait", "waited_s": round(seconds, 1),
                     "limit_s": settings.lock_wait_seconds, "holders": holders})

            with migrator_lock(conn, settings.lock_wait_seconds, settings.idle_timeout_ms,
                               waiting):
                ledger.bootstrap(conn, graph.services)
                plan = make_plan(graph, ledger.read_state(conn, schemas, graph), phase, target)
                with collection:
                    plan, prepared = preflight(graph, plan)
                for warning in plan.warnings:
                    log({"event": "warning", "kind": warning.kind, "revision": warning.revision,
                         "message": warning.message})
                if plan.errors:
                    raise PlanError("\n".join(a.message for a in plan.errors), plan)
                if not plan.steps:
                    return RunResult(plan=plan, results=())
                log({"event": "plan", "phase": phase, "steps": len(plan.steps)})
                lanes = assign_lanes(plan.steps, settings.jobs, _linked(
                    conn, graph, plan, prepared) if settings.jobs > 1 else None)
                runners: list[Runner] = []
                applying = LaneRun()
                try:
                    lane_log = _one_line_at_a_time(log)
                    runners.extend(Runner(conn, url, settings, lane_log, prepared, schemas)
                                   for _ in lanes)
                    run_lanes(plan.steps, runners, lanes, applying, signals_held.hold,
                              lambda: latch.requested)
                except MigrationFailed as err:
                    err.applied, err.locks = applying.applied(), LockStats.combined(
                        [runner.stats for runner in runners])
                    for other in applying.failures:
                        if other is not err and isinstance(other, MigrationFailed):
                            err.add(f"; meanwhile, on another lane: {other}"
                                    + (" (left dirty)" if other.dirty else ""))
                    raise
                except KeyboardInterrupt:
                    signals_held.hold()  # a second Ctrl-C must not cut the clean-up short
                    raise
                finally:
                    running = list(applying.running.values())
                    results = list(applying.applied())
                    for runner in runners:
                        runner.close()
                    stats = LockStats.combined([runner.stats for runner in runners])
                    log({"event": "lock_summary", **stats.as_dict()})
                # imported here: a run with nothing to apply never needs it (2.4 ms)
                from .backfill_runner import record_waived

                record_waived(conn, graph.root, plan.waived_backfills)
                after = make_plan(graph, ledger.read_state(conn, schemas, graph), phase, target)
        except KeyboardInterrupt as err:
            states = _ledger_states(conn, running)
            committed = [r for r in running if states and states.get(r.id) == "applied"]
            running = [revision for revision in running if revision not in committed]
            results.extend(RevisionResult.of(revision, time.monotonic(), "applied")
                           for revision in committed)
            dirty = [r for r in running if not r.transactional  # unknown: it may be dirty
                     and (states is None or states.get(r.id) == "dirty")]
            raise RunStopped(_interrupted(running, dirty, len(results)), tuple(results),
                             interrupted=True) from err
        except psycopg.Error as err:
            raise RunStopped(f"a database error outside any revision, after {len(results)} "
                             f"revision(s): {_describe(err)}; {STOPPED}", tuple(results),
                             interrupted=False) from err
        finally:
            collection.thaw()
            conn.close()
            signals_held.release()
    return RunResult(plan=after, results=tuple(results), locks=stats,
                     hold_warnings=tuple(w for runner in runners for w in runner.warnings))


def read_plan(url: str, root: Path, phase: PhaseChoice = "all",
              graph: Graph | None = None) -> Plan:
    """The plan without applying it (no lock needed: reading is harmless), with the pending
    revisions checked as `migrate` checks them."""
    graph = graph or build_graph(root)
    conn = connect(url)
    try:
        state = ledger.read_state(conn, [s.schema for s in graph.services], graph)
        plan = make_plan(graph, state, phase)
    finally:
        conn.close()
    return preflight(graph, plan)[0]


def json_log_to_stderr(line: dict[str, object]) -> None:
    with OUTPUT_LOCK:  # one write: text and newline together
        sys.stderr.write(json.dumps(line, default=str) + "\n")
        sys.stderr.flush()
