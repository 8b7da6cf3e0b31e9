"""TRUNCATE takes an ACCESS EXCLUSIVE lock and removes every row without a trace."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, seq

BAD = ("TRUNCATE users;", "TRUNCATE TABLE users, accounts CASCADE;")
GOOD = (
    "DELETE FROM users WHERE id >= 1 AND id < 1001 AND created_at < '2020-01-01';",
    "CREATE TABLE scratch (id int);\nTRUNCATE scratch;",
)


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    if isinstance(stmt.node, ast.TruncateStmt):
        tables = [rel for rel in seq(stmt.node.relations)
                  if isinstance(rel, ast.RangeVar) and not ctx.is_new_table(rel)]
        if tables:
            names = ", ".join(".".join(ctx.qualify(rel)) for rel in tables)
            yield f"TRUNCATE {names} deletes every row under an ACCESS EXCLUSIVE lock"


RULE = StatementRule(
    name="truncate",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Delete the rows you mean with a WHERE filter, in batches; data fixes that empty a "
    "table belong in a reviewed runbook, not a migration.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.TruncateStmt,),
)
