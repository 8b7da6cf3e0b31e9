"""LOCK TABLE holds a heavy lock until the revision commits, queueing every other query."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, seq

BAD = ("LOCK TABLE users IN ACCESS EXCLUSIVE MODE;", "LOCK users;")
GOOD = ("SELECT id FROM users WHERE id = 1 FOR UPDATE;",)


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    if isinstance(stmt.node, ast.LockStmt):
        names = ", ".join(".".join(ctx.qualify(rel)) for rel in seq(stmt.node.relations)
                          if isinstance(rel, ast.RangeVar))
        yield f"LOCK TABLE {names} blocks other sessions until the revision commits"


RULE = StatementRule(
    name="lock-table",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Rely on the locks each statement takes (the runner bounds them with lock_timeout); "
    "lock rows, not tables, when a data fix needs it.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.LockStmt,),
)
