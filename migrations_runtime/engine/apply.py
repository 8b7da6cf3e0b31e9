"""Step 5 of the flow: apply a plan to one database, under the migrator lock.

Per revision: its own transaction, `lock_timeout` with bounded retries and backoff on SQLSTATE
55P03, the service's role and search_path, the ledger row and Alembic's version row written in
the same transaction. A non-transactional revision runs in autocommit and keeps its ledger row
`dirty` until it has finished, so a crash halfway is visible on the next run.
"""

from __future__ import annotations

import importlib.util
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from . import ledger
from .database import connect
from .errors import MigrationFailed, MigrationFileError, PlanError
from .load import Revision, checksum
from .lock import migrator_lock
from .plan import PhaseChoice, Plan, make_plan
from .report import RevisionResult, RunResult, json_log
from .statements import (
    DEFAULT_LOCK_TIMEOUT_MS,
    Statement,
    enter_service_sql,
    leave_service_sql,
    revision_statements,
    service_of,
)
from .validate import Graph, build_graph


@dataclass(frozen=True)
class RunSettings:
    lock_wait_seconds: float = 60.0
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
    lock_retries: int = 4
    backoff_seconds: float = 0.5


class PythonRevisions:
    """Runs Python revisions through Alembic's `op` on the runner's own connection. SQLAlchemy
    and Alembic are imported only when the first Python revision runs."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._raw = conn
        self._connection: Any = None

    def prepare(self) -> None:
        """Bind SQLAlchemy to the raw connection while it is idle (its first connect rolls back)."""
        if self._connection is None:
            from sqlalchemy import create_engine
            from sqlalchemy.pool import StaticPool

            engine = create_engine("postgresql+psycopg://", creator=lambda: self._raw,
                                   poolclass=StaticPool, pool_reset_on_return=None)
            self._connection = engine.connect()

    def run(self, revision: Revision, upgrade: bool) -> None:
        from alembic.operations import Operations
        from alembic.runtime.migration import MigrationContext

        module = _import_revision(revision)
        context = MigrationContext.configure(connection=self._connection)
        with Operations.context(context):
            (module.upgrade if upgrade else module.downgrade)()

    def close(self) -> None:
        if self._connection is not None and not self._raw.closed:
            self._connection.close()


def _import_revision(revision: Revision) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"svcmig_revision_{revision.id}", revision.path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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


class Runner:
    """Applies revisions on one direct connection that holds the migrator lock."""

    def __init__(self, conn: psycopg.Connection, settings: RunSettings,
                 log: Callable[[dict[str, object]], None]) -> None:
        self.conn = conn
        self.settings = settings
        self.log = log
        self.python = PythonRevisions(conn)

    def _execute(self, revision: Revision, upgrade: bool,
                 statements: list[Statement] | None) -> None:
        if statements is None:
            self.python.run(revision, upgrade)
            return
        for statement in statements:
            try:
                self.conn.execute(statement.sql)
            except psycopg.Error as err:
                position = err.diag.statement_position
                extra = statement.sql[: int(position) - 1].count("\n") if position else 0
                err.add_note(f"svcmig-line:{statement.line + extra}")
                raise

    @contextmanager
    def _failure_as(self, revision: Revision) -> Iterator[None]:
        """Turn a database or Python error into `MigrationFailed` naming the file and line."""
        try:
            yield
        except MigrationFailed:
            raise
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
        """A SQL revision's statements (parsed before anything runs), or None for Python."""
        try:
            if checksum(revision.path.read_text(encoding="utf-8")) != revision.checksum:
                raise MigrationFileError(revision.path, "the file changed after it was planned "
                                         "(or since the manifest was built); run again")
            if revision.kind == "python":
                self.python.prepare()
                return None
            return revision_statements(revision, upgrade)
        except MigrationFileError as err:
            raise MigrationFailed(revision.id, revision.path, err.message, err.line) from err
        except OSError as err:
            raise MigrationFailed(revision.id, revision.path, f"cannot read the file: {err}",
                                  None) from err

    def _write_ledger(self, revision: Revision, upgrade: bool, duration_ms: int) -> None:
        own_parent = revision.down_revision
        if upgrade:
            ledger.record(self.conn, revision, "applied", duration_ms)
            ledger.move_version(self.conn, own_parent, revision.id)
        else:
            ledger.forget(self.conn, revision.id)
            ledger.move_version(self.conn, revision.id, own_parent)

    def _apply_transactional(self, revision: Revision, upgrade: bool,
                             statements: list[Statement] | None) -> None:
        service = service_of(revision)
        for attempt in range(self.settings.lock_retries + 1):
            started = time.monotonic()
            self.conn.autocommit = False
            try:
                with self._failure_as(revision):
                    self.conn.execute(
                        "; ".join(enter_service_sql(service, True, self.settings.lock_timeout_ms)))
                    self._execute(revision, upgrade, statements)
                    self.conn.execute("; ".join(leave_service_sql()))
                    self._write_ledger(revision, upgrade, int((time.monotonic() - started) * 1000))
                    self.conn.commit()
                return
            except MigrationFailed as err:
                self.conn.rollback()
                timed_out = isinstance(err.__cause__, pg_errors.LockNotAvailable)
                if not timed_out or attempt == self.settings.lock_retries:
                    if timed_out:
                        err.message += (f" after {attempt + 1} attempts with lock_timeout "
                                        f"{self.settings.lock_timeout_ms}ms: a long transaction "
                                        "holds a lock on the table; find it in pg_stat_activity")
                        err.args = (f"{err.path}: revision {err.revision} failed: {err.message}",)
                    raise
                self.log({"event": "lock_timeout_retry", "revision": revision.id,
                          "attempt": attempt + 1})
                time.sleep(self.settings.backoff_seconds * (2 ** attempt))
            finally:
                self.conn.autocommit = True

    def _apply_autocommit(self, revision: Revision, upgrade: bool,
                          statements: list[Statement] | None) -> None:
        """CREATE INDEX CONCURRENTLY and friends: no transaction, so mark the ledger row dirty
        first and clean only after every statement succeeded."""
        service = service_of(revision)
        started = time.monotonic()
        if upgrade:
            ledger.record(self.conn, revision, "dirty", None)
        with self._failure_as(revision):
            self.conn.execute(
                "; ".join(enter_service_sql(service, False, self.settings.lock_timeout_ms)))
            try:
                self._execute(revision, upgrade, statements)
            finally:
                self.conn.execute("; ".join(leave_service_sql()))
            with self.conn.transaction():
                self._write_ledger(revision, upgrade, int((time.monotonic() - started) * 1000))

    def close(self) -> None:
        self.python.close()


