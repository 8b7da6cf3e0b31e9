"""`svcmig lint --trace` (and `svcmig check --trace`): run the revisions being linted on a
throwaway Postgres and report what they did, statement by statement, not what their text
suggests.

For each linted revision, in the runner's order: the real runner (`apply.migrate`) brings the
throwaway database to the state just before it; then the revision runs in one transaction as
the runner would run it (its service's owner role, `search_path = <schema>`) with
`enable_seqscan = off` (so a sequential scan means no index could bound the rows), and after
every statement the tracer reads, for relations that existed before the revision: the
transaction's locks (`pg_locks`), each relation's `relfilenode` (changed: rewritten), index
builds on them (`pg_index`), and scans and row changes (`pg_stat_xact_user_tables`). The
transaction is rolled back; the runner applies the revision for real before the next one.

Findings (guard rules `traced-*`, at the statement's file:line):
- `traced-rewrite`: a pre-existing table or index was rewritten;
- `traced-lock-held-during-work`: a strong lock (SHARE or above) taken by an earlier statement
  of a transactional revision was still held while this one rewrote, scanned, built an index
  or changed rows of a pre-existing table;
- `traced-unbounded-scan`: a data change or locking read scanned a pre-existing table
  sequentially although sequential scans were off: no key bounds its rows;
- `traced-error`: the revision failed on the empty schema (its later statements not traced).

Limits: tables are empty (row counts are not observed; plans come from `enable_seqscan = off`,
not from data); statements that cannot run in a transaction block (`CONCURRENTLY`, VACUUM)
are not executed by the tracer (they are what the non-blocking advice leads to); a
non-transactional revision is traced in one transaction too, without held-lock findings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ..dev.embedded import embedded_url
from ..engine import ledger, load
from ..engine.apply import migrate
from ..engine.backfill_runner import record_waived
from ..engine.database import connect
from ..engine.errors import MigrationFileError, SvcmigError
from ..engine.load import Revision
from ..engine.lock import migrator_lock
from ..engine.statements import (
    Statement,
    quote_ident,
    revision_statements,
    service_of,
    split_statements,
)
from ..engine.validate import Graph, build_graph, parents, topological_order
from ..guard import rules
from ..guard.findings import Finding
from ..guard.parsing import SUPPRESSION_RE, SqlSyntaxError, parse_statements
from .check import throwaway_database

STRONG = {"ShareLock": "SHARE", "ShareRowExclusiveLock": "SHARE ROW EXCLUSIVE",
          "ExclusiveLock": "EXCLUSIVE", "AccessExclusiveLock": "ACCESS EXCLUSIVE"}
DATA_KINDS = frozenset({"UpdateStmt", "DeleteStmt", "MergeStmt", "InsertStmt", "DoStmt",
                        "CallStmt"})
# Statements PostgreSQL refuses inside a transaction block: not executed by the tracer.
OUTSIDE_TRANSACTION = frozenset({"VacuumStmt"})


def _outside_transaction(statement: Statement) -> bool:
    """VACUUM, and anything CONCURRENTLY (read from the parse tree, not the text)."""
    tree = json.dumps(statement.node or {})
    return statement.kind in OUTSIDE_TRANSACTION or '"concurrent": true' in tree or \
        '"defname": "concurrently"' in tree


def _data_change(statement: Statement) -> bool:
    """A data change, a locking read, or code that may do either (DO, CALL)."""
    node = statement.node or {}
    return statement.kind in DATA_KINDS or (statement.kind == "SelectStmt"
                                            and bool(node.get("lockingClause")))

RELATIONS_SQL = """
SELECT c.oid, n.nspname || '.' || c.relname, c.relkind::text, c.relfilenode
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm', 'i', 'I', 't')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'svcmig', 'pg_toast')
  AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'"""
LOCKS_SQL = """
SELECT relation::bigint, mode FROM pg_locks
WHERE pid = pg_backend_pid() AND locktype = 'relation' AND granted AND relation = ANY(%s)"""
FILENODES_SQL = "SELECT oid, relfilenode FROM pg_class WHERE oid = ANY(%s)"
STATS_SQL = """
SELECT relid, seq_scan, coalesce(idx_scan, 0), n_tup_ins + n_tup_upd + n_tup_del
FROM pg_stat_xact_user_tables WHERE relid = ANY(%s)"""
NEW_INDEXES_SQL = """
SELECT count(*) FROM pg_index WHERE indrelid = ANY(%s) AND NOT (indexrelid = ANY(%s))"""


