"""SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock unless a CHECK proves it."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast
from pglast.enums import AlterTableType

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, alter_commands

BAD = (
    "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
    "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;\n"
    "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
)
GOOD = (
    "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID;\n"
    "-- next revision\n"
    "ALTER TABLE users VALIDATE CONSTRAINT email_nn;\n"
    "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
    "ALTER TABLE users ADD CHECK (email IS NOT NULL) NOT VALID;\n"
    "-- next revision\n"
    "ALTER TABLE users VALIDATE CONSTRAINT users_email_check;\n"
    "-- next revision\n"
    "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
    "CREATE TABLE devices (id int, name text);\n"
    "ALTER TABLE devices ALTER COLUMN name SET NOT NULL;",
    # a table adopted with `baseline`: its constraint predates the history the guard reads
    "ALTER TABLE legacy_accounts VALIDATE CONSTRAINT legacy_email_nn;\n"
    "-- next revision\nALTER TABLE legacy_accounts ALTER COLUMN email SET NOT NULL;",
)


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    for alter, cmd in alter_commands(stmt):
        if cmd.subtype != AlterTableType.AT_SetNotNull or ctx.is_new_table(alter.relation):
            continue
        table = ctx.qualify(alter.relation)
        proven = (*table, cmd.name or "") in ctx.model.not_null
        if not proven and table in ctx.model.validated_unknown:
            continue  # adopted table: a constraint the guard never saw was validated first
        if not proven or ctx.pg_version < 12:
            why = ("PostgreSQL before 12 always scans" if proven
                   else "no validated CHECK (… IS NOT NULL) on it comes first")
            yield (f"SET NOT NULL on {'.'.join(table)}.{cmd.name} scans the table under an "
                   f"ACCESS EXCLUSIVE lock: {why}")


RULE = StatementRule(
    name="set-not-null-without-check",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Add CHECK (col IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT it (same or later "
    "revision), then SET NOT NULL, then drop the CHECK.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.AlterTableStmt,),
)
