"""REINDEX without CONCURRENTLY blocks writes to the table (and reads using the index)."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement

BAD = ("REINDEX INDEX users_email_idx;", "REINDEX TABLE users;")
GOOD = ("-- migrate:no-transaction\nREINDEX INDEX CONCURRENTLY users_email_idx;",
        "-- migrate:no-transaction\nREINDEX (CONCURRENTLY) TABLE users;")


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    node = stmt.node
    if isinstance(node, ast.ReindexStmt) and not any(
            param.defname == "concurrently" for param in node.params or ()):
        yield "REINDEX without CONCURRENTLY blocks writes while the index is rebuilt"


RULE = StatementRule(
    name="reindex-non-concurrently",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Use REINDEX … CONCURRENTLY (PostgreSQL 12+) in a '-- migrate:no-transaction' revision.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.ReindexStmt,),
)
