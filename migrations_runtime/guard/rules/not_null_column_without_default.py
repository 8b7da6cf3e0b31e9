"""ADD COLUMN ... NOT NULL without a DEFAULT fails on any existing table that has rows."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast
from pglast.enums import AlterTableType, ConstrType

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, alter_commands

BAD = ("ALTER TABLE users ADD COLUMN email text NOT NULL;",)
GOOD = (
    "ALTER TABLE users ADD COLUMN active boolean NOT NULL DEFAULT true;",
    "ALTER TABLE users ADD COLUMN email text;",
    "CREATE TABLE devices (id int);\nALTER TABLE devices ADD COLUMN name text NOT NULL;",
)

_FILLED = (ConstrType.CONSTR_DEFAULT, ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED)


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    for alter, cmd in alter_commands(stmt):
        if cmd.subtype != AlterTableType.AT_AddColumn or ctx.is_new_table(alter.relation):
            continue
        column = cmd.def_
        if not isinstance(column, ast.ColumnDef):
            continue
        kinds = {c.contype for c in column.constraints or ()}
        if ConstrType.CONSTR_NOTNULL in kinds and not kinds.intersection(_FILLED):
            yield (f"column {column.colname} is NOT NULL without a DEFAULT: the ALTER fails "
                   f"as soon as {'.'.join(ctx.qualify(alter.relation))} has a row")


RULE = StatementRule(
    name="not-null-column-without-default",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Add the column with a constant DEFAULT, or add it nullable, backfill, then enforce "
    "NOT NULL through a NOT VALID CHECK that a later revision validates.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.AlterTableStmt,),
)
