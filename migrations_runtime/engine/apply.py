"""Step 5 of the flow: apply a plan to one database, under the migrator lock.

The migrator's session holds the advisory lock, bootstraps and reads the ledger; every revision
runs in its service's own session, logged in as `<service>_owner` (`sessions.py`), so Postgres
itself keeps a revision inside its service whatever the revision contains. Each revision starts
from a clean session (`statements.SESSION_RESET_SQL`): nothing an earlier revision set, of any
service, is visible to the next one.

Per transactional revision: one transaction holding the reset, the service's settings
(search_path, lock_timeout with bounded retries on SQLSTATE 55P03, statement_timeout), the
statements, and the revision's ledger row and Alembic version row, then COMMIT. A
non-transactional revision runs in autocommit and keeps its ledger row `dirty` until it has
finished; when it fails, INVALID indexes its concurrent builds left are dropped, and a revision
that changed nothing is not left dirty.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from . import ledger
from .database import DEFAULT_IDLE_IN_TRANSACTION_MS, connect, refuse_pooler
from .errors import MigrationFailed, MigrationFileError, PlanError
from .load import Revision, checksum, read_text
from .lock import migrator_lock
from .plan import PhaseChoice, Plan, make_plan
from .preflight import Prepared, file_stat, preflight
from .report import RevisionResult, RunResult, json_log
from .sessions import GuardedConnection, RevisionSessions
from .statements import (
    DEFAULT_LOCK_TIMEOUT_MS,
    SESSION_RESET_SQL,
    Statement,
    check_statements,
    enter_service_sql,
    forbidden_reason,
    revision_statements,
    service_of,
    split_statements,
)
from .validate import Graph, build_graph


@dataclass(frozen=True)
class RunSettings:
    lock_wait_seconds: float = 60.0
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
    lock_retries: int = 4
    backoff_seconds: float = 0.5
    # Per statement of a revision; None: no limit beyond the server's own setting.
    statement_timeout_ms: int | None = None
    # A frozen migrator's revision session (idle in a transaction) and its lock session (idle,
    # no heartbeat) end after this long, so their locks go with them.
    idle_timeout_ms: int = DEFAULT_IDLE_IN_TRANSACTION_MS


class PythonRevisions:
    """Runs Python revisions through Alembic's `op` on one revision session. SQLAlchemy and
    Alembic are imported only when the first Python revision runs.

    Every statement the revision sends is parsed first and refused when a revision may not
    contain it (SQL built at run time escapes the preflight check), `autocommit_block()` is
    refused in a transactional revision (a no-op in a non-transactional one, which already runs
    in autocommit), and the session refuses `commit()` while the revision runs."""

    def __init__(self, conn: GuardedConnection) -> None:
        self._raw = conn
        self._connection: Any = None
        self._context: Any = None
        self._transactional = True
        self._path = Path(".")

    def prepare(self) -> None:
        """Bind SQLAlchemy and an Alembic migration context to the raw connection while it is
        idle (SQLAlchemy's first connect rolls back), once per session."""
        if self._connection is None:
            from alembic.runtime.migration import MigrationContext
            from sqlalchemy import create_engine, event
            from sqlalchemy.pool import StaticPool

            engine = create_engine("postgresql+psycopg://", creator=lambda: self._raw,
                                   poolclass=StaticPool, pool_reset_on_return=None)
            event.listen(engine, "before_cursor_execute", self._refuse_forbidden)
            self._connection = engine.connect()
            self._context = MigrationContext.configure(connection=self._connection)

    def _refuse_forbidden(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        try:
            parsed = split_statements(statement, 1, self._path)
        except MigrationFileError:
            return  # not parseable on its own (bound parameters): the server decides
        for found in parsed:
            reason = forbidden_reason(found, self._transactional)
            if reason:
                raise MigrationFileError(self._path, f"not allowed in a revision: {reason} "
                                         f"(statement: {statement.strip()[:200]})")

    def run(self, revision: Revision, upgrade: bool) -> None:
        from alembic.operations import Operations

        module = _import_revision(revision)
        context = self._context
        context.autocommit_block = _autocommit_block(revision)
        self._transactional, self._path = revision.transactional, revision.path
        self._raw.guarded = True
        try:
            with Operations.context(context):
                (module.upgrade if upgrade else module.downgrade)()
        finally:
            self._raw.guarded = False

    def close(self) -> None:
        if self._connection is not None and not self._raw.closed:
            self._connection.close()


def _autocommit_block(revision: Revision) -> Callable[[], Any]:
    def refuse() -> Any:
        raise MigrationFileError(
            revision.path, "autocommit_block() in a transactional revision: it would commit the "
            "runner's transaction before the ledger row; set `transactional = False`")

    return (lambda: nullcontext()) if not revision.transactional else refuse


def _import_revision(revision: Revision) -> ModuleType:
    """Execute a Python revision as a fresh module. Compiled here rather than imported: a
    revision runs once per database, so writing its bytecode beside it would only cost a file
    per revision (and litter the migrations folder)."""
    module = ModuleType(f"svcmig_revision_{revision.id}")
    module.__file__ = str(revision.path)
    code = compile(read_text(revision.path).removeprefix("\ufeff"), str(revision.path), "exec")
    exec(code, module.__dict__)
    return module


def _python_error_line(err: BaseException, path: Path) -> int | None:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == path]
    return frames[-1].lineno if frames else None


def _describe(err: psycopg.Error) -> str:
    diag = err.diag
    text = diag.message_primary or str(err).strip().splitlines()[0]
    detail = f" ({diag.message_detail})" if diag.message_detail else ""
    hint = f" Hint: {diag.message_hint}" if diag.message_hint else ""
    return f"{text}{detail} [SQLSTATE {err.sqlstate}]{hint}"


# Whatever defaults a revision left on the session, the runner's transactions are these.
BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE"


class Runner:
    """Applies revisions, each in its service's own session, while the migrator's session
    (`migrator`) holds the lock. `prepared` holds statements the preflight already parsed."""

    def __init__(self, migrator: psycopg.Connection, url: str, settings: RunSettings,
                 log: Callable[[dict[str, object]], None],
                 prepared: dict[str, Prepared] | None = None) -> None:
        self.settings = settings
        self.log = log
        self.sessions = RevisionSessions(migrator, url, settings.idle_timeout_ms, log)
        self.prepared = prepared or {}
        self._python: dict[str, PythonRevisions] = {}

    def _python_for(self, service: str, conn: GuardedConnection) -> PythonRevisions:
        runner = self._python.get(service)
        if runner is None or runner._raw is not conn:
            runner = self._python[service] = PythonRevisions(conn)
        return runner

    def _execute(self, conn: psycopg.Connection, revision: Revision, upgrade: bool,
                 statements: list[Statement] | None, prefix: str = "") -> int:
        """Run the revision's body; returns how many SQL statements completed. `prefix` (the
        runner's own statements, which cannot fail) shares the first statement's round trip."""
        if statements is None or not statements:
            if prefix:
                conn.execute(prefix)
            if statements is None:
                self._python_for(revision.service, conn).run(  # type: ignore[arg-type]
                    revision, upgrade)
            return 0
        done = 0
        for statement in statements:
            lead = f"{prefix}; " if prefix and not done else ""
            try:
                conn.execute(lead + statement.sql)
            except psycopg.Error as err:
                position = err.diag.statement_position
                offset = int(position) - 1 - len(lead) if position else 0
                extra = statement.sql[:offset].count("\n") if offset > 0 else 0
                err.add_note(f"svcmig-line:{statement.line + extra}")
                raise
            done += 1
        return done

    @contextmanager
    def _failure_as(self, revision: Revision) -> Iterator[None]:
        """Turn a database or Python error into `MigrationFailed` naming the file and line."""
        try:
            yield
        except MigrationFailed:
            raise
        except MigrationFileError as err:
            raise MigrationFailed(revision.id, revision.path, err.message,
                                  err.line or _python_error_line(err, revision.path)) from err
        except psycopg.Error as err:
            notes = [n for n in getattr(err, "__notes__", []) if n.startswith("svcmig-line:")]
            line = int(notes[-1].split(":")[1]) if notes else _python_error_line(err, revision.path)
            raise MigrationFailed(revision.id, revision.path, _describe(err), line) from err
        except Exception as err:  # a Python revision's own bug
            line = _python_error_line(err, revision.path)
            raise MigrationFailed(revision.id, revision.path, f"{type(err).__name__}: {err}",
                                  line) from err

    def apply(self, revision: Revision, upgrade: bool = True) -> RevisionResult:
        """Run one revision in one direction and record it; raises `MigrationFailed`."""
        started = time.monotonic()
        try:
            statements = self._statements(revision, upgrade)
            if revision.transactional:
                self._apply_transactional(revision, upgrade, statements)
            else:
                self._apply_autocommit(revision, upgrade, statements)
        except MigrationFailed as err:
            self.log(json_log(revision, upgrade, started, "failed", error=str(err)))
            raise
        result = RevisionResult.of(revision, started, "applied" if upgrade else "reverted")
        self.log(json_log(revision, upgrade, started, result.outcome))
        return result

    def _statements(self, revision: Revision, upgrade: bool) -> list[Statement] | None:
        """A SQL revision's statements, checked before anything runs (None for Python). What
        the preflight read is used when the file has not changed since; otherwise the file is
        read again and must still have the checksum it was planned with."""
        try:
            prepared = self.prepared.get(revision.id) if upgrade else None
            if prepared is not None and file_stat(revision.path) == prepared.stat:
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
        try:
            return self.sessions.session(service_of(revision))
        except Exception as err:
            raise MigrationFailed(revision.id, revision.path, str(err)) from err

    @staticmethod
    def _ledger_sql(revision: Revision, upgrade: bool, duration_ms: int) -> str:
        """The ledger row says the revision is applied (or, going down, that it is not); the
        version view follows."""
        if upgrade:  # a pending transactional revision has no row; a dirty one has one
            return ledger.record_sql(revision, "applied", duration_ms,
                                     new_row=revision.transactional)
        return ledger.forget_sql(revision.id)

    def _enter_sql(self, revision: Revision, transactional: bool) -> str:
        """Put the (clean) session inside the service: search_path, lock_timeout and, when set,
        statement_timeout; a transactional revision's transaction starts here too."""
        begin = [BEGIN] if transactional else []
        return "; ".join([*begin, *enter_service_sql(
            service_of(revision), transactional, self.settings.lock_timeout_ms,
            self.settings.statement_timeout_ms)])

    def _finish(self, conn: psycopg.Connection, revision: Revision, upgrade: bool,
                started: float, transactional: bool) -> None:
        """Record the revision (its ledger row), commit, and leave the session clean for the
        next revision, in one round trip.

        The reset (`SESSION_RESET_SQL`: what DISCARD ALL does) runs after COMMIT, in its own
        implicit transaction: inside the revision's transaction it would come too late for what
        the transaction's start already took (a read-only default) and too early for what takes
        effect at commit (UNLISTEN). When that round trip fails, the ledger says whether the
        COMMIT happened; the session is replaced either way."""
        duration = int((time.monotonic() - started) * 1000)
        # a non-transactional revision's own session settings must not stop its bookkeeping
        opening = [] if transactional else [BEGIN, "SET LOCAL statement_timeout = 0"]
        try:
            conn.execute("; ".join([*opening, self._ledger_sql(revision, upgrade, duration),
                                    "COMMIT", *SESSION_RESET_SQL]))
        except psycopg.Error:
            committed = self._committed(revision, upgrade)
            conn.close()
            if not committed:
                raise

    def _committed(self, revision: Revision, upgrade: bool) -> bool:
        row = self.sessions.migrator.execute(
            f"SELECT state FROM {ledger.LEDGER_TABLE} WHERE revision = %s",
            (revision.id,)).fetchone()
        return (row is not None and row[0] == "applied") if upgrade else row is None

    def _apply_transactional(self, revision: Revision, upgrade: bool,
                             statements: list[Statement] | None) -> None:
        for attempt in range(self.settings.lock_retries + 1):
            conn = self._session(revision)
            started = time.monotonic()
            try:
                with self._failure_as(revision):
                    if statements is None:
                        self._python_for(revision.service, conn).prepare()
                    self._execute(conn, revision, upgrade, statements,
                                  prefix=self._enter_sql(revision, True))
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
                        raise MigrationFileError(
                            revision.path, "the revision ended the runner's transaction "
                            "(a rollback or commit from inside it); nothing of it was recorded")
                    self._finish(conn, revision, upgrade, started, transactional=True)
                return
            except MigrationFailed as err:
                self._rollback(conn)
                timed_out = isinstance(err.__cause__, pg_errors.LockNotAvailable)
                if not timed_out or attempt == self.settings.lock_retries:
                    if timed_out:
                        err.add(f" after {attempt + 1} attempts with lock_timeout "
                                f"{self.settings.lock_timeout_ms}ms: a long transaction holds a "
                                "lock on the table; find it in pg_stat_activity")
                    raise
                self.log({"event": "lock_timeout_retry", "revision": revision.id,
                          "attempt": attempt + 1})
                time.sleep(self.settings.backoff_seconds * (2 ** attempt))

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
                          statements: list[Statement] | None) -> None:
        """CREATE INDEX CONCURRENTLY and friends: no transaction, so the ledger row says `dirty`
        from before the first statement until every statement has succeeded."""
        conn = self._session(revision)
        schema = service_of(revision).schema
        started = time.monotonic()
        done = 0
        with self._failure_as(revision):
            if statements is None:
                self._python_for(revision.service, conn).prepare()
            before = {i.name for i in ledger.invalid_indexes(conn, [schema])}
            conn.execute("; ".join([self._enter_sql(revision, False), *(
                [ledger.record_sql(revision, "dirty", None)] if upgrade else [])]))
        try:
            with self._failure_as(revision):
                for statement in statements or []:
                    self._drop_invalid_target(conn, statement, schema)
                    self._execute(conn, revision, upgrade, [statement])
                    done += 1
                if statements is None:
                    self._execute(conn, revision, upgrade, None)
                    done = -1  # a Python revision's progress is unknown
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    raise MigrationFileError(
                        revision.path, "the revision left a transaction open; end every "
                        "BEGIN it starts with COMMIT")
                self._finish(conn, revision, upgrade, started, transactional=False)
        except MigrationFailed as err:
            self._end_transaction(conn)  # a revision's own BEGIN, left open by the failure
            left = self._clean_up_invalid(conn, schema, before)
            if upgrade and done == 0 and left is not None:
                self._forget_dirty(conn, revision)
                err.add(f"; nothing was left behind{left} and the revision is not applied")
            elif upgrade:
                err.add(f"; the revision is dirty: {done if done >= 0 else 'some'} of its "
                        f"statements completed{left or ''}. Check what they left, then "
                        f"`svcmig repair {revision.id} --applied` (or --rolled-back)")
            self._rollback(conn)
            raise

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
        if any(i.name == name for i in ledger.invalid_indexes(conn, [schema])):
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                sql.Identifier(schema), sql.Identifier(name)))
            self.log({"event": "invalid_index_dropped", "index": f"{schema}.{name}",
                      "reason": "left INVALID by an earlier build; building it again"})

    def _clean_up_invalid(self, conn: psycopg.Connection, schema: str,
                          before: set[str]) -> str | None:
        """Drop (concurrently) the INVALID indexes this revision's failed builds left. Returns
        a note for the error message, or None when the clean-up itself failed."""
        if conn.closed:
            return None
        try:
            left = [i for i in ledger.invalid_indexes(conn, [schema]) if i.name not in before]
            for index in left:
                conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                    sql.Identifier(index.schema), sql.Identifier(index.name)))
                self.log({"event": "invalid_index_dropped", "index": f"{schema}.{index.name}",
                          "reason": "left INVALID by the failed build"})
        except psycopg.Error:
            return None
        names = ", ".join(f"{schema}.{i.name}" for i in left)
        return f" (dropped the INVALID index {names} the failed build left)" if left else ""

    def _forget_dirty(self, conn: psycopg.Connection, revision: Revision) -> None:
        try:
            conn.execute(ledger.forget_sql(revision.id))
        except psycopg.Error:
            pass  # the row stays dirty; status reports it

    def release(self, service: str) -> None:
        """The run needs no more of `service`: close its session (an idle backend still has
        to process every other session's catalog changes)."""
        python = self._python.pop(service, None)
        if python is not None:
            python.close()
        self.sessions.release(service)

    def close(self) -> None:
        for python in self._python.values():
            python.close()
        self.sessions.close()


