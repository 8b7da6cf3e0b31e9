"""`svcmig check`: prove every service's migrations go down and up again on a throwaway
database, comparing catalog snapshots rather than trusting exit codes.

The run:
1. create `svcmig_check_<random>` on the server (embedded Postgres by default), or use an
   empty database in place;
2. upgrade heads through the real runner (`apply.migrate`), taking a snapshot of the service's
   schema after every revision, and check the applied order honours every `depends_on` and
   leaves exactly one version row per service, at its code head;
3. per service: revert its revisions (and those of other services that depend on them), one at
   a time, newest first, comparing the schema after each downgrade with the snapshot taken
   before that revision was first applied; then upgrade them again one at a time, comparing
   with the snapshot taken after it; finally compare the whole database with the one before;
4. drop the throwaway database.

A revision without a downgrade cannot be round-tripped: the service is reported as
"irreversible" (and only the revisions above it are checked). That fails the run unless the
revision declares it on purpose (SQL: `-- irreversible: <why>` in an empty down section;
Python: `irreversible = "<why>"`), and always with `--strict`. Snapshots read pg_catalog
(tables, columns with types, defaults and nullability, constraints, indexes, sequences, views,
functions, triggers, types, policies, owners and grants); see `take_snapshot` for what is
deliberately ignored.
"""

from __future__ import annotations

import secrets
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg

from ..dev.embedded import embedded_url
from ..engine import ledger
from ..engine.apply import Runner, RunSettings, migrate
from ..engine.database import connect, libpq_url, redact
from ..engine.errors import MigrationFailed, ProjectError, SvcmigError, UsageProblem
from ..engine.ledger import Executes
from ..engine.load import Revision, irreversible_reason
from ..engine.lock import migrator_lock
from ..engine.validate import Graph, build_graph, parents, topological_order
from .progress import Progress

Status = Literal["ok", "failed", "irreversible", "empty", "skipped"]


@dataclass
class ServiceCheck:
    """The round trip of one service."""

    service: str
    revisions: int
    status: Status = "ok"
    round_tripped: list[str] = field(default_factory=list)  # in downgrade order, any service
    irreversible: list[str] = field(default_factory=list)  # revisions that stop the round trip
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"service": self.service, "revisions": self.revisions, "status": self.status,
                "round_tripped": self.round_tripped, "irreversible": self.irreversible,
                "problems": self.problems}

    def summary(self) -> str:
        own = [r for r in self.round_tripped if r.startswith(f"{self.service}_")]
        if self.status == "ok":
            others = len(self.round_tripped) - len(own)
            extra = f" (+{others} dependent revision(s) of other services)" if others else ""
            return f"ok: {len(own)} revision(s) down and up again, schema identical{extra}"
        if self.status == "irreversible":
            return (f"irreversible: {', '.join(self.irreversible)} has no downgrade; checked the "
                    f"{len(own)} revision(s) above it")
        if self.status == "empty":
            return "no revisions"
        if self.status == "skipped":
            return "skipped: an earlier failure left the database in an unknown state"
        return f"FAILED: {len(self.problems)} problem(s)"


@dataclass
class CheckReport:
    """What `svcmig check` found; `passed()` decides the exit code."""

    database: str
    throwaway: bool
    applied: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # not tied to one service's round trip
    services: list[ServiceCheck] = field(default_factory=list)
    # strong locks on pre-existing tables held long or across work on rows (fail with --strict)
    warnings: list[str] = field(default_factory=list)

    @property
    def all_problems(self) -> list[str]:
        return self.problems + [f"{s.service}: {p}" for s in self.services for p in s.problems]

    @property
    def irreversible(self) -> list[str]:
        return [s.service for s in self.services if s.status == "irreversible"]

    def passed(self, strict: bool = False) -> bool:
        return not self.all_problems and not (strict and (self.irreversible or self.warnings))

    def as_dict(self, strict: bool = False) -> dict[str, object]:
        return {"passed": self.passed(strict), "strict": strict, "database": self.database,
                "throwaway": self.throwaway, "applied": self.applied,
                "problems": self.all_problems, "irreversible": self.irreversible,
                "warnings": self.warnings,
                "services": [s.as_dict() for s in self.services]}

    def text(self, strict: bool = False) -> str:
        where = "a throwaway database" if self.throwaway else "database"
        lines = [f"upgraded {len(self.applied)} revision(s) on {where} {self.database}"]
        width = max([len(s.service) for s in self.services] + [7])
        for s in self.services:
            lines.append(f"{s.service.ljust(width)}  {s.summary()}")
        lines.extend(f"error: {p}" for p in self.all_problems)
        lines.extend(f"{'error' if strict else 'warning'}: {w}" for w in self.warnings)
        if strict and self.irreversible:
            lines.append(f"error: irreversible service(s) with --strict: "
                         f"{', '.join(self.irreversible)}; write their downgrades")
        lines.append("check passed" if self.passed(strict) else "check FAILED")
        return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------------


