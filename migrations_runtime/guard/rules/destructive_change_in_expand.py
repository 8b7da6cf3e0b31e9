"""Changes that break the code still running during the deploy: dropping or renaming any object
the code can name (tables, columns, views, materialized views, functions, procedures, types,
enum values, domains, sequences, schemas, constraints), moving it to another schema, dropping
the default of a NOT NULL column, narrowing a column's type. They belong in contract revisions,
which run after the new code is live."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast
from pglast.enums import AlterTableType, ObjectType

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, alter_commands, column_type, seq
from .column_type_change import is_narrowing, render_type

BAD = (
    "ALTER TABLE users DROP COLUMN legacy_name;",
    "DROP TABLE sessions;",
    "ALTER TABLE users RENAME COLUMN name TO full_name;",
    "ALTER TABLE users RENAME TO accounts;",
    "ALTER TABLE users SET SCHEMA archive;",
    "DROP SCHEMA users CASCADE;",
    "ALTER TYPE account_status RENAME VALUE 'suspended' TO 'blocked';",
    "CREATE TABLE orders_local (id int, currency text NOT NULL DEFAULT 'EUR');\n"
    "-- next revision\nALTER TABLE orders_local ALTER COLUMN currency DROP DEFAULT;",
    "DROP VIEW active_users;",
    "DROP MATERIALIZED VIEW signups_daily;",
    "DROP FUNCTION user_score(bigint);",
    "DROP TYPE account_status;",
    "DROP DOMAIN email_address;",
    "DROP SEQUENCE invoice_numbers;",
    "ALTER VIEW active_users RENAME TO current_users;",
    "ALTER FUNCTION user_score(bigint) RENAME TO score;",
    "ALTER TYPE account_status RENAME TO user_status;",
    "ALTER TABLE users RENAME CONSTRAINT users_email_key TO users_email_unique;",
    "CREATE TABLE notes (body varchar(200));\n-- next revision\n"
    "ALTER TABLE notes ALTER COLUMN body TYPE varchar(20) USING left(body, 20);",
    "ALTER FUNCTION user_score(bigint) SET SCHEMA archive;",
)
GOOD = (
    "-- phase: contract\nALTER TABLE users DROP COLUMN legacy_name;",
    "-- phase: contract\nDROP TABLE sessions;",
    "ALTER TABLE users ADD COLUMN full_name text;",
    "CREATE TABLE tmp_import (id int);\nDROP TABLE tmp_import;",
    "ALTER TYPE account_status ADD VALUE 'blocked';",
    "CREATE TABLE orders_local (id int, currency text DEFAULT 'EUR');\n"
    "-- next revision\nALTER TABLE orders_local ALTER COLUMN currency DROP DEFAULT;",
    "-- phase: contract\nALTER TYPE account_status RENAME VALUE 'suspended' TO 'blocked';",
    "CREATE VIEW recent AS SELECT 1 AS one;\nALTER VIEW recent RENAME TO recent_v;",
    "ALTER INDEX users_email_key RENAME TO users_email_uniq;",
    "CREATE TABLE notes (body varchar(20));\n-- next revision\n"
    "ALTER TABLE notes ALTER COLUMN body TYPE varchar(200);",
    "-- phase: contract\nDROP FUNCTION user_score(bigint);",
)

_KINDS = {
    ObjectType.OBJECT_TABLE: "table", ObjectType.OBJECT_COLUMN: "column",
    ObjectType.OBJECT_SCHEMA: "schema", ObjectType.OBJECT_VIEW: "view",
    ObjectType.OBJECT_MATVIEW: "materialized view", ObjectType.OBJECT_FUNCTION: "function",
    ObjectType.OBJECT_PROCEDURE: "procedure", ObjectType.OBJECT_ROUTINE: "routine",
    ObjectType.OBJECT_AGGREGATE: "aggregate", ObjectType.OBJECT_TYPE: "type",
    ObjectType.OBJECT_DOMAIN: "domain", ObjectType.OBJECT_SEQUENCE: "sequence",
    ObjectType.OBJECT_FOREIGN_TABLE: "foreign table", ObjectType.OBJECT_ATTRIBUTE: "attribute",
    ObjectType.OBJECT_TABCONSTRAINT: "constraint", ObjectType.OBJECT_EXTENSION: "extension",
    ObjectType.OBJECT_OPERATOR: "operator", ObjectType.OBJECT_COLLATION: "collation",
    ObjectType.OBJECT_CAST: "cast", ObjectType.OBJECT_DOMCONSTRAINT: "domain constraint",
}
_RELATIONS = frozenset({ObjectType.OBJECT_TABLE, ObjectType.OBJECT_VIEW,
                        ObjectType.OBJECT_MATVIEW, ObjectType.OBJECT_SEQUENCE,
                        ObjectType.OBJECT_FOREIGN_TABLE})
# Dropped columns are ALTER TABLE commands (below); dropping a constraint breaks no query.
_DROPPED = frozenset(_KINDS) - {ObjectType.OBJECT_TABCONSTRAINT, ObjectType.OBJECT_COLUMN,
                                ObjectType.OBJECT_ATTRIBUTE}


def _object_name(node: object, ctx: RevisionContext) -> str:
    if isinstance(node, ast.String):
        return node.sval or ""
    if isinstance(node, ast.ObjectWithArgs):
        return ".".join(ctx.qualify_names(node.objname))
    if isinstance(node, ast.TypeName):
        return ".".join(ctx.qualify_names(node.names))
    return ".".join(ctx.qualify_names(node))


def _no_default(cmd: ast.AlterTableCmd) -> bool:
    """DROP DEFAULT, SET DEFAULT NULL, DROP IDENTITY."""
    if cmd.subtype == AlterTableType.AT_DropIdentity:
        return True
    value = cmd.def_
    return value is None or (isinstance(value, ast.A_Const) and bool(value.isnull))


def _changes(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    node = stmt.node
    if isinstance(node, ast.DropStmt) and node.removeType in _DROPPED:
        kind = _KINDS[node.removeType]
        for names in seq(node.objects):
            if node.removeType in _RELATIONS and ctx.qualify_names(names) in ctx.new_tables:
                continue
            yield f"DROP {kind.upper()} {_object_name(names, ctx)}"
    elif isinstance(node, ast.RenameStmt) and node.renameType in _KINDS:
        if node.relation is not None and ctx.is_new_table(node.relation):
            return
        what = node.subname or (node.relation.relname if node.relation else
                                _object_name(node.object, ctx))
        yield f"RENAME {_KINDS[node.renameType]} {what}"
    elif isinstance(node, ast.AlterEnumStmt) and node.oldVal:
        yield (f"RENAME VALUE {node.oldVal!r} of type {'.'.join(ctx.qualify_names(node.typeName))}"
               " (running code still writes the old value)")
    elif isinstance(node, ast.AlterObjectSchemaStmt):
        if node.relation is None or not ctx.is_new_table(node.relation):
            yield f"SET SCHEMA {node.newschema}"
    for alter, cmd in alter_commands(stmt):
        if ctx.is_new_table(alter.relation):
            continue
        table = ctx.qualify(alter.relation)
        where = f"{'.'.join(table)}.{cmd.name}"
        if cmd.subtype == AlterTableType.AT_DropColumn:
            yield f"DROP COLUMN {where}"
        elif cmd.subtype == AlterTableType.AT_DropConstraint:
            yield (f"DROP CONSTRAINT {cmd.name} on {'.'.join(table)} (running code may rely "
                   "on it: ON CONFLICT on a unique key, a caught violation)")
        elif cmd.subtype in (AlterTableType.AT_ColumnDefault, AlterTableType.AT_DropIdentity) \
                and _no_default(cmd) and ((*table, cmd.name or "") in ctx.model.not_null
                                          or cmd.subtype == AlterTableType.AT_DropIdentity):
            yield (f"dropping the default of NOT NULL column {where} (running code that "
                   "inserts without it fails)")
        elif cmd.subtype == AlterTableType.AT_AlterColumnType and isinstance(
                cmd.def_, ast.ColumnDef):
            old = ctx.model.columns.get(table, {}).get(cmd.name or "")
            new = column_type(cmd.def_.typeName)
            if old is not None and is_narrowing(old, new):
                yield (f"narrowing {where} from {render_type(old)} to {render_type(new)} "
                       "(running code may write values that no longer fit)")


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
    kinds=(ast.DropStmt, ast.RenameStmt, ast.AlterEnumStmt, ast.AlterObjectSchemaStmt,
           ast.AlterTableStmt),
)
