"""CLUSTER rewrites the whole table under an ACCESS EXCLUSIVE lock."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement

BAD = ("CLUSTER users USING users_pkey;",)
GOOD = ("ANALYZE users;",)


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    if isinstance(stmt.node, ast.ClusterStmt):
        yield "CLUSTER locks the table against reads and writes while it rewrites it"


RULE = StatementRule(
    name="cluster",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Reorder data with pg_repack from a runbook; migrations must not rewrite live tables.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.ClusterStmt,),
)