def _dependents(graph: Graph) -> dict[str, list[Revision]]:
    """revision id → revisions that must be reverted before it (children and depends_on)."""
    found: dict[str, list[Revision]] = {}
    for rev in graph.revisions.values():
        for parent in parents(rev):
            found.setdefault(parent, []).append(rev)
    return found


def _closure(start: Iterable[Revision], dependents: dict[str, list[Revision]]) -> list[Revision]:
    seen: dict[str, Revision] = {}
    stack = list(start)
    while stack:
        rev = stack.pop()
        if rev.id not in seen:
            seen[rev.id] = rev
            stack.extend(dependents.get(rev.id, ()))
    return list(seen.values())


@dataclass
class _Run:
    """State shared by the steps of one check."""

    graph: Graph
    snap: psycopg.Connection
    progress: Progress
    base: dict[str, Snapshot] = field(default_factory=dict)  # service → schema before its root
    after: dict[str, Snapshot] = field(default_factory=dict)  # revision → its service's schema

    def before(self, rev: Revision) -> Snapshot:
        return self.after[rev.down_revision] if rev.down_revision else self.base[rev.service]

    def compare(self, rev: Revision, expected: Snapshot, what: str, problems: list[str]) -> None:
        found = differences(expected, take_snapshot(self.snap, rev.service))
        if found:
            problems.append(f"{what} of {rev.id} ({rev.file}) {'; '.join(found)}")


def _upgrade(url: str, root: Path, run: _Run, report: CheckReport,
             settings: RunSettings) -> bool:
    """Upgrade heads with the real runner, snapshotting after each revision."""
    graph = run.graph
    conn = connect(url)
    try:
        with migrator_lock(conn, settings.lock_wait_seconds):
            ledger.bootstrap(conn, graph.services)
    finally:
        conn.close()
    for service in graph.services:
        run.base[service.name] = take_snapshot(run.snap, service.schema)

    def on_line(line: dict[str, object]) -> None:
        if line.get("event") == "revision" and line.get("outcome") == "applied":
            rev = graph.revisions[str(line["revision"])]
            report.applied.append(rev.id)
            run.after[rev.id] = take_snapshot(run.snap, rev.service)
            run.progress.step(rev.id)
        elif line.get("event") == "warning":
            if line.get("kind") in ("long_lock_hold", "lock_held_across_statements"):
                report.warnings.append(str(line.get("message")))
            run.progress.note(f"warning: {line.get('message')}")

    run.progress.start("upgrade heads", len(graph.revisions))
    try:
        migrate(url, root, "all", settings, log=on_line, graph=graph)
    except SvcmigError as err:
        run.progress.finish()
        report.problems.append(f"upgrade heads failed: {err}")
        return False
    run.progress.finish()
    position = {rid: index for index, rid in enumerate(report.applied)}
    for rid in report.applied:
        for parent in parents(graph.revisions[rid]):
            if position.get(parent, len(position)) > position[rid]:
                report.problems.append(f"{rid} was applied before {parent}, which it depends on")
    missing = sorted(set(graph.revisions) - set(position))
    if missing:
        report.problems.append(f"upgrade heads did not apply {', '.join(missing)}")
    heads = {row[0] for row in run.snap.execute(
        f"SELECT version_num FROM {ledger.QUALIFIED_VERSION_TABLE}").fetchall()}
    expected = {chain[-1].id for chain in graph.chains.values() if chain}
    if heads != expected:
        report.problems.append(
            f"after upgrade heads the version table holds {sorted(heads)}, expected one row per "
            f"service at its head: {sorted(expected)}")
    return True


