"""Between steps 4 and 5 of the flow: read and check every pending revision before the first one
runs, so a broken file refuses the whole plan instead of failing halfway through a deploy.

For each pending revision: the file still has the checksum it was planned with (a stale
manifest, an edit since loading), it is UTF-8, its SQL parses, and it holds nothing a revision
may not contain (`statements.forbidden_reason`): transaction control in a transactional
revision, role or authorization changes, COPY from or to the client, psql meta-commands,
statements Postgres runs only outside a transaction. A Python revision is checked where it can
be without running it: `autocommit_block()` in a transactional revision, and SQL given as a
string literal to `op.execute`, `exec_driver_sql` or `text`. `plan` and `status` report the
same problems as `migrate`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import CodeType

from .errors import MigrationFileError
from .load import Revision, checksum, read_text
from .plan import Anomaly, Plan
from .statements import Statement, check_statements, revision_statements, split_statements
from .validate import Graph

SQL_CALLS = ("execute", "exec_driver_sql", "text")


def python_problems(text: str, path: Path, transactional: bool) -> ast.Module:
    """Raise `MigrationFileError` for what a Python revision may not do, found without running
    it; its syntax tree. SQL built at run time is checked when it runs
    (`apply.PythonRevisions`)."""
    tree = ast.parse(text.removeprefix("\ufeff"), filename=str(path))
    for node in ast.walk(tree):
        if transactional and (
                (isinstance(node, ast.Attribute) and node.attr == "autocommit_block")
                or (isinstance(node, ast.Name) and node.id == "autocommit_block")):
            raise MigrationFileError(
                path, "autocommit_block() in a transactional revision: it would commit the "
                "runner's transaction before the ledger row; set `transactional = False` at "
                "module level (the whole revision then runs in autocommit)", node.lineno)
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else (
            node.func.id if isinstance(node.func, ast.Name) else "")
        first = node.args[0]
        if name not in SQL_CALLS or not isinstance(first, ast.Constant) or \
                not isinstance(first.value, str):
            continue
        try:
            statements = split_statements(first.value, first.lineno, path)
        except MigrationFileError:
            continue  # not SQL on its own (a fragment, a template): checked when it runs
        check_statements(statements, transactional, path)
    return tree


@dataclass(frozen=True)
class Prepared:
    """A pending revision as the preflight read and checked it: its SQL statements (None for a
    Python revision) and the file's (mtime_ns, size) then, so the runner reads it again only
    if it changed since; a Python revision's code, compiled from the tree the check parsed
    (parsing it again to run it cost 50 µs a revision)."""

    statements: list[Statement] | None
    stat: tuple[int, int]
    code: CodeType | None = None


def file_stat(path: Path) -> tuple[int, int]:
    found = path.stat()
    return found.st_mtime_ns, found.st_size


def prepare(revision: Revision) -> Prepared:
    """Read and check one pending revision. Raises `MigrationFileError` naming the file and
    line."""
    stat = file_stat(revision.path)
    text = read_text(revision.path)
    if checksum(text) != revision.checksum:
        raise MigrationFileError(
            revision.path, "the file changed after it was loaded (or since the manifest was "
            "built); run again (rebuild the manifest with `svcmig manifest`)")
    if revision.kind == "python":
        tree = python_problems(text, revision.path, revision.transactional)
        return Prepared(None, stat, compile(tree, str(revision.path), "exec"))
    statements = revision_statements(revision, upgrade=True, text=text)
    check_statements(statements, revision.transactional, revision.path)
    return Prepared(statements, stat)


def prepare_all(revisions: Iterable[Revision]) -> tuple[dict[str, Prepared], list[Anomaly]]:
    """`prepare` each revision: what was read of those that can run, and an `invalid_revision`
    error for each that cannot."""
    problems: list[Anomaly] = []
    prepared: dict[str, Prepared] = {}
    for revision in revisions:
        try:
            prepared[revision.id] = prepare(revision)
        except MigrationFileError as err:
            problems.append(Anomaly("invalid_revision", revision.service, revision.id,
                                    str(err)))
        except OSError as err:
            problems.append(Anomaly("invalid_revision", revision.service, revision.id,
                                    f"{revision.path}: cannot read the file: {err}"))
    return prepared, problems


def preflight(graph: Graph, plan: Plan) -> tuple[Plan, dict[str, Prepared]]:
    """The plan with an `invalid_revision` error for every pending revision that cannot run, and
    what the preflight read of those that can (the runner reuses it)."""
    prepared, problems = prepare_all(graph.revisions[rev_id] for status in plan.services
                                     for rev_id in status.pending)
    return plan.with_anomalies(problems), prepared
