"""Statements that hold ACCESS EXCLUSIVE (or block writes) on a table or view in use for as
long as they scan or rewrite it, not just for a catalog change."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast
from pglast.enums import AlterTableType, ConstrType

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, alter_commands

BAD = (
    "REFRESH MATERIALIZED VIEW signups_daily;",
    "ALTER TABLE sessions SET UNLOGGED;",
    "ALTER TABLE sessions SET LOGGED;",
    "ALTER TABLE sessions SET TABLESPACE fast;",
    "ALTER TABLE sessions SET ACCESS METHOD heap;",
    "ALTER TABLE user_events DETACH PARTITION user_events_2026_11;",
    "ALTER TABLE user_events ATTACH PARTITION user_events_2026_12\n"
    "  FOR VALUES FROM ('2026-12-01') TO ('2027-01-01');",
    "ALTER DOMAIN email_address ADD CONSTRAINT email_has_at CHECK (VALUE LIKE '%@%');",
    "ALTER DOMAIN email_address SET NOT NULL;",
    "ALTER DOMAIN email_address VALIDATE CONSTRAINT email_has_at;",
    "-- migrate:no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY users_id_idx ON users (id);\n"
    "-- next revision\n"
    "ALTER TABLE users ADD CONSTRAINT users_pkey PRIMARY KEY USING INDEX users_id_idx;",
    "ALTER TABLE bookings ADD CONSTRAINT no_overlap EXCLUDE USING gist (room WITH =);",
)
GOOD = (
    "-- migrate:no-transaction\nREFRESH MATERIALIZED VIEW CONCURRENTLY signups_daily;",
    "-- migrate:no-transaction\n"
    "ALTER TABLE user_events DETACH PARTITION user_events_2026_11 CONCURRENTLY;",
    "ALTER TABLE user_events_2026_12 ADD CONSTRAINT in_range CHECK (ts IS NOT NULL AND "
    "ts >= '2026-12-01' AND ts < '2027-01-01') NOT VALID;\n-- next revision\n"
    "ALTER TABLE user_events_2026_12 VALIDATE CONSTRAINT in_range;\n-- next revision\n"
    "ALTER TABLE user_events ATTACH PARTITION user_events_2026_12\n"
    "  FOR VALUES FROM ('2026-12-01') TO ('2027-01-01');",
    "CREATE TABLE sessions (id bigint NOT NULL, token text);\nALTER TABLE sessions SET UNLOGGED;\n"
    "CREATE UNIQUE INDEX sessions_id_idx ON sessions (id);\n"
    "ALTER TABLE sessions ADD CONSTRAINT sessions_pkey PRIMARY KEY USING INDEX sessions_id_idx;",
    "-- migrate:no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY users_id_idx ON users (id);\n"
    "-- next revision\n"
    "ALTER TABLE users ADD CONSTRAINT id_nn CHECK (id IS NOT NULL) NOT VALID;\n"
    "-- next revision\nALTER TABLE users VALIDATE CONSTRAINT id_nn;\n"
    "ALTER TABLE users ADD CONSTRAINT users_pkey PRIMARY KEY USING INDEX users_id_idx;",
)


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    node = stmt.node
    if isinstance(node, ast.RefreshMatViewStmt) and not node.concurrent and \
            not ctx.is_new_table(node.relation):
        yield (f"REFRESH MATERIALIZED VIEW {'.'.join(ctx.qualify(node.relation))} holds ACCESS "
               "EXCLUSIVE on it while it is rebuilt: every read waits")
    elif isinstance(node, ast.AlterDomainStmt):
        name = ".".join(ctx.qualify_names(node.typeName))
        constraint = node.def_
        if node.subtype == "C" and isinstance(constraint, ast.Constraint) and \
                not constraint.skip_validation:
            yield (f"ALTER DOMAIN {name} ADD CONSTRAINT scans every column of that domain, "
                   "blocking writes to their tables")
        elif node.subtype == "O":
            yield f"ALTER DOMAIN {name} SET NOT NULL scans every column of that domain"
        elif node.subtype == "V":
            yield (f"ALTER DOMAIN {name} VALIDATE CONSTRAINT scans every column of that domain "
                   "under a SHARE lock on each table using it: writes wait")
    for alter, cmd in alter_commands(stmt):
        if ctx.is_new_table(alter.relation):
            continue
        table = ctx.qualify(alter.relation)
        yield from _alter(cmd, table, ctx)


def _alter(cmd: ast.AlterTableCmd, table: tuple[str, str], ctx: RevisionContext
           ) -> Iterator[str]:
    where = ".".join(table)
    subtype = cmd.subtype
    if subtype in (AlterTableType.AT_SetLogged, AlterTableType.AT_SetUnLogged):
        kind = "LOGGED" if subtype == AlterTableType.AT_SetLogged else "UNLOGGED"
        yield f"SET {kind} rewrites {where} and its indexes under ACCESS EXCLUSIVE"
    elif subtype in (AlterTableType.AT_SetAccessMethod, AlterTableType.AT_SetTableSpace):
        kind = "ACCESS METHOD" if subtype == AlterTableType.AT_SetAccessMethod else "TABLESPACE"
        yield f"SET {kind} rewrites {where} under ACCESS EXCLUSIVE"
    elif subtype == AlterTableType.AT_DetachPartition and isinstance(
            cmd.def_, ast.PartitionCmd) and not cmd.def_.concurrent:
        yield (f"DETACH PARTITION without CONCURRENTLY takes ACCESS EXCLUSIVE on {where}, the "
               "partitioned table: every query on it waits")
    elif subtype == AlterTableType.AT_AttachPartition and isinstance(cmd.def_, ast.PartitionCmd):
        partition = ctx.qualify(cmd.def_.name)
        if partition not in ctx.new_tables and partition not in ctx.model.checked:
            yield (f"ATTACH PARTITION {'.'.join(partition)} scans it under ACCESS EXCLUSIVE to "
                   "prove its bound: no validated CHECK matching the bound comes first")
    elif subtype == AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
        constraint = cmd.def_
        if constraint.contype == ConstrType.CONSTR_EXCLUSION:
            yield f"EXCLUDE constraint on {where} builds its index while writes are blocked"
        elif constraint.contype == ConstrType.CONSTR_PRIMARY and constraint.indexname:
            keys = ctx.model.index_columns.get((table[0], constraint.indexname), ())
            unproven = [k for k in keys if (*table, k) not in ctx.model.not_null]
            if unproven:  # an index the guard did not see created: it cannot tell
                yield (f"PRIMARY KEY USING INDEX on {where} sets its columns NOT NULL, which "
                       "scans the table under ACCESS EXCLUSIVE unless a validated CHECK (… IS "
                       "NOT NULL) proves them first")


RULE = StatementRule(
    name="blocking-table-operation",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Use the non-blocking form: REFRESH … CONCURRENTLY and DETACH … CONCURRENTLY (no-"
    "transaction revision); a validated CHECK matching the bound (with `col IS NOT NULL`) "
    "before ATTACH; a CHECK on the table instead of a domain constraint (a domain's "
    "VALIDATE blocks writes too); a validated CHECK (col IS NOT NULL) before PRIMARY "
    "KEY USING INDEX; for SET LOGGED/UNLOGGED, a new table filled in batches.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.RefreshMatViewStmt, ast.AlterDomainStmt, ast.AlterTableStmt),
)
