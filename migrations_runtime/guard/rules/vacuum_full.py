"""VACUUM FULL rewrites the whole table under an ACCESS EXCLUSIVE lock."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement

BAD = ("-- migrate:no-transaction\nVACUUM FULL users;",
       "-- migrate:no-transaction\nVACUUM (FULL, ANALYZE) users;")
GOOD = ("-- migrate:no-transaction\nVACUUM (ANALYZE) users;", "ANALYZE users;")


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    node = stmt.node
    if isinstance(node, ast.VacuumStmt) and any(
            option.defname == "full" and not (isinstance(option.arg, ast.Boolean)
                                              and not option.arg.boolval)
            for option in node.options or ()):
        yield "VACUUM FULL locks the table against reads and writes while it rewrites it"


RULE = StatementRule(
    name="vacuum-full",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Leave space reclamation to autovacuum, or use pg_repack from a runbook, not a "
    "migration.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.VacuumStmt,),
)