def migrate(url: str, root: Path, phase: PhaseChoice = "all",
            settings: RunSettings | None = None,
            log: Callable[[dict[str, object]], None] | None = None,
            graph: Graph | None = None) -> RunResult:
    """Load, plan and apply under the migrator lock. The one API behind the CLI, the Lambda
    handler and the tests. Raises `PlanError` (nothing applied) or `MigrationFailed` (earlier
    revisions stay applied, the failed one rolled back, the lock released)."""
    settings = settings or RunSettings()
    log = log or json_log_to_stderr
    graph = graph or build_graph(root)
    conn = connect(url)
    results: list[RevisionResult] = []
    try:
        with migrator_lock(conn, settings.lock_wait_seconds):
            ledger.bootstrap(conn, graph.services)
            plan = make_plan(graph, ledger.read_state(conn), phase)
            for warning in plan.warnings:
                log({"event": "warning", "kind": warning.kind, "revision": warning.revision,
                     "message": warning.message})
            if plan.errors:
                raise PlanError("\n".join(a.message for a in plan.errors))
            runner = Runner(conn, settings, log)
            try:
                for revision in plan.steps:
                    results.append(runner.apply(revision))
            finally:
                runner.close()
            after = make_plan(graph, ledger.read_state(conn), phase) if results else plan
    finally:
        conn.close()
    return RunResult(plan=after, results=tuple(results))


def read_plan(url: str, root: Path, phase: PhaseChoice = "all",
              graph: Graph | None = None) -> Plan:
    """The plan without applying it (no lock needed: reading is harmless)."""
    graph = graph or build_graph(root)
    conn = connect(url)
    try:
        return make_plan(graph, ledger.read_state(conn), phase)
    finally:
        conn.close()


def json_log_to_stderr(line: dict[str, object]) -> None:
    import json
    import sys

    print(json.dumps(line, default=str), file=sys.stderr, flush=True)
