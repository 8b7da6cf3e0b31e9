"""ALTER COLUMN ... TYPE rewrites the table under an ACCESS EXCLUSIVE lock unless it only widens."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast
from pglast.enums import AlterTableType

from ..findings import Severity, StatementRule
from ..sqltree import ColumnType, RevisionContext, Statement, alter_commands, column_type

BAD = (
    "ALTER TABLE users ALTER COLUMN id TYPE bigint;",
    "CREATE TABLE notes (body varchar(200), id int);\n-- next revision\n"
    "ALTER TABLE notes ALTER COLUMN body TYPE varchar(10);",
    "CREATE TABLE notes (body varchar(200), id int);\n-- next revision\n"
    "ALTER TABLE notes ALTER COLUMN id TYPE bigint;",
    "CREATE TABLE notes (body text);\n-- next revision\n"
    "ALTER TABLE notes ALTER COLUMN body TYPE text USING upper(body);",
)
GOOD = (
    "CREATE TABLE notes (body varchar(50), price numeric(8, 2));\n-- next revision\n"
    "ALTER TABLE notes ALTER COLUMN body TYPE varchar(200),\n"
    "  ALTER COLUMN price TYPE numeric(12, 2);",
    "CREATE TABLE notes (body varchar(50));\n-- next revision\n"
    "ALTER TABLE notes ALTER COLUMN body TYPE text;",
    "CREATE TABLE notes (body varchar(50));\nALTER TABLE notes ALTER COLUMN body TYPE int "
    "USING length(body);",
)

_TEXTUAL = frozenset({"varchar", "text"})
# Targets a column of unknown type (a table adopted with `baseline`) reaches in place when it
# is textual (varchar(n) → text or varchar); from any other type the change needs USING, which
# this rule reports anyway.
_UNLIKELY_REWRITES = frozenset({("text", ()), ("varchar", ())})


def is_widening(old: ColumnType, new: ColumnType) -> bool:
    """Binary-compatible changes Postgres applies without a rewrite."""
    (old_name, old_mods), (new_name, new_mods) = old, new
    if old == new:
        return True
    if new_name == "text" and old_name in _TEXTUAL:
        return True
    if old_name == new_name == "varchar":
        return not new_mods or (bool(old_mods) and new_mods[0] >= old_mods[0])
    if old_name == new_name == "numeric":
        if not new_mods:
            return True
        if not old_mods:
            return False
        old_scale = old_mods[1] if len(old_mods) > 1 else 0
        new_scale = new_mods[1] if len(new_mods) > 1 else 0
        return new_scale == old_scale and new_mods[0] >= old_mods[0]
    return False


_LOSSY = frozenset({("float8", "float4"), ("timestamptz", "date"), ("timestamp", "date"),
                    ("timestamptz", "time"), ("timestamp", "time"), ("numeric", "float4")})
_INTEGERS = {"int2": 2, "smallint": 2, "int4": 4, "int": 4, "integer": 4, "int8": 8,
             "bigint": 8}


def is_narrowing(old: ColumnType, new: ColumnType) -> bool:
    """Values of `old` may not fit `new`: a shorter varchar, text → varchar(n), fewer integer
    digits or a smaller scale of numeric, a smaller integer."""
    (old_name, old_mods), (new_name, new_mods) = old, new
    if new_name == "varchar" and new_mods:
        if old_name == "text" or (old_name == "varchar" and not old_mods):
            return True
        return old_name == "varchar" and new_mods[0] < old_mods[0]
    if old_name == new_name == "numeric" and new_mods:
        if not old_mods:
            return True
        old_scale = old_mods[1] if len(old_mods) > 1 else 0
        new_scale = new_mods[1] if len(new_mods) > 1 else 0
        return new_mods[0] - new_scale < old_mods[0] - old_scale or new_scale < old_scale
    if old_name in _INTEGERS and new_name in _INTEGERS:
        return _INTEGERS[new_name] < _INTEGERS[old_name]
    if new_name in ("bpchar", "char") and old_name in ("text", "varchar", "bpchar", "char"):
        return bool(new_mods) and (not old_mods or new_mods[0] < old_mods[0])
    if old_name == "numeric" and new_name in _INTEGERS:
        return True  # the fraction is lost
    if (old_name, new_name) in _LOSSY:
        return True
    return old_name.endswith("[]") != new_name.endswith("[]")


def render_type(kind: ColumnType) -> str:
    name, mods = kind
    return f"{name}({', '.join(map(str, mods))})" if mods else name


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    for alter, cmd in alter_commands(stmt):
        if cmd.subtype != AlterTableType.AT_AlterColumnType or ctx.is_new_table(alter.relation):
            continue
        column = cmd.def_
        if not isinstance(column, ast.ColumnDef):
            continue
        table = ctx.qualify(alter.relation)
        new = column_type(column.typeName)
        old = ctx.model.columns.get(table, {}).get(cmd.name or "")
        where = f"{'.'.join(table)}.{cmd.name}"
        if column.raw_default is not None:
            yield f"changing the type of {where} with USING rewrites the table"
        elif column.collClause is not None:
            yield (f"changing the collation of {where} rebuilds every index on it under ACCESS "
                   "EXCLUSIVE")
        elif old is None:
            if new in _UNLIKELY_REWRITES:
                continue
            yield (f"changing the type of {where} to {render_type(new)} may rewrite the table: its "
                   "current type is not known from this service's migrations")
        elif not is_widening(old, new):
            yield (f"changing the type of {where} from {render_type(old)} to {render_type(new)} "
                   "rewrites the table")


RULE = StatementRule(
    name="column-type-change",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Add a new column of the new type, dual-write and backfill it, switch readers, then "
    "drop the old column in a contract revision. Widening varchar(n), varchar→text and "
    "numeric precision increases are safe.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.AlterTableStmt,),
)
