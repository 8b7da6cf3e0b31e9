"""The guard's linter: migration files → parsed statements → findings.

SQL is parsed with PostgreSQL's own parser (pglast / libpg_query), never with regular
expressions, so comments, string literals and function bodies are never mistaken for
statements. Each service's revisions are read in order so that a rule knows what earlier
revisions built (tables created in the same revision are "new"; validated CHECKs prove
NOT NULL); files that are not being linted are replayed for that state only.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path

from pglast import ast, parse_plpgsql, parser

from ..engine import load
from ..engine.discover import Service
from ..engine.errors import MigrationFileError, SvcmigError
from ..engine.interrupts import InterruptsHeld
from . import rules
from .backfills import (
    BACKFILLS_FOLDER,
    BackfillLinter,
    backfill_paths,
    is_backfill_path,
    unknown_backfill_findings,
)
from .effects import strong_locks
from .findings import Finding
from .parsing import (
    SUPPRESSION_RE,
    SqlSyntaxError,
    check_syntax,
    parse_statements,
    unchecked_nodes,
)
from .sqltree import RevisionContext, SchemaModel, Statement

EXAMPLE_SEPARATOR = "-- next revision"
PARALLEL_FILES = 500
"""By default, services are linted in parallel processes (one per CPU) from this many revision
files to read, linted or replayed: below it, starting the processes costs more than it saves."""
_MIGRATIONS_DIR = "migrations"


PLPGSQL_WRAPPER = ("CREATE FUNCTION svcmig_do_block() RETURNS void LANGUAGE plpgsql "
                   "AS {tag}{body}{tag}")


def do_block_statements(stmt: Statement, transactional: bool = True) -> list[Statement]:
    """The SQL a `DO` block runs at migration time (PL/pgSQL only: its statements, PERFORMs,
    loop queries, EXECUTEs of a constant string, nested DO blocks), parsed with PostgreSQL's
    PL/pgSQL parser (pglast `parse_plpgsql`) and placed at the block's line + their line in its
    body; the suppressions of the DO statement apply to them, and a statement inside a loop
    that does not COMMIT (or whose COMMIT cannot run: a transactional revision) is marked
    `repeated`; inside a loop, the block's variables are values. Raises SqlSyntaxError for a
    body that does not compile. Function bodies are not included: they run when called, not
    when created."""
    node = stmt.node
    if not isinstance(node, ast.DoStmt):
        return []
    options = {str(d.defname): str(d.arg.sval) for d in node.args or ()
               if isinstance(d, ast.DefElem) and isinstance(d.arg, ast.String)}
    body = options.get("as", "")
    if options.get("language", "plpgsql").lower() != "plpgsql" or not body:
        return []
    tag = "$svcmig$"
    while tag in body:
        tag = tag[:-1] + "x$"
    try:
        tree = parse_plpgsql(PLPGSQL_WRAPPER.format(tag=tag, body=body))
    except parser.ParseError as err:
        raise SqlSyntaxError(f"in the DO block: {err.args[0]}", stmt.line, stmt.column) from err
    found: list[Statement] = []
    variables = stmt.variables | frozenset(_plpgsql_variables(tree))
    for lineno, query, repeated, looped in _plpgsql_queries(tree, commits=not transactional):
        try:
            inner = parse_statements(query).statements
        except SqlSyntaxError:
            continue  # PL/pgSQL accepted it (variables, INTO): nothing a rule could read
        for item in inner:
            placed = Statement(item.node, stmt.line + max(lineno - 1, 0), stmt.column,
                               dict(stmt.suppressions), repeated=repeated or stmt.repeated,
                               variables=variables if looped else stmt.variables)
            found.append(placed)
            found.extend(do_block_statements(placed, transactional))  # a DO inside the DO
    return found


def _plpgsql_variables(tree: object) -> Iterator[str]:
    """The names a PL/pgSQL function declares (its datums: variables, records, `found`)."""
    for function in tree if isinstance(tree, list) else [tree]:
        datums = function.get("PLpgSQL_function", {}).get("datums", []) if isinstance(
            function, dict) else []
        for datum in datums:
            for value in datum.values():
                if isinstance(value, dict) and value.get("refname"):
                    yield str(value["refname"])


# PL/pgSQL statements whose body runs again and again (plpgsql's node names).
_LOOPS = frozenset({"PLpgSQL_stmt_loop", "PLpgSQL_stmt_while", "PLpgSQL_stmt_fori",
                    "PLpgSQL_stmt_fors", "PLpgSQL_stmt_forc", "PLpgSQL_stmt_foreach_a",
                    "PLpgSQL_stmt_dynfors"})


def _plpgsql_queries(tree: object, lineno: int = 1, repeated: bool = False,
                     looped: bool = False, commits: bool = True
                     ) -> Iterator[tuple[int, str, bool, bool]]:
    """(line in the body, SQL, inside a loop that does not commit, inside a loop) of each
    statement a PL/pgSQL tree executes; an expression (an assignment, a condition) as the
    SELECT that evaluates it. `commits`: whether a COMMIT in the block can run."""
    if isinstance(tree, list):
        for item in tree:
            yield from _plpgsql_queries(item, lineno, repeated, looped, commits)
        return
    if not isinstance(tree, dict):
        return
    for kind, value in tree.items():
        if not isinstance(value, dict):
            yield from _plpgsql_queries(value, lineno, repeated, looped, commits)
            continue
        line = int(value.get("lineno", lineno) or lineno)
        if kind == "PLpgSQL_expr":
            query = str(value.get("query", ""))
            if value.get("parseMode") == 0:
                yield line, query, repeated, looped
            elif query:  # an expression; an assignment is `target := expression`
                yield line, "SELECT " + query.split(":=", 1)[-1], repeated, looped
            continue
        if kind == "PLpgSQL_stmt_dynexecute":
            text = _constant_string(str(value.get("query", {}).get("PLpgSQL_expr", {})
                                        .get("query", "")))
            if text is not None:
                yield line, text, repeated, looped
            continue
        loop = kind in _LOOPS
        committing = commits and "PLpgSQL_stmt_commit" in json.dumps(value)
        yield from _plpgsql_queries(value, line, repeated or (loop and not committing),
                                    looped or loop, commits)


def _ends_transaction(stmt: Statement) -> bool:
    """A DO block (PL/pgSQL) with COMMIT or ROLLBACK in it."""
    if not isinstance(stmt.node, ast.DoStmt):
        return False
    body = " ".join(str(d.arg.sval) for d in stmt.node.args or ()
                    if isinstance(d, ast.DefElem) and d.defname == "as"
                    and isinstance(d.arg, ast.String)).upper()
    return any(word in body for word in ("COMMIT", "ROLLBACK")) and any(
        token.name in ("COMMIT", "ROLLBACK") for token in parser.scan(body))


def _constant_string(expression: str) -> str | None:
    """The text of a constant string expression ('…', E'…', $q$…$q$), or None."""
    try:
        [item] = parser.parse_sql(f"SELECT {expression}")
    except (parser.ParseError, ValueError):
        return None
    select = item.stmt
    targets = select.targetList if isinstance(select, ast.SelectStmt) else None
    if targets and len(targets) == 1 and isinstance(targets[0], ast.ResTarget):
        value = targets[0].val
        if isinstance(value, ast.A_Const) and isinstance(value.val, ast.String):
            return str(value.val.sval)
    return None


def lint_statements(statements: Sequence[Statement], ctx: RevisionContext,
                    path: Path) -> list[Finding]:
    """Run every SQL rule on each statement (and on what each DO block runs), then record what
    the statement builds."""
    findings: list[Finding] = []
    expanded: list[Statement] = []
    for stmt in statements:
        expanded.append(stmt)
        if ctx.transactional and _ends_transaction(stmt):
            findings.append(Finding(path, stmt.line, stmt.column, rules.REFUSED_BY_RUNNER,
                                    "COMMIT or ROLLBACK inside a DO block fails in a "
                                    "transactional revision (invalid transaction termination);"
                                    " mark the revision '-- migrate:no-transaction'"))
        try:
            expanded.extend(do_block_statements(stmt, ctx.transactional))
        except SqlSyntaxError as err:
            findings.append(Finding(path, err.line, err.column, rules.PARSE_ERROR,
                                    f"PL/pgSQL syntax error {err.message}"))
    for stmt in expanded:
        for rule in rules.for_node(stmt.node):
            if rule.name in stmt.suppressions:
                continue
            findings.extend(Finding(path, stmt.line, stmt.column, rule, message)
                            for message in rule.check(stmt, ctx))
        if ctx.transactional:
            for lock in strong_locks(stmt, ctx):
                ctx.held.setdefault(lock.table, (lock.mode, lock.what, stmt.line))
        ctx.record(stmt.node)
    return findings


def lint_sql_text(text: str, ctx: RevisionContext, path: Path) -> list[Finding]:
    """Lint a whole SQL revision file (header directives, up/down sections) in `ctx`."""
    try:
        source = load.parse_sql_source(text, path)
    except MigrationFileError as err:
        return [Finding(path, err.line or 1, 1, rules.PARSE_ERROR, err.message)]
    ctx.transactional, ctx.phase = source.transactional, source.phase
    findings: list[Finding] = unknown_backfill_findings(source.requires_backfill, path)
    try:
        parsed = parse_statements(source.up, source.up_line)
        if source.down is not None and source.down_line is not None:
            check_syntax(source.down, source.down_line)
    except SqlSyntaxError as err:
        return [Finding(path, err.line, err.column, rules.PARSE_ERROR,
                        f"SQL syntax error: {err.message}")]
    if any(isinstance(stmt.node, RUNNER_CHECKED) for stmt in parsed.statements):
        refused = _refused_by_runner(source.up, source.up_line, source.transactional, path)
        if refused is not None:
            findings.append(refused)
    findings.extend(Finding(path, line, column, rules.INVALID_SUPPRESSION, message)
                    for line, column, message in parsed.bad_suppressions)
    findings.extend(lint_statements(parsed.statements, ctx, path))
    acknowledged = any(rules.MISSING_DOWN.name in s.suppressions for s in parsed.statements)
    if source.down is None and source.irreversible is None and not acknowledged:
        findings.append(Finding(path, 1, 1, rules.MISSING_DOWN,
                                "no down section (nor `-- irreversible: <why>`): `alembic "
                                "downgrade` and `svcmig check` cannot undo it"))
    return findings


# The statement kinds whose refusal by the runner no guard rule reports (transaction control,
# RESET ALL, svcmig's settings, ALTER ROLE, COPY): only a file with one of them is parsed again
# for the runner's own check.
RUNNER_CHECKED = (ast.TransactionStmt, ast.VariableSetStmt, ast.AlterRoleStmt,
                  ast.AlterRoleSetStmt, ast.CopyStmt)
# Refusals that guard rules report themselves (concurrently-in-transaction, session-override).
COVERED_REFUSALS = ("cannot run inside a transaction block", "SET ROLE", "SESSION AUTHORIZATION",
                    "changing ", "set_config(")


def _refused_by_runner(sql: str, first_line: int, transactional: bool,
                       path: Path) -> Finding | None:
    """What the runner refuses before running anything (transaction control, RESET ALL, a
    pinned setting, COPY FROM STDIN, …: `engine.statements.check_statements`), as the lint
    finding the file would meet at deploy time."""
    from ..engine.statements import check_statements, split_statements

    try:
        check_statements(split_statements(sql, first_line, path), transactional, path)
    except MigrationFileError as err:
        if any(part in err.message for part in COVERED_REFUSALS):
            return None  # a guard rule says it, with its hint
        return Finding(path, err.line or 1, 1, rules.REFUSED_BY_RUNNER, err.message)
    return None


def replay_sql_text(text: str, ctx: RevisionContext, path: Path) -> None:
    """Record what an already-linted revision builds, for the rules of later revisions."""
    try:
        source = load.parse_sql_source(text, path)
        statements = parse_statements(source.up, source.up_line).statements
    except (MigrationFileError, SqlSyntaxError):
        return
    for stmt in statements:
        ctx.record(stmt.node)


def lint_python_text(text: str, ctx: RevisionContext, path: Path, *, replay: bool = False,
                     ) -> list[Finding]:
    """Render a Python revision's upgrade() to SQL with Alembic and lint that SQL; findings
    point at `def upgrade`. `# svcmig:ignore <rule> <reason>` anywhere in the file applies to
    the whole revision."""
    # Imports Alembic and SQLAlchemy: only when a Python revision is linted.
    from .render import render_upgrade

    try:
        header = load.read_python_header(text, path)
        sql, line = render_upgrade(text, path)
        statements = parse_statements(sql).statements
    except MigrationFileError as err:
        return [] if replay else [Finding(path, err.line or 1, 1, rules.PARSE_ERROR, err.message)]
    except SqlSyntaxError as err:
        return [] if replay else [Finding(path, 1, 1, rules.PARSE_ERROR,
                                          f"upgrade() renders invalid SQL: {err.message}")]
    if replay:
        for stmt in statements:
            ctx.record(stmt.node)
        return []
    ctx.transactional = bool(header.get("transactional", True))
    ctx.phase = str(header.get("phase", "expand"))
    required = header.get("requires_backfill") or ()
    findings: list[Finding] = unknown_backfill_findings(
        (required,) if isinstance(required, str) else tuple(map(str, required)),  # type: ignore[call-overload]
        path)
    suppressions: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        match = SUPPRESSION_RE.match(raw.strip())
        if not match:
            continue
        if match["rule"] in rules.BY_NAME and match["reason"]:
            suppressions[match["rule"]] = match["reason"]
        else:
            findings.append(Finding(path, number, 1, rules.INVALID_SUPPRESSION,
                                    "svcmig:ignore needs a known rule and a reason"))
    for stmt in statements:
        stmt.line, stmt.column = line, 1
        stmt.suppressions.update(suppressions)
    findings.extend(lint_statements(statements, ctx, path))
    if (not header["_has_downgrade"] and not header.get("irreversible")
            and "missing-down" not in suppressions):
        findings.append(Finding(path, 1, 1, rules.MISSING_DOWN,
                                "downgrade() is empty: `alembic downgrade` and `svcmig check` "
                                "cannot undo it"))
    return findings


@dataclass
class Linter:
    """Lints migration files of one project; knows its services to resolve schemas."""

    services: Sequence[Service]
    pg_version: int = 16
    workers: int | None = None
    """Processes that lint services in parallel (at most one per service); 1: this process
    only, no pool; None: one per CPU once there are PARALLEL_FILES files to read."""

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be 1 or more, not {self.workers}")

    @functools.cached_property
    def service_names(self) -> frozenset[str]:
        return frozenset(service.name for service in self.services)

    def context(self, path: Path, service: str, model: SchemaModel | None = None,
                ) -> RevisionContext:
        return RevisionContext(path=path, service=service, services=self.service_names,
                               pg_version=self.pg_version, model=model or SchemaModel())

    def lint_paths(self, paths: Iterable[Path]) -> list[Finding]:
        """Lint `paths` (revision and backfill files); each service's earlier revisions are
        replayed. Services are independent (each one's history builds its own schema model),
        so with more than one they may be linted in parallel processes (`workers`); the
        findings are the same, in the same order, either way."""
        by_folder: dict[Path, set[str]] = {}
        for path in paths:  # by resolved folder: resolving each file costs several stat calls
            by_folder.setdefault(_resolve_folder(path.parent), set()).add(path.name)
        backfills: set[Path] = set()
        for folder, names in by_folder.items():
            if folder.name == BACKFILLS_FOLDER:  # the only folder is_backfill_path accepts
                found = {folder / name for name in names if is_backfill_path(folder / name)}
                backfills |= found
                names -= {path.name for path in found}
        jobs: list[_Job] = []
        placed: set[Path] = set()
        for service in self.services:
            folder = _resolve_folder(service.migrations_dir)
            if by_folder.get(folder):
                jobs.append(_Job(service, frozenset(by_folder[folder])))
                placed.add(folder)
        strays = sorted(folder / name for folder, names in by_folder.items()
                        if folder not in placed for name in names)
        findings: list[Finding] = []
        processes = self._processes(jobs)
        if processes > 1:
            for service_findings in self._lint_in_processes(jobs, processes):
                findings.extend(service_findings)
        else:
            for job in jobs:
                findings.extend(self._lint_service(job.service, job.names))
        for path in strays:
            findings.extend(self._lint_stray(path))
        findings.extend(self._lint_backfills(backfills))
        return sorted(findings, key=Finding.sort_key)

    def _processes(self, jobs: Sequence[_Job]) -> int:
        """How many processes lint `jobs`: `workers` (capped by the number of services), or by
        default one per CPU once there are PARALLEL_FILES revision files to read (linted or
        replayed); 1 (this process, no pool) for a single service."""
        if len(jobs) < 2:
            return 1
        if self.workers is not None:
            return min(self.workers, len(jobs))
        cpus = default_jobs()
        if cpus < 2:
            return 1
        if sum(len(job.names) for job in jobs) < PARALLEL_FILES and sum(
                job.files_to_read for job in jobs) < PARALLEL_FILES:
            return 1
        return min(cpus, len(jobs))

    def _lint_in_processes(self, jobs: Sequence[_Job], processes: int,
                           ) -> list[list[Finding]]:
        """Each job's findings, in the order of `jobs`, linted by a pool of `processes`. The
        biggest services are started first, so that none is left to run alone at the end. A
        svcmig error in a worker is raised here as it was raised there (the first in the order
        of `jobs`, as the serial path would meet it), without the worker's traceback."""
        sizes = [job.files_to_read for job in jobs]
        pool = ProcessPoolExecutor(max_workers=processes, mp_context=_pool_context(),
                                   initializer=_start_worker, initargs=(self, tuple(jobs)))
        # SIGTERM to this process alone ends the run as Ctrl-C does: the workers go with it
        # (they ignore signals meant for the run; left alone they outlived it, holding its
        # output open)
        on_term = signal.signal(signal.SIGTERM, signal.default_int_handler) \
            if threading.current_thread() is threading.main_thread() else None
        try:
            futures: dict[int, Future[list[Finding] | _WorkerError]] = {
                index: pool.submit(_lint_job, index)
                for index in sorted(range(len(jobs)), key=lambda i: -sizes[i])}
            results: list[list[Finding]] = []
            for index in range(len(jobs)):
                outcome = futures[index].result()
                if isinstance(outcome, _WorkerError):
                    raise outcome.error()
                results.append(outcome)
        except BaseException as err:  # Ctrl-C included: the services not started never are
            while True:  # nor are those running waited for (a second Ctrl-C hung)
                try:  # a second Ctrl-C on its way may be raised before the hold begins
                    with InterruptsHeld():
                        _stop_workers(pool)
                        pool.shutdown(wait=False, cancel_futures=True)
                    break
                except KeyboardInterrupt:
                    continue
            if isinstance(err, BrokenProcessPool):
                raise SvcmigError(
                    "a lint process ended abruptly, so nothing is reported: it was killed or ran "
                    "out of memory, or a Python revision ended its process (os._exit, a signal "
                    "to itself); find that revision and change it, then lint again"
                ) from None
            raise
        finally:
            if on_term is not None:
                signal.signal(signal.SIGTERM, on_term)
        pool.shutdown()
        return results

    def _lint_backfills(self, paths: set[Path]) -> list[Finding]:
        """Backfill files: loaded as the runner loads them, their statement linted
        (guard.backfills)."""
        if not paths:
            return []
        folders = {_resolve_folder(s.folder / BACKFILLS_FOLDER): s for s in self.services}
        siblings: dict[Path, list[Path]] = {}
        linter = BackfillLinter(self.service_names)
        findings: list[Finding] = []
        with unchecked_nodes():
            for path in sorted(paths):
                service = folders.get(path.parent)
                if service is not None and path.parent not in siblings:
                    siblings[path.parent] = backfill_paths(service)
                findings.extend(linter.lint(path, service, siblings.get(path.parent, [])))
        return findings

    def _lint_service(self, service: Service, chosen: frozenset[str]) -> list[Finding]:
        """Lint the files of the service's migrations folder named in `chosen` (names compare
        faster than paths), replaying the ones before them."""
        with unchecked_nodes():
            return self._lint_service_files(service, chosen)

    def _lint_service_files(self, service: Service, chosen: frozenset[str]) -> list[Finding]:
        findings: list[Finding] = []
        folder = _resolve(service.migrations_dir)
        files = sorted((folder / p.name for p in folder.iterdir() if is_revision_file(p)),
                       key=lambda p: p.name)
        last = max(chosen)
        model = SchemaModel()
        for path in files:
            if path.name > last:
                break
            linted = path.name in chosen
            name_ok = self._check_name(path, service.name, findings if linted else [])
            ctx = self.context(path, service.name, model)
            text = _read(path, findings if linted else [])
            if text is None:
                continue
            if linted:
                if path.suffix == ".py":
                    findings.extend(lint_python_text(text, ctx, path))
                else:
                    findings.extend(lint_sql_text(text, ctx, path))
            elif name_ok:
                if path.suffix == ".py":
                    lint_python_text(text, ctx, path, replay=True)
                else:
                    replay_sql_text(text, ctx, path)
        # the selected files, as the paths they were given as: under the resolved folder
        selected = ({path for path in files if path.name in chosen}
                    if folder == _resolve_folder(service.migrations_dir) else set())
        findings.extend(check_one_head(files, selected))
        return findings

    def _check_name(self, path: Path, service: str, findings: list[Finding]) -> bool:
        try:
            name = load.parse_filename(path)
        except MigrationFileError as err:
            findings.append(Finding(path, 1, 1, rules.FILENAME_CONVENTION, err.message))
            return False
        if name.service != service:
            findings.append(Finding(
                path, 1, 1, rules.WRONG_SERVICE_FOLDER,
                f"file names service {name.service!r} but lives in services/{service}/; move it "
                f"to services/{name.service}/migrations/"))
            return False
        return True

    def _lint_stray(self, path: Path) -> list[Finding]:
        """A file outside every services/<name>/migrations/ folder: report, then lint its SQL
        as the service its name gives."""
        findings: list[Finding] = []
        try:
            service = load.parse_filename(path).service
        except MigrationFileError as err:
            return [Finding(path, 1, 1, rules.FILENAME_CONVENTION, err.message)]
        findings.append(Finding(
            path, 1, 1, rules.WRONG_SERVICE_FOLDER,
            f"not in a services/<name>/migrations/ folder; move it to "
            f"services/{service}/migrations/"))
        text = _read(path, findings)
        if text is not None:
            ctx = self.context(path, service)
            lint = lint_python_text if path.suffix == ".py" else lint_sql_text
            findings.extend(lint(text, ctx, path))
        return findings


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers now (SIGKILL): they ignore Ctrl-C, and waiting for the services
    they are linting kept an interrupted run alive for as long as those took (for ever, after a
    second Ctrl-C, in the interpreter's exit handler); a revision may have made its worker
    ignore SIGTERM too. `kill_workers` is Python 3.14's; before, the pool's own table of its
    processes."""
    kill = getattr(pool, "kill_workers", None)
    if kill is not None:
        kill()
        return
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()


def default_jobs() -> int:
    """Processes a parallel lint uses by default: one per CPU this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class _Job:
    """One service's share of a lint run: the names of its files to lint."""

    service: Service
    names: frozenset[str]

    @functools.cached_property
    def files_to_read(self) -> int:
        """Entries of the migrations folder up to the last one linted (the earlier ones are
        replayed): the job's size, listed once (the default's choice and the pool's order both
        ask)."""
        last = max(self.names)
        try:
            return sum(name <= last for name in os.listdir(self.service.migrations_dir))
        except OSError:
            return len(self.names)


def _pool_context() -> BaseContext:
    """fork on Linux when this process runs one thread (the CLI does): the workers start at
    once, with the rules and pglast already imported. Otherwise the platform's default
    (forkserver or spawn), which imports this module in each worker."""
    if sys.platform == "linux" and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


# In a worker process: the linter and the jobs of the run, set once when the worker starts
# (never pickled under fork); tasks name a job by its index.
_worker: tuple[Linter, tuple[_Job, ...]] | None = None


def _start_worker(linter: Linter, jobs: tuple[_Job, ...]) -> None:
    global _worker
    # Ctrl-C reaches the whole process group: the parent stops the run, reports it once and
    # terminates the workers, which print no traceback of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's way of stopping it, at once
    _worker = (linter, jobs)


def _lint_job(index: int) -> list[Finding] | _WorkerError:
    assert _worker is not None, "called outside a lint worker"
    linter, jobs = _worker
    job = jobs[index]
    try:
        return linter._lint_service(job.service, job.names)
    except SvcmigError as err:
        return _WorkerError.of(err)


@dataclass(frozen=True)
class _WorkerError:
    """A svcmig error raised in a worker, on its way back to the parent process: its class,
    args and attributes. (Pickling the error itself would rebuild it by calling its class with
    its args, which an error with its own __init__, like MigrationFileError, does not take.)"""

    kind: type[SvcmigError]
    args: tuple[object, ...]
    state: dict[str, object]

    @classmethod
    def of(cls, err: SvcmigError) -> _WorkerError:
        failure = cls(type(err), err.args, dict(vars(err)))
        try:
            pickle.dumps(failure)
        except Exception:  # an attribute (or the class) does not pickle: the message does
            failure = cls(SvcmigError, (str(err),), {})
        return failure

    def error(self) -> SvcmigError:
        """The error as the worker raised it: same class, same message, same attributes."""
        err = self.kind.__new__(self.kind)
        err.args = self.args
        err.__dict__.update(self.state)
        return err


@functools.cache
def _resolve_folder(folder: Path) -> Path:
    return folder.resolve()


def _resolve(path: Path) -> Path:
    """`path.resolve()`, with the folder's resolution cached: resolving costs several stat
    calls, and a 10,000-file run has only a few folders."""
    return _resolve_folder(path.parent) / path.name


def is_revision_file(path: Path) -> bool:
    """Entries of a migrations folder that must be revisions: what the loader does not skip
    (engine.load.revision_files), so a folder or a broken link the runner refuses is reported
    here too instead of passing the guard unseen."""
    return not load.not_a_revision(path.name)


def _read(path: Path, findings: list[Finding]) -> str | None:
    if not path.is_file():  # never read a pipe: it would hang
        findings.append(Finding(path, 1, 1, rules.PARSE_ERROR,
                                "not a regular file (a folder, a broken link, a pipe): the "
                                "runner refuses it; remove it or make it a revision file"))
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        findings.append(Finding(path, 1, 1, rules.PARSE_ERROR, f"cannot read as UTF-8: {err}"))
        return None


def check_one_head(files: Sequence[Path], selected: set[Path]) -> list[Finding]:
    """One root, one head, no duplicate ids and no unknown parents in a service's history.
    Reported only on selected files, so linting a change does not report old history."""
    parents: dict[str, str | None] = {}
    where: dict[str, Path] = {}
    findings: list[Finding] = []
    previous: str | None = None
    for path in files:
        try:
            name = load.parse_filename(path)
        except MigrationFileError:
            continue
        rev = name.revision_id
        parent = previous
        if name.kind == "python":
            try:
                header = load.read_python_header(path.read_text(encoding="utf-8"), path)
            except (MigrationFileError, OSError, UnicodeDecodeError):
                continue
            declared = header.get("down_revision")
            parent = declared if isinstance(declared, str) else None
        if rev in where and path in selected:
            findings.append(Finding(path, 1, 1, rules.ONE_HEAD,
                                    f"revision id {rev} is also {where[rev].name}: "
                                    "two revisions of a service in the same minute"))
        where[rev], parents[rev], previous = path, parent, rev
    for rev, parent in parents.items():
        if parent is not None and parent not in parents and where[rev] in selected:
            findings.append(Finding(where[rev], 1, 1, rules.ONE_HEAD,
                                    f"down_revision {parent!r} is not a revision of this service"))
    heads = sorted(set(parents) - {p for p in parents.values() if p})
    if len(heads) > 1:
        newest = max(where[h] for h in heads)
        if newest in selected or any(where[h] in selected for h in heads):
            findings.append(Finding(newest, 1, 1, rules.ONE_HEAD,
                                    f"the service has {len(heads)} heads: {', '.join(heads)}"))
    return findings


def lint_example(sql: str, service: str = "users",
                 services: Iterable[str] = ("users", "orders"),
                 pg_version: int = 16) -> list[Finding]:
    """Lint a rule example: revisions of `service` separated by `-- next revision` lines.
    Findings of every part are returned, in order, without missing-down warnings."""
    model = SchemaModel()
    findings: list[Finding] = []
    with unchecked_nodes():
        for index, part in enumerate(sql.split(f"\n{EXAMPLE_SEPARATOR}\n")):
            path = Path(f"example-{index + 1}.sql")
            ctx = RevisionContext(path=path, service=service, services=frozenset(services),
                                  pg_version=pg_version, model=model)
            findings.extend(f for f in lint_sql_text(part, ctx, path)
                            if f.rule is not rules.MISSING_DOWN)
    return findings
