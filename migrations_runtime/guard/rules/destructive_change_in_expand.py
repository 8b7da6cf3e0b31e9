"""Dropping or renaming a column, table or schema breaks the code still running during deploy."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast
from pglast.enums import AlterTableType, ObjectType

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, alter_commands, seq

BAD = (
    "ALTER TABLE users DROP COLUMN legacy_name;",
    "DROP TABLE sessions;",
    "ALTER TABLE users RENAME COLUMN name TO full_name;",
    "ALTER TABLE users RENAME TO accounts;",
    "ALTER TABLE users SET SCHEMA archive;",
    "DROP SCHEMA users CASCADE;",
)
GOOD = (
    "-- phase: contract\nALTER TABLE users DROP COLUMN legacy_name;",
    "-- phase: contract\nDROP TABLE sessions;",
    "ALTER TABLE users ADD COLUMN full_name text;",
    "CREATE TABLE tmp_import (id int);\nDROP TABLE tmp_import;",
)

_DROPPED = {ObjectType.OBJECT_TABLE: "table", ObjectType.OBJECT_SCHEMA: "schema"}
_RENAMED = {ObjectType.OBJECT_TABLE: "table", ObjectType.OBJECT_COLUMN: "column",
            ObjectType.OBJECT_SCHEMA: "schema"}


def _changes(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    node = stmt.node
    if isinstance(node, ast.DropStmt) and node.removeType in _DROPPED:
        for names in seq(node.objects):
            if isinstance(names, ast.String):
                yield f"DROP SCHEMA {names.sval}"
            elif ctx.qualify_names(names) not in ctx.new_tables:
                yield f"DROP TABLE {'.'.join(ctx.qualify_names(names))}"
    elif isinstance(node, ast.RenameStmt) and node.renameType in _RENAMED:
        if node.relation is None or not ctx.is_new_table(node.relation):
            what = node.subname or (node.relation.relname if node.relation else "")
            yield f"RENAME {_RENAMED[node.renameType]} {what}"
    elif isinstance(node, ast.AlterObjectSchemaStmt):
        if node.relation is None or not ctx.is_new_table(node.relation):
            yield f"SET SCHEMA {node.newschema}"
    for alter, cmd in alter_commands(stmt):
        if cmd.subtype == AlterTableType.AT_DropColumn and not ctx.is_new_table(alter.relation):
            yield f"DROP COLUMN {'.'.join(ctx.qualify(alter.relation))}.{cmd.name}"


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    if ctx.phase == "contract":
        return
    for change in _changes(stmt, ctx):
        yield (f"{change} in an expand revision: the old code still uses it while the deploy "
               "runs")


RULE = StatementRule(
    name="destructive-change-in-expand",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Stop using the object in code first, then drop or rename it in a revision marked "
    "'-- phase: contract' (Python: phase = \"contract\"), which runs after the new code is live.",
    check=check,
    bad=BAD,
    good=GOOD,
)
