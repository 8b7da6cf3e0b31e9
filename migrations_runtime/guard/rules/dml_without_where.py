"""UPDATE or DELETE without a real row filter touches (and locks) every row of the table."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, seq, walk


def backfill_hint(ctx: RevisionContext) -> str:
    """Where a whole-table data change of the revision's service goes instead."""
    return (f"services/{ctx.service}/backfills/<YYYY-MM-DDThhmm>__{ctx.service}__<slug>.sql, "
            "bounded by `id >= :start AND id < :end`, run by `svcmig backfill run`")

BAD = (
    "UPDATE users SET active = true;",
    "DELETE FROM users WHERE true;",
    "UPDATE users SET active = false WHERE 1 = 1;",
    "WITH stale AS (SELECT id FROM users WHERE last_seen < '2020-01-01')\n"
    "DELETE FROM users;",
    "UPDATE users SET plan = p.name FROM plans p;",
    "DO $$ BEGIN UPDATE users SET a = 1; END $$;",
    "DO $$\nBEGIN\n  IF true THEN\n    DELETE FROM users;\n  END IF;\nEND $$;",
)
GOOD = (
    "DELETE FROM users WHERE id = 7;",
    "UPDATE users SET plan = p.name FROM plans p WHERE users.id = p.user_id;",
    "WITH stale AS (SELECT id FROM users WHERE last_seen < '2020-01-01' ORDER BY id LIMIT 500)"
    "\nDELETE FROM users WHERE id IN (SELECT id FROM stale);",
    "CREATE FUNCTION purge() RETURNS void LANGUAGE plpgsql AS $$ BEGIN DELETE FROM users; "
    "END $$;",
    "CREATE TABLE flags (id int, on_ boolean);\nUPDATE flags SET on_ = true;",
)

_AND, _OR = 0, 1


def has_row_filter(where: ast.Node | None) -> bool:
    """True when `where` depends on the row: a constant (`true`, `1 = 1`) filters nothing."""
    if where is None:
        return False
    if isinstance(where, ast.BoolExpr):
        if where.boolop == _AND:
            return any(has_row_filter(arg) for arg in seq(where.args))
        if where.boolop == _OR:
            return all(has_row_filter(arg) for arg in seq(where.args))
        return all(has_row_filter(arg) for arg in seq(where.args))
    if isinstance(where, ast.CurrentOfExpr):
        return True
    return any(isinstance(node, ast.ColumnRef | ast.SubLink | ast.ParamRef)
               for node in walk(where))


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    if not isinstance(stmt.node, ast.SelectStmt | ast.InsertStmt | ast.UpdateStmt
                      | ast.DeleteStmt):
        return
    for node in stmt.query_nodes:
        if isinstance(node, ast.UpdateStmt | ast.DeleteStmt) and not ctx.is_new_table(
                node.relation) and not has_row_filter(node.whereClause):
            verb = "UPDATE" if isinstance(node, ast.UpdateStmt) else "DELETE"
            table = ".".join(ctx.qualify(node.relation))
            yield (f"{verb} on {table} has no row filter: it locks and rewrites every row; "
                   f"to change every row, move it to a backfill ({backfill_hint(ctx)})")


RULE = StatementRule(
    name="dml-without-where",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Add a WHERE clause that selects the rows (WHERE true / 1 = 1 do not count); to "
    "change every row of a table in use, move the statement to a backfill: "
    "services/<service>/backfills/YYYY-MM-DDThhmm__<service>__<slug>.sql, bounded by "
    "`id >= :start AND id < :end`, run in short batches after the deploy by `svcmig backfill "
    "run`.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt),
)
