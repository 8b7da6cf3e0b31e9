"""CREATE INDEX without CONCURRENTLY blocks writes to an existing table while it builds."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement

BAD = ("CREATE INDEX users_email_idx ON users (email);",
       "CREATE UNIQUE INDEX users_email_key ON users (lower(email));")
GOOD = (
    "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY users_email_idx ON users (email);",
    "CREATE TABLE devices (id bigint, user_id bigint);\n"
    "CREATE INDEX devices_user_idx ON devices (user_id);",
)


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    node = stmt.node
    if isinstance(node, ast.IndexStmt) and not node.concurrent and not ctx.is_new_table(
            node.relation):
        table = ".".join(ctx.qualify(node.relation))
        yield f"CREATE INDEX on existing table {table} without CONCURRENTLY blocks its writes"


RULE = StatementRule(
    name="create-index-non-concurrently",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Use CREATE INDEX CONCURRENTLY in its own revision marked "
    "'-- migrate:no-transaction'.",
    check=check,
    bad=BAD,
    good=GOOD,
)