def _connect_migrator(url: str, settings: RunSettings) -> psycopg.Connection:
    conn = connect(url, idle_in_transaction_ms=settings.idle_timeout_ms)
    try:
        refuse_pooler(conn, url)
    except Exception:
        conn.close()
        raise
    return conn


def migrate(url: str, root: Path, phase: PhaseChoice = "all",
            settings: RunSettings | None = None,
            log: Callable[[dict[str, object]], None] | None = None,
            graph: Graph | None = None) -> RunResult:
    """Load, plan, check and apply under the migrator lock. The one API behind the CLI, the
    Lambda handler and the tests. Raises `PlanError` (nothing applied; `.plan` has the
    anomalies) or `MigrationFailed` (earlier revisions stay applied and are in `.applied`, the
    failed one rolled back or left dirty, the lock released)."""
    settings = settings or RunSettings()
    log = log or json_log_to_stderr
    graph = graph or build_graph(root)
    conn = _connect_migrator(url, settings)
    schemas = [s.schema for s in graph.services]
    results: list[RevisionResult] = []
    try:
        with migrator_lock(conn, settings.lock_wait_seconds, settings.idle_timeout_ms):
            ledger.bootstrap(conn, graph.services)
            plan = make_plan(graph, ledger.read_state(conn, schemas, graph), phase)
            plan, prepared = preflight(graph, plan)
            for warning in plan.warnings:
                log({"event": "warning", "kind": warning.kind, "revision": warning.revision,
                     "message": warning.message})
            if plan.errors:
                raise PlanError("\n".join(a.message for a in plan.errors), plan)
            runner = Runner(conn, url, settings, log, prepared)
            last = {revision.service: index for index, revision in enumerate(plan.steps)}
            try:
                for index, revision in enumerate(plan.steps):
                    results.append(runner.apply(revision))
                    if last[revision.service] == index:
                        runner.release(revision.service)
            except MigrationFailed as err:
                err.applied = tuple(results)
                raise
            finally:
                runner.close()
            after = (make_plan(graph, ledger.read_state(conn, schemas, graph), phase) if results
                     else plan)
    finally:
        conn.close()
    return RunResult(plan=after, results=tuple(results))


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
    print(json.dumps(line, default=str), file=sys.stderr, flush=True)
