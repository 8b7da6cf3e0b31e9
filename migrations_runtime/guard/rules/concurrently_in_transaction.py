"""CONCURRENTLY operations and VACUUM cannot run inside the revision's transaction."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, alter_commands

BAD = (
    "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);",
    "DROP INDEX CONCURRENTLY users_email_idx;",
    "REINDEX INDEX CONCURRENTLY users_email_idx;",
    "VACUUM users;",
)
GOOD = (
    "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY users_email_idx ON users (email);",
    "-- migrate:no-transaction\nREINDEX INDEX CONCURRENTLY users_email_idx;",
)


def _operation(stmt: Statement) -> str | None:
    node = stmt.node
    if isinstance(node, ast.IndexStmt) and node.concurrent:
        return "CREATE INDEX CONCURRENTLY"
    if isinstance(node, ast.DropStmt) and node.concurrent:
        return "DROP INDEX CONCURRENTLY"
    if isinstance(node, ast.ReindexStmt) and any(
            p.defname == "concurrently" for p in node.params or ()):
        return "REINDEX CONCURRENTLY"
    if isinstance(node, ast.VacuumStmt):
        return "VACUUM" if node.is_vacuumcmd else None
    for _, cmd in alter_commands(stmt):
        if isinstance(cmd.def_, ast.PartitionCmd) and cmd.def_.concurrent:
            return "DETACH PARTITION CONCURRENTLY"
    return None


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    operation = _operation(stmt)
    if operation and ctx.transactional:
        yield f"{operation} cannot run inside a transaction, and this revision runs in one"


RULE = StatementRule(
    name="concurrently-in-transaction",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Put the statement in its own revision with '-- migrate:no-transaction' in the header "
    "(Python: transactional = False).",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.IndexStmt, ast.DropStmt, ast.ReindexStmt, ast.VacuumStmt, ast.AlterTableStmt),
)