@dataclass
class TraceResult:
    """Findings, and what the trace cost (for docs/benchmarks.md)."""

    findings: list[Finding] = field(default_factory=list)
    revisions: int = 0
    statements: int = 0
    seconds: float = 0.0

    @property
    def ms_per_revision(self) -> float:
        return 1000 * self.seconds / self.revisions if self.revisions else 0.0


@dataclass
class _Observed:
    """One statement's effects on pre-existing relations."""

    locks: dict[str, str]  # relation → strongest strong mode held after it
    rewritten: list[str]
    scanned: list[str]  # sequential scans
    changed_rows: list[str]
    new_indexes: int

    @property
    def work(self) -> list[str]:
        what = [f"rewrote {r}" for r in self.rewritten]
        what += [f"scanned {r}" for r in self.scanned]
        what += [f"changed rows of {r}" for r in self.changed_rows]
        if self.new_indexes:
            what.append("built an index")
        return what


class _Session:
    """The tracing session's view of the relations that existed before the revision."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        rows = conn.execute(RELATIONS_SQL).fetchall()
        self.names = {int(oid): str(name) for oid, name, _, _ in rows}
        self.kinds = {int(oid): str(kind) for oid, _, kind, _ in rows}
        self.oids = list(self.names)
        self.tables = [o for o in self.oids if self.kinds[o] in ("r", "p", "m")]
        self.filenodes = {int(oid): int(node) for oid, _, _, node in rows}
        self.stats = self._stats()
        self.indexes = 0  # indexes built on pre-existing tables so far

    def _stats(self) -> dict[int, tuple[int, int, int]]:
        return {int(r[0]): (int(r[1]), int(r[2]), int(r[3]))
                for r in self.conn.execute(STATS_SQL, (self.tables,)).fetchall()}

    def observe(self) -> _Observed:
        locks: dict[str, str] = {}
        for oid, mode in self.conn.execute(LOCKS_SQL, (self.oids,)).fetchall():
            if mode in STRONG and self.kinds.get(int(oid)) in ("r", "p", "m"):
                locks[self.names[int(oid)]] = STRONG[mode]
        filenodes = {int(o): int(n) for o, n in
                     self.conn.execute(FILENODES_SQL, (self.oids,)).fetchall()}
        changed = [o for o, node in filenodes.items()
                   if node != self.filenodes.get(o) and node != 0]
        tables = [self.names[o] for o in changed if self.kinds[o] in ("r", "p", "m")]
        # an index rewritten with its table is the table's rewrite; alone, a REINDEX
        rewritten = tables or [self.names[o] for o in changed]
        self.filenodes.update(filenodes)
        stats = self._stats()
        scanned, rows_changed = [], []
        for oid, (seq, _idx, rows) in stats.items():
            old = self.stats.get(oid, (0, 0, 0))
            if seq > old[0]:
                scanned.append(self.names[oid])
            if rows > old[2]:
                rows_changed.append(self.names[oid])
        self.stats = stats
        row = self.conn.execute(NEW_INDEXES_SQL, (self.tables, self.oids)).fetchone()
        indexes = int(row[0]) if row else 0
        built, self.indexes = indexes - self.indexes, indexes
        return _Observed(locks, rewritten, scanned, rows_changed, built)


def _statements(rev: Revision) -> list[Statement]:
    """The up statements, as the runner runs them; a Python revision's as Alembic renders them
    (at its `def upgrade` line)."""
    if rev.kind == "sql":
        return revision_statements(rev, upgrade=True)
    from ..guard.render import render_upgrade

    sql, line = render_upgrade(rev.path.read_text(encoding="utf-8"), rev.path)
    return [Statement(s.sql, line, s.kind, s.node) for s in split_statements(sql, 1, rev.path)]


def _suppressions(rev: Revision) -> dict[int, set[str]] | set[str]:
    """What `-- svcmig:ignore <rule> <reason>` comments acknowledge: per statement line for
    SQL, for the whole file for Python (as the static rules read them)."""
    text = rev.path.read_text(encoding="utf-8")
    if rev.kind == "python":
        return {m["rule"] for m in map(SUPPRESSION_RE.match, map(str.strip, text.splitlines()))
                if m and m["rule"] and m["reason"]}
    try:
        source = load.parse_sql_source(text, rev.path)
        statements = parse_statements(source.up, source.up_line).statements
    except (MigrationFileError, SqlSyntaxError):
        return {}
    return {s.line: set(s.suppressions) for s in statements}


def _acknowledged(finding: Finding, suppressions: dict[int, set[str]] | set[str]) -> bool:
    names = suppressions if isinstance(suppressions, set) else suppressions.get(finding.line,
                                                                                set())
    return finding.rule.name in names


def _finding(rev: Revision, line: int, rule: rules.Rule, message: str) -> Finding:
    return Finding(rev.path, line, 1, rule, message)


def trace_revision(conn: psycopg.Connection, rev: Revision) -> tuple[list[Finding], int]:
    """Run `rev` in a transaction that is rolled back; (findings, statements traced)."""
    service = service_of(rev)
    findings: list[Finding] = []
    try:
        statements = _statements(rev)
    except (MigrationFileError, SvcmigError) as err:
        return [_finding(rev, 1, rules.TRACED_ERROR, f"not traced: {err}")], 0
    traced = 0
    conn.execute("BEGIN")
    try:
        conn.execute(f"SET LOCAL ROLE {quote_ident(service.owner_role)}; "
                     f"SET LOCAL search_path = {quote_ident(service.schema)}; "
                     "SET LOCAL enable_seqscan = off; SET LOCAL lock_timeout = '5s'; "
                     "SET LOCAL statement_timeout = '60s'")
        session = _Session(conn)
        held: dict[str, tuple[str, int]] = {}
        for statement in statements:
            if _outside_transaction(statement):
                continue
            try:
                conn.execute(statement.sql)
            except psycopg.Error as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
                findings.append(_finding(rev, statement.line, rules.TRACED_ERROR,
                                         f"failed on the traced schema: {first}"))
                break
            traced += 1
            conn.execute("SET LOCAL enable_seqscan = off")  # the probe, whatever it set
            seen = session.observe()
            findings.extend(_judge(rev, statement, seen, held))
            if rev.transactional:
                for relation, mode in seen.locks.items():
                    held.setdefault(relation, (mode, statement.line))
    finally:
        conn.execute("ROLLBACK")
    suppressions = _suppressions(rev)
    return [f for f in findings if not _acknowledged(f, suppressions)], traced


def _judge(rev: Revision, statement: Statement, seen: _Observed,
           held: dict[str, tuple[str, int]]) -> Iterator[Finding]:
    line = statement.line
    for relation in seen.rewritten:
        mode = seen.locks.get(relation) or held.get(relation, ("", 0))[0] or "a lock"
        yield _finding(rev, line, rules.TRACED_REWRITE,
                       f"rewrote {relation} under {mode}: it is blocked while every row and "
                       "index is copied")
    work = seen.work
    if held and work and rev.transactional:
        relation, (mode, taken) = next(iter(held.items()))
        yield _finding(rev, line, rules.TRACED_LOCK_HELD,
                       f"{', '.join(work)} while holding {mode} on {relation} (taken at line "
                       f"{taken}) until COMMIT")
    if _data_change(statement) and seen.scanned:
        yield _finding(rev, line, rules.TRACED_UNBOUNDED_SCAN,
                       f"{statement.kind.removesuffix('Stmt').upper()} scanned "
                       f"{', '.join(seen.scanned)} sequentially (sequential scans were off): no "
                       "key bounds its rows")


def trace(root: Path, paths: Iterable[Path], database_url: str | None = None,
          graph: Graph | None = None) -> TraceResult:
    """Trace the revisions whose files are `paths` on a throwaway database of `database_url`'s
    server (default: the project's embedded Postgres), dropped afterwards."""
    graph = graph or build_graph(root)
    wanted = {p.resolve() for p in paths}
    linted = [r for r in graph.revisions.values() if r.path.resolve() in wanted]
    result = TraceResult()
    if not linted:
        return result
    started = time.monotonic()
    with throwaway_database(database_url or embedded_url(root)) as url:
        conn = connect(url)
        try:
            with migrator_lock(conn, 30):
                ledger.bootstrap(conn, graph.services)
                # a throwaway database: no revision waits for a backfill (the planner would
                # hold a contract revision and the next one would be traced without it)
                record_waived(conn, root, None, "a throwaway database for tracing")
            for rev in topological_order(linted, graph.revisions):
                try:
                    for parent in parents(rev):
                        migrate(url, root, "all", log=lambda _: None, graph=graph,
                                target=parent)
                except SvcmigError as err:
                    result.findings.append(_finding(
                        rev, 1, rules.TRACED_ERROR,
                        f"not traced: the runner could not apply what comes before it: {err}"))
                    break
                found, statements = trace_revision(conn, rev)
                result.findings.extend(found)
                result.revisions += 1
                result.statements += statements
        finally:
            conn.close()
    result.seconds = time.monotonic() - started
    return result


def trace_all(root: Path, database_url: str | None = None) -> TraceResult:
    """Trace every revision of the project (`svcmig check`)."""
    graph = build_graph(root)
    return trace(root, [rev.path for rev in graph.revisions.values()], database_url, graph)
