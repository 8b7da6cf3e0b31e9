"""ADD COLUMN with a volatile default (random(), clock_timestamp(), serial) rewrites the table."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast
from pglast.enums import AlterTableType, ConstrType

from ..findings import Severity, StatementRule
from ..sqltree import (
    RevisionContext,
    Statement,
    alter_commands,
    column_type,
    function_names,
    seq,
)

BAD = (
    "ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid();",
    "ALTER TABLE users ADD COLUMN jitter float8 DEFAULT random();",
    "ALTER TABLE users ADD COLUMN seen_at timestamptz DEFAULT clock_timestamp();",
    "ALTER TABLE users ADD COLUMN seq bigserial;",
)
GOOD = (
    "ALTER TABLE users ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();",
    "ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'free';",
    "CREATE TABLE devices (id int);\n"
    "ALTER TABLE devices ADD COLUMN token uuid DEFAULT gen_random_uuid();",
)

VOLATILE_FUNCTIONS = frozenset({
    "random", "random_normal", "gen_random_uuid", "uuidv4", "uuidv7", "uuid_generate_v1",
    "uuid_generate_v1mc", "uuid_generate_v4", "clock_timestamp", "timeofday", "nextval",
    "setseed", "txid_current", "pg_current_xact_id",
})
SERIAL_TYPES = frozenset({"smallserial", "serial", "bigserial", "serial2", "serial4", "serial8"})
_REWRITING = (ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED)


def _rewrite_reason(column: ast.ColumnDef, pg_version: int) -> str | None:
    type_name = column_type(column.typeName)[0]
    if type_name in SERIAL_TYPES:
        return f"its type {type_name} fills it from nextval()"
    for constraint in seq(column.constraints):
        if not isinstance(constraint, ast.Constraint):
            continue
        if constraint.contype in _REWRITING:
            return "an identity or stored generated column is computed for every row"
        if constraint.contype != ConstrType.CONSTR_DEFAULT:
            continue
        volatile = sorted(set(function_names(constraint.raw_expr)) & VOLATILE_FUNCTIONS)
        if volatile:
            return f"its default calls volatile {', '.join(f + '()' for f in volatile)}"
        if pg_version < 11:
            return "before PostgreSQL 11 any default is written into every row"
    return None


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    for alter, cmd in alter_commands(stmt):
        if (cmd.subtype == AlterTableType.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef)
                and not ctx.is_new_table(alter.relation)):
            reason = _rewrite_reason(cmd.def_, ctx.pg_version)
            if reason:
                table = ".".join(ctx.qualify(alter.relation))
                yield (f"adding column {cmd.def_.colname} rewrites {table} under an ACCESS "
                       f"EXCLUSIVE lock: {reason}")


RULE = StatementRule(
    name="volatile-default",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Add the column without a default (or with a constant / now()), then set the default "
    "and backfill existing rows in batches.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.AlterTableStmt,),
)
