"""DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock on the index's table."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast
from pglast.enums import ObjectType

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, seq

BAD = ("DROP INDEX users_email_idx;",)
GOOD = (
    "-- migrate:no-transaction\nDROP INDEX CONCURRENTLY users_email_idx;",
    "CREATE TABLE t (id int);\nCREATE INDEX t_id_idx ON t (id);\nDROP INDEX t_id_idx;",
)


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    node = stmt.node
    if isinstance(node, ast.DropStmt) and node.removeType == ObjectType.OBJECT_INDEX and (
            not node.concurrent):
        old = [ctx.qualify_names(names) for names in seq(node.objects)]
        old = [index for index in old if index not in ctx.new_indexes]
        if old:
            names = ", ".join(".".join(index) for index in old)
            yield f"DROP INDEX {names} without CONCURRENTLY locks its table against all queries"


RULE = StatementRule(
    name="drop-index-non-concurrently",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Use DROP INDEX CONCURRENTLY in its own revision marked '-- migrate:no-transaction'.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.DropStmt,),
)
