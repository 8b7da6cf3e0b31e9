"""CREATE INDEX without CONCURRENTLY blocks writes to an existing table while it builds."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement

BAD = ("CREATE INDEX users_email_idx ON users (email);",
       "CREATE UNIQUE INDEX users_email_key ON users (lower(email));",
       "CREATE TABLE user_events (user_id bigint, ts timestamptz) PARTITION BY RANGE (ts);\n"
       "-- next revision\nCREATE INDEX user_events_user_idx ON user_events (user_id);",
       "CREATE INDEX users_email_idx ON ONLY users (email);")
GOOD = (
    "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY users_email_idx ON users (email);",
    # a partitioned table: the parent's index ON ONLY (catalog only, invalid until attached),
    # each partition's CONCURRENTLY, then ATTACH PARTITION
    "CREATE TABLE user_events (user_id bigint, ts timestamptz) PARTITION BY RANGE (ts);\n"
    "-- next revision\n"
    "CREATE INDEX user_events_user_idx ON ONLY user_events (user_id);\n-- next revision\n"
    "-- migrate:no-transaction\n"
    "CREATE INDEX CONCURRENTLY user_events_2026_11_user_idx ON user_events_2026_11 (user_id);\n"
    "-- next revision\n"
    "ALTER INDEX user_events_user_idx ATTACH PARTITION user_events_2026_11_user_idx;",
    "CREATE TABLE devices (id bigint, user_id bigint);\n"
    "CREATE INDEX devices_user_idx ON devices (user_id);",
)


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    node = stmt.node
    if not isinstance(node, ast.IndexStmt) or node.concurrent or ctx.is_new_table(
            node.relation):
        return
    table = ctx.qualify(node.relation)
    if node.relation is not None and not node.relation.inh:
        if table in ctx.model.partitioned:
            return  # ON ONLY a partitioned table: a catalog entry, no build
        yield (f"CREATE INDEX … ON ONLY {'.'.join(table)}, a table not known to be "
               "partitioned: on a plain table ON ONLY builds the whole index, blocking writes")
        return
    if table in ctx.model.partitioned:
        yield (f"CREATE INDEX on partitioned table {'.'.join(table)} builds every partition's "
               "index while their writes are blocked (CONCURRENTLY is not allowed on it)")
    else:
        yield (f"CREATE INDEX on existing table {'.'.join(table)} without CONCURRENTLY blocks "
               "its writes")


RULE = StatementRule(
    name="create-index-non-concurrently",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Use CREATE INDEX CONCURRENTLY in its own revision marked "
    "'-- migrate:no-transaction'. On a partitioned table: CREATE INDEX … ON ONLY the parent, "
    "CREATE INDEX CONCURRENTLY on each partition, then ALTER INDEX … ATTACH PARTITION.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.IndexStmt,),
)
