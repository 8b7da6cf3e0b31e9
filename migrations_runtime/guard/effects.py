"""What a statement does to tables that existed before its revision, as the rules need it: the
strong locks it takes (held until the revision commits, in a transactional revision) and the
work it does under them (scans, rewrites, index builds, row changes).

Lock modes are PostgreSQL's (docs: "13.3.1. Table-Level Locks" and each command's reference
page, e.g. ALTER TABLE: "ACCESS EXCLUSIVE unless explicitly noted"). "Strong" means SHARE or
above: it blocks writes (SHARE) or everything (ACCESS EXCLUSIVE).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pglast import ast
from pglast.enums import AlterTableType, ConstrType, LockClauseStrength, ObjectType

from .sqltree import (
    Qualified,
    RevisionContext,
    Statement,
    alter_commands,
    column_type,
    seq,
    walk,
)

ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"
SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"
SHARE = "SHARE"

# ALTER TABLE subcommands that take less than ACCESS EXCLUSIVE (ALTER TABLE's reference page).
_WEAK_ALTERS = frozenset({
    AlterTableType.AT_ValidateConstraint,  # SHARE UPDATE EXCLUSIVE
    AlterTableType.AT_SetStatistics, AlterTableType.AT_SetOptions,
    AlterTableType.AT_ResetOptions, AlterTableType.AT_ClusterOn,
    AlterTableType.AT_DropCluster, AlterTableType.AT_SetRelOptions,
    AlterTableType.AT_ResetRelOptions, AlterTableType.AT_AttachPartition,
})
_LOCK_MODES = {5: SHARE, 6: SHARE_ROW_EXCLUSIVE, 7: "EXCLUSIVE", 8: ACCESS_EXCLUSIVE}
_ROW_LOCKS = {LockClauseStrength.LCS_FORUPDATE: "FOR UPDATE",
              LockClauseStrength.LCS_FORNOKEYUPDATE: "FOR NO KEY UPDATE",
              LockClauseStrength.LCS_FORSHARE: "FOR SHARE",
              LockClauseStrength.LCS_FORKEYSHARE: "FOR KEY SHARE"}


@dataclass(frozen=True)
class Lock:
    table: Qualified
    mode: str
    what: str  # the command, for messages: "ALTER TABLE", "CREATE INDEX"


@dataclass(frozen=True)
class Work:
    table: Qualified
    what: str  # "UPDATE", "VALIDATE CONSTRAINT c", "CREATE INDEX", …


def _existing(ctx: RevisionContext, relation: ast.RangeVar | None) -> bool:
    return relation is not None and bool(relation.relname) and not ctx.is_new_table(relation)


def strong_locks(stmt: Statement, ctx: RevisionContext) -> Iterator[Lock]:
    """The SHARE-or-stronger table locks `stmt` takes on tables that existed before."""
    node = stmt.node
    if isinstance(node, ast.AlterTableStmt) and _existing(ctx, node.relation):
        table = ctx.qualify(node.relation)
        modes = set()
        for _, cmd in alter_commands(stmt):
            if cmd.subtype in _WEAK_ALTERS:
                continue
            foreign = (cmd.subtype == AlterTableType.AT_AddConstraint
                       and isinstance(cmd.def_, ast.Constraint)
                       and cmd.def_.contype == ConstrType.CONSTR_FOREIGN)
            modes.add(SHARE_ROW_EXCLUSIVE if foreign else ACCESS_EXCLUSIVE)
        if modes:
            mode = ACCESS_EXCLUSIVE if ACCESS_EXCLUSIVE in modes else SHARE_ROW_EXCLUSIVE
            yield Lock(table, mode, "ALTER TABLE")
    elif isinstance(node, ast.IndexStmt) and not node.concurrent and _existing(
            ctx, node.relation):
        yield Lock(ctx.qualify(node.relation), SHARE, "CREATE INDEX")
    elif isinstance(node, ast.CreateTrigStmt) and _existing(ctx, node.relation):
        yield Lock(ctx.qualify(node.relation), SHARE_ROW_EXCLUSIVE, "CREATE TRIGGER")
    elif isinstance(node, ast.RefreshMatViewStmt) and not node.concurrent and _existing(
            ctx, node.relation):
        yield Lock(ctx.qualify(node.relation), ACCESS_EXCLUSIVE, "REFRESH MATERIALIZED VIEW")
    elif isinstance(node, ast.RenameStmt) and _existing(ctx, node.relation) and \
            node.renameType != ObjectType.OBJECT_INDEX:
        yield Lock(ctx.qualify(node.relation), ACCESS_EXCLUSIVE, "RENAME")
    elif isinstance(node, ast.TruncateStmt):
        for rel in seq(node.relations):
            if isinstance(rel, ast.RangeVar) and _existing(ctx, rel):
                yield Lock(ctx.qualify(rel), ACCESS_EXCLUSIVE, "TRUNCATE")
    elif isinstance(node, ast.LockStmt) and node.mode in _LOCK_MODES:
        for rel in seq(node.relations):
            if isinstance(rel, ast.RangeVar) and _existing(ctx, rel):
                yield Lock(ctx.qualify(rel), _LOCK_MODES[node.mode], "LOCK TABLE")


def _writes(node: ast.Node) -> tuple[ast.RangeVar | None, str] | None:
    if isinstance(node, ast.UpdateStmt):
        return node.relation, "UPDATE"
    if isinstance(node, ast.DeleteStmt):
        return node.relation, "DELETE"
    if isinstance(node, ast.MergeStmt):
        return node.relation, "MERGE"
    if isinstance(node, ast.InsertStmt) and node.selectStmt is not None and any(
            isinstance(n, ast.RangeVar) for n in walk(node.selectStmt)):
        return node.relation, "INSERT … SELECT"
    return None


def _one_row(select: ast.SelectStmt, ctx: RevisionContext) -> bool:
    """A SELECT bounded by the key of the table it reads (or a LIMIT)."""
    from .rules.unbatched_data_change import select_bounded

    return select_bounded(select, ctx)


def _few_rows(node: ast.Node, ctx: RevisionContext) -> bool:
    """An UPDATE/DELETE whose filter bounds its rows by the key: short, even under a lock."""
    from .rules.unbatched_data_change import bounded_by_key

    return isinstance(node, ast.UpdateStmt | ast.DeleteStmt) and bounded_by_key(node, ctx)


def heavy_work(stmt: Statement, ctx: RevisionContext) -> Iterator[Work]:
    """What in `stmt` reads or rewrites many rows of a table that existed before: row changes,
    locking reads, validation scans, index builds, rewrites."""
    node = stmt.node
    for inner in stmt.query_nodes:
        written = _writes(inner)
        if written and _existing(ctx, written[0]) and not _few_rows(inner, ctx):
            yield Work(ctx.qualify(written[0]), written[1])
        if isinstance(inner, ast.SelectStmt) and inner.lockingClause and not _one_row(inner,
                                                                                     ctx):
            strength = next((c.strength for c in seq(inner.lockingClause)
                             if isinstance(c, ast.LockingClause)), None)
            for rel in seq(inner.fromClause):
                if isinstance(rel, ast.RangeVar) and _existing(ctx, rel):
                    row_lock = _ROW_LOCKS.get(strength, "FOR") if strength else "FOR"
                    yield Work(ctx.qualify(rel), f"SELECT … {row_lock}")
    copied = node.query if isinstance(node, ast.CreateTableAsStmt) else (
        node.selectStmt if isinstance(node, ast.InsertStmt) else None)
    if isinstance(copied, ast.SelectStmt):  # CREATE TABLE … AS / INSERT … SELECT reads it all
        for rel in seq(copied.fromClause):
            if isinstance(rel, ast.RangeVar) and _existing(ctx, rel) and not _one_row(copied,
                                                                                      ctx):
                yield Work(ctx.qualify(rel), "a copy of")
    if isinstance(node, ast.IndexStmt) and not node.concurrent and _existing(ctx, node.relation):
        yield Work(ctx.qualify(node.relation), "CREATE INDEX")
    elif isinstance(node, ast.RefreshMatViewStmt) and _existing(ctx, node.relation):
        yield Work(ctx.qualify(node.relation), "REFRESH MATERIALIZED VIEW")
    elif isinstance(node, ast.ClusterStmt) and _existing(ctx, node.relation):
        yield Work(ctx.qualify(node.relation), "CLUSTER")
    for alter, cmd in alter_commands(stmt):
        if not _existing(ctx, alter.relation):
            continue
        table = ctx.qualify(alter.relation)
        what = _alter_work(cmd, table, ctx)
        if what:
            yield Work(table, what)


def _alter_work(cmd: ast.AlterTableCmd, table: Qualified, ctx: RevisionContext) -> str | None:
    subtype = cmd.subtype
    if subtype == AlterTableType.AT_ValidateConstraint:
        return f"VALIDATE CONSTRAINT {cmd.name}"
    if subtype in (AlterTableType.AT_SetLogged, AlterTableType.AT_SetUnLogged):
        return "SET LOGGED" if subtype == AlterTableType.AT_SetLogged else "SET UNLOGGED"
    if subtype == AlterTableType.AT_SetNotNull and (*table, cmd.name or "") not in \
            ctx.model.not_null:
        return f"SET NOT NULL on {cmd.name}"
    if subtype == AlterTableType.AT_AlterColumnType and isinstance(cmd.def_, ast.ColumnDef):
        from .rules.column_type_change import is_widening

        old = ctx.model.columns.get(table, {}).get(cmd.name or "")
        new = column_type(cmd.def_.typeName)
        if old is not None and cmd.def_.raw_default is None and is_widening(old, new):
            return None  # binary compatible: no rewrite
        return f"ALTER COLUMN {cmd.name} TYPE"
    if subtype in (AlterTableType.AT_SetAccessMethod, AlterTableType.AT_SetTableSpace):
        return "SET ACCESS METHOD" if subtype == AlterTableType.AT_SetAccessMethod \
            else "SET TABLESPACE"
    if subtype == AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
        constraint = cmd.def_
        if constraint.contype in (ConstrType.CONSTR_CHECK, ConstrType.CONSTR_FOREIGN) and \
                not constraint.skip_validation:
            return "ADD CONSTRAINT (validated)"
        if constraint.contype in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY,
                                  ConstrType.CONSTR_EXCLUSION) and not constraint.indexname:
            return "ADD CONSTRAINT (index build)"
    if subtype == AlterTableType.AT_AttachPartition:
        return "ATTACH PARTITION (scans the partition)"
    return None
