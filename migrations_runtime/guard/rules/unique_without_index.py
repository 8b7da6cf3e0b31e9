"""Adding UNIQUE or PRIMARY KEY builds its index while writes to the table are blocked."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast
from pglast.enums import ConstrType

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, constraints_added_to_existing_tables

BAD = (
    "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);",
    "ALTER TABLE users ADD PRIMARY KEY (id);",
)
GOOD = (
    "-- migrate:no-transaction\n"
    "CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email);\n"
    "-- next revision\n"
    "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_key;",
    "CREATE TABLE devices (id int, serial text);\n"
    "ALTER TABLE devices ADD CONSTRAINT devices_serial_key UNIQUE (serial);",
)

_KINDS = {ConstrType.CONSTR_UNIQUE: "UNIQUE", ConstrType.CONSTR_PRIMARY: "PRIMARY KEY"}


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    for alter, constraint in constraints_added_to_existing_tables(stmt, ctx):
        if constraint.contype in _KINDS and not constraint.indexname:
            yield (f"{_KINDS[constraint.contype]} on {'.'.join(ctx.qualify(alter.relation))} "
                   "builds its index while writes are blocked")


RULE = StatementRule(
    name="unique-without-index",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="CREATE UNIQUE INDEX CONCURRENTLY first (no-transaction revision), then "
    "ADD CONSTRAINT … UNIQUE USING INDEX (or PRIMARY KEY USING INDEX).",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.AlterTableStmt,),
)