def _undeclared(revision: Revision) -> str:
    how = ('an empty down section with `-- irreversible: <why>`' if revision.kind == "sql"
           else 'irreversible = "<why>"')
    return (f"{revision.id} ({revision.file}) has no downgrade and does not declare itself "
            f"irreversible: write its downgrade, or declare it with {how}")


def _round_trip(run: _Run, runner: Runner, service: str,
                dependents: dict[str, list[Revision]]) -> tuple[ServiceCheck, bool]:
    """The service's round trip, and whether a failed revision left the database in an unknown
    state (the remaining services are then skipped)."""
    graph = run.graph
    chain = graph.chains.get(service, ())
    result = ServiceCheck(service, len(chain))
    if not chain:
        result.status = "empty"
        return result, False
    revert: list[Revision] = []
    for start in range(len(chain) - 1, -1, -1):
        candidate = _closure(chain[start:], dependents)
        stoppers = sorted((r for r in candidate if not r.reversible), key=lambda r: r.id)
        if stoppers:
            result.status = "irreversible"
            result.irreversible = [r.id for r in stoppers]
            result.problems = [_undeclared(r) for r in stoppers
                               if r.service == service and irreversible_reason(r) is None]
            break
        revert = candidate
    if not revert:
        return result, False
    down = list(reversed(topological_order(revert, graph.revisions)))
    result.round_tripped = [r.id for r in down]
    before_all = {s.schema: take_snapshot(run.snap, s.schema) for s in graph.services}
    run.progress.start(f"round trip {service}", 2 * len(down))
    try:
        for rev in down:
            runner.apply(rev, upgrade=False)
            run.progress.step(f"down {rev.id}")
            run.compare(rev, run.before(rev), "downgrade", result.problems)
        for rev in reversed(down):
            runner.apply(rev, upgrade=True)
            run.progress.step(f"up {rev.id}")
            run.compare(rev, run.after[rev.id], "upgrade after downgrade", result.problems)
    except MigrationFailed as err:
        result.problems.append(f"round trip stopped: {err}")
        result.status = "failed"
        return result, True
    finally:
        run.progress.finish()
    if not result.problems:
        for schema, expected in before_all.items():
            found = differences(expected, take_snapshot(run.snap, schema))
            if found:
                result.problems.append(f"the round trip changed schema {schema}: "
                                       + "; ".join(found))
    if result.problems:
        result.status = "failed"
    return result, False


def check_database(url: str, root: Path, graph: Graph | None = None,
                   progress: Progress | None = None, settings: RunSettings | None = None,
                   throwaway: bool = True) -> CheckReport:
    """Run the whole check on `url`, which must be empty; leaves it at heads."""
    graph = graph or build_graph(root)
    settings = settings or RunSettings()
    report = CheckReport(database=database_name(url), throwaway=throwaway)
    snap = connect(url)
    run = _Run(graph, snap, progress or Progress(enabled=False))
    try:
        if not _upgrade(url, root, run, report, settings):
            return report
        dependents = _dependents(graph)
        conn = connect(url)
        runner = Runner(conn, url, settings, lambda _line: None)
        try:
            with migrator_lock(conn, settings.lock_wait_seconds):
                broken = False
                for service in graph.services:
                    if broken:
                        report.services.append(ServiceCheck(
                            service.name, len(graph.chains.get(service.name, ())), "skipped"))
                        continue
                    result, broken = _round_trip(run, runner, service.name, dependents)
                    report.services.append(result)
        finally:
            runner.close()
            conn.close()
    finally:
        snap.close()
    return report


# --- where it runs -----------------------------------------------------------------------------


def database_name(url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(libpq_url(url)).get("dbname", "?"))


def url_for_database(server_url: str, database: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(libpq_url(server_url))
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


@contextmanager
def throwaway_database(server_url: str) -> Iterator[str]:
    """A fresh `svcmig_check_<random>` database on the server of `server_url`, dropped after."""
    name = f"svcmig_check_{secrets.token_hex(6)}"
    admin = connect(server_url)
    previous = _exit_on_sigterm()
    try:
        try:
            admin.execute(f'CREATE DATABASE "{name}"')
        except psycopg.Error as err:
            raise SvcmigError(
                f"cannot create a throwaway database on {redact(server_url)}: "
                f"{str(err).strip().splitlines()[0]}; grant CREATEDB to that user, or create an "
                "empty database and pass it with --database-url URL --in-place") from err
        try:
            yield url_for_database(server_url, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm() -> Any:
    """SIGTERM (a CI job cancelled) exits through Python, so the throwaway database is dropped;
    returns the handler to restore (None off the main thread, where it cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop)
    return previous


NON_EMPTY_SQL = r"""
    SELECT n.nspname FROM pg_namespace n
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'public')
      AND n.nspname NOT LIKE 'pg\_%'
    UNION ALL
    SELECT 'public' WHERE EXISTS (
        SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public'
        UNION ALL
        SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public')
    ORDER BY 1"""


def refuse_non_empty(url: str) -> None:
    """`check --in-place` runs only on an empty database: it would otherwise compare (and
    downgrade!) schemas that hold real data."""
    conn = connect(url)
    try:
        schemas = [row[0] for row in conn.execute(NON_EMPTY_SQL).fetchall()]
    finally:
        conn.close()
    if schemas:
        raise UsageProblem(
            f"database {database_name(url)} is not empty (schemas: {', '.join(schemas)}); "
            "svcmig check downgrades everything it applies, so give it an empty database, or "
            "drop --in-place to let it create and drop a throwaway one")


def run_check(root: Path, database_url: str | None = None, in_place: bool = False,
              progress: Progress | None = None,
              settings: RunSettings | None = None) -> CheckReport:
    """The CLI's and the pytest fixtures' entry: validate, pick the database, run the check.

    `database_url` names a server (through any database on it, e.g. `postgres`): check creates
    `svcmig_check_<random>` there and drops it. Default: the project's embedded Postgres.
    With `in_place`, `database_url` itself is used; it must be empty and is left at heads.
    A project without services is an error: a check that checks nothing must not pass."""
    graph = build_graph(root)
    if not graph.services:
        raise ProjectError(f"no services under {root / 'services'}: nothing to check; create "
                           "one with `svcmig new-service NAME`")
    if in_place:
        if not database_url:
            raise UsageProblem("--in-place needs --database-url naming an empty database")
        refuse_non_empty(database_url)
        return check_database(database_url, root, graph, progress, settings, throwaway=False)
    server = database_url or embedded_url(root)
    with throwaway_database(server) as url:
        return check_database(url, root, graph, progress, settings, throwaway=True)


# --- catalog snapshots -------------------------------------------------------------------------
# What counts is what code and privileges see. Deliberately ignored: column order (a column
# dropped and added back moves to the end), whether a constraint is NOT VALID (a downgrade
# cannot un-validate one), OIDs, statistics, sequence values and table contents.

Snapshot = dict[str, str]  # stable key ("column users.email") → description

# ACL items sorted; NULL (the built-in default) expanded, so a grant revoked again compares equal
_ACL = "array(SELECT a::text FROM unnest({col}) a ORDER BY 1)::text"
_SCHEMA_ACL = _ACL.format(col="coalesce(n.nspacl, acldefault('n', n.nspowner))")
_RELATION_ACL = _ACL.format(
    col="coalesce(c.relacl, acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::\"char\", "
        "c.relowner))")
_COLUMN_ACL = _ACL.format(col="coalesce(a.attacl, '{}'::aclitem[])")
_FUNCTION_ACL = _ACL.format(col="coalesce(p.proacl, acldefault('f', p.proowner))")

QUERIES: tuple[tuple[str, str], ...] = (
    ("schema", f"""
        SELECT n.nspname, 'owner ' || pg_get_userbyid(n.nspowner) || ' acl '
               || {_SCHEMA_ACL}
        FROM pg_namespace n WHERE n.nspname = %(schema)s"""),
    ("relation", f"""
        SELECT c.relname, 'kind ' || c.relkind::text || ' owner ' || pg_get_userbyid(c.relowner)
               || ' persistence ' || c.relpersistence::text || ' rls ' || c.relrowsecurity
               || ' acl ' || {_RELATION_ACL}
               || coalesce(' view ' || pg_get_viewdef(c.oid), '')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')"""),
    ("column", f"""
        SELECT c.relname || '.' || a.attname,
               format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE ' null' END
               || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
               || CASE a.attidentity WHEN '' THEN '' ELSE ' identity ' || a.attidentity::text END
               || CASE a.attgenerated WHEN '' THEN '' ELSE ' generated' END
               || coalesce(' collate ' || nullif(co.collname, 'default'), '')
               || ' acl ' || {_COLUMN_ACL}
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND a.attnum > 0 AND NOT a.attisdropped"""),
    ("constraint", """
        SELECT c.relname || '.' || k.conname,
               replace(pg_get_constraintdef(k.oid), ' NOT VALID', '')
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s"""),
    ("index", """
        SELECT i.relname, pg_get_indexdef(i.oid)
               || CASE WHEN x.indisvalid THEN '' ELSE ' (INVALID)' END
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_namespace n ON n.oid = i.relnamespace
        WHERE n.nspname = %(schema)s"""),
    ("sequence", """
        SELECT c.relname, format_type(s.seqtypid, NULL) || ' start ' || s.seqstart
               || ' increment ' || s.seqincrement || ' min ' || s.seqmin || ' max ' || s.seqmax
               || ' cache ' || s.seqcache || ' cycle ' || s.seqcycle
        FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s"""),
    ("function", f"""
        SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               'owner ' || pg_get_userbyid(p.proowner) || ' acl '
               || {_FUNCTION_ACL} || ' '
               || CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid)
                       ELSE p.prokind::text END
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = %(schema)s"""),
    ("trigger", """
        SELECT c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND NOT t.tgisinternal"""),
    ("type", """
        SELECT t.typname, t.typtype::text || ' ' || CASE t.typtype
                 WHEN 'e' THEN (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                                FROM pg_enum e WHERE e.enumtypid = t.oid)
                 WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod)
                 ELSE '' END
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        LEFT JOIN pg_class c ON c.oid = t.typrelid
        WHERE n.nspname = %(schema)s AND t.typtype IN ('e', 'd', 'c', 'r')
          AND (t.typrelid = 0 OR c.relkind = 'c')"""),
    ("policy", """
        SELECT tablename || '.' || policyname,
               permissive || ' ' || cmd || ' ' || roles::text || ' using '
               || coalesce(qual, '') || ' check ' || coalesce(with_check, '')
        FROM pg_policies WHERE schemaname = %(schema)s"""),
)


def take_snapshot(conn: Executes, schema: str) -> Snapshot:
    """Everything in `schema` that a round trip must restore, keyed by kind and name."""
    found: Snapshot = {}
    for kind, sql in QUERIES:
        for name, description in conn.execute(sql, {"schema": schema}).fetchall():
            found[f"{kind} {schema}.{name}"] = description
    return found


def take_all(conn: Executes, schemas: Iterable[str]) -> dict[str, Snapshot]:
    return {schema: take_snapshot(conn, schema) for schema in schemas}


def differences(expected: Snapshot, actual: Snapshot, limit: int = 5) -> list[str]:
    """Short lines describing how `actual` differs from `expected`, the most telling first."""
    lines: list[str] = []
    for key in sorted(actual.keys() - expected.keys()):
        lines.append(f"{key} is left behind")
    for key in sorted(expected.keys() - actual.keys()):
        lines.append(f"{key} is missing")
    for key in sorted(expected.keys() & actual.keys()):
        if expected[key] != actual[key]:
            lines.append(f"{key} changed from {expected[key]!r} to {actual[key]!r}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more difference(s)"]
    return lines
