"""A data change (or locking read) on a table in use whose filter does not bound the rows by a
key range or a batch touches, locks and logs every matching row in one transaction; a filter
such as `plan IS NULL` after adding `plan`, or `id > 0`, matches the whole table."""

from __future__ import annotations

from collections.abc import Iterator
from contextvars import ContextVar

from pglast import ast
from pglast.enums import A_Expr_Kind, OnConflictAction

from ..findings import Severity, StatementRule
from ..sqltree import Qualified, RevisionContext, Statement, last_name, seq, walk
from .dml_without_where import backfill_hint, has_row_filter

BAD = (
    "ALTER TABLE users ADD COLUMN plan text;\n-- next revision\n"
    "UPDATE users SET plan = 'free' WHERE plan IS NULL;",
    "UPDATE users SET active = true WHERE id > 0;",
    "DELETE FROM users WHERE last_seen < '2020-01-01';",
    "SELECT user_id FROM user_settings FOR UPDATE;",
    "SELECT id FROM users WHERE plan = 'free' FOR SHARE;",
    "MERGE INTO users u USING imports i ON u.email = i.email\n"
    "WHEN MATCHED THEN UPDATE SET name = i.name;",
    "INSERT INTO user_totals (user_id, n) SELECT user_id, count(*) FROM orders.orders "
    "GROUP BY user_id\nON CONFLICT (user_id) DO UPDATE SET n = EXCLUDED.n;",
    "UPDATE users SET plan = p.name FROM plans p WHERE users.plan_id = p.id;",
    "WITH stale AS (SELECT id FROM users WHERE last_seen < '2020-01-01')\n"
    "DELETE FROM users WHERE id IN (SELECT id FROM stale);",
)
GOOD = (
    "UPDATE users SET plan = 'free' WHERE id >= 1 AND id < 10001 AND plan IS NULL;",
    "UPDATE users SET plan = 'free' WHERE id BETWEEN 10001 AND 20000;",
    "DELETE FROM users WHERE id = 42;",
    "DELETE FROM users WHERE id IN (1, 2, 3);",
    "UPDATE users SET plan = 'free' WHERE id IN (SELECT id FROM users WHERE plan IS NULL "
    "ORDER BY id LIMIT 1000);",
    "DELETE FROM users USING banned b WHERE users.id = b.user_id;",
    "SELECT id FROM users WHERE id = 1 FOR UPDATE;",
    "CREATE TABLE plans (id int PRIMARY KEY, name text);\nUPDATE plans SET name = 'x';",
    "INSERT INTO user_totals (user_id, n) VALUES (1, 0) ON CONFLICT (user_id) DO NOTHING;",
)

_AND = 0
_LOWER, _UPPER = frozenset({">", ">="}), frozenset({"<", "<="})


def _column(node: object, names: frozenset[str] | None = None) -> str | None:
    """The column `node` names, if it is one of the target's (`names`: the target's name and
    alias; None: any table's)."""
    if not isinstance(node, ast.ColumnRef):
        return None
    parts = [f.sval for f in seq(node.fields) if isinstance(f, ast.String)]
    if names is not None and len(parts) > 1 and parts[-2] not in names:
        return None
    return parts[-1] if parts else None


# The PL/pgSQL variables of the DO block the statement being checked comes from.
_VARIABLES: ContextVar[frozenset[str]] = ContextVar("plpgsql_variables", default=frozenset())


def _constant(node: object) -> bool:
    """No column of any table: a literal, a parameter, a DO block's variable, an expression of
    those."""
    variables = _VARIABLES.get()
    return node is not None and not any(
        isinstance(n, ast.SubLink) or (isinstance(n, ast.ColumnRef) and not (
            len(n.fields or ()) == 1 and last_name(n.fields) in variables))
        for n in walk(node))


_OR = 1


def _conjuncts(where: ast.Node | None) -> list[ast.Node]:
    if isinstance(where, ast.BoolExpr) and where.boolop == _AND:
        return [c for arg in seq(where.args) for c in _conjuncts(arg)]
    return [where] if where is not None else []


def _joined(node: object, names: frozenset[str] | None, ctes: dict[str, ast.Node] | None
            ) -> bool:
    """`key = other.col` bounds the rows by another relation's: not the target itself
    (`id = id`, a self-join), and a CTE only when it is batched itself."""
    if not isinstance(node, ast.ColumnRef):
        return False
    parts = [str(f.sval) for f in seq(node.fields) if isinstance(f, ast.String)]
    if len(parts) < 2 or names is None or parts[-2] in names:
        return False
    cte = (ctes or {}).get(parts[-2])
    return cte is None or _batched_subquery(cte, (parts[-1],), {})


def _batched_subquery(node: ast.Node | None, keys: tuple[str, ...],
                      ctes: dict[str, ast.Node]) -> bool:
    """A sub-select with a LIMIT or a key-bounded filter, itself or through the CTE it reads."""
    select = node.subselect if isinstance(node, ast.SubLink) else node
    if not isinstance(select, ast.SelectStmt):
        return False
    if select.valuesLists:  # IN (VALUES (1), (2))
        return True
    if _limited(select) or key_bounded(select.whereClause, keys, None, ctes):
        return True
    sources = [r for r in seq(select.fromClause) if isinstance(r, ast.RangeVar)]
    return len(sources) == 1 and not sources[0].schemaname and _batched_subquery(
        ctes.get(sources[0].relname or ""), keys, {})


def _limited(select: ast.SelectStmt) -> bool:
    """A LIMIT of a constant number (not LIMIT ALL / NULL / a sub-select)."""
    limit = select.limitCount
    return isinstance(limit, ast.A_Const) and not limit.isnull and isinstance(
        limit.val, ast.Integer)


def _names(relation: ast.RangeVar | None) -> frozenset[str]:
    if relation is None:
        return frozenset()
    alias = relation.alias.aliasname if relation.alias else None
    return frozenset(n for n in (relation.relname, alias) if n)


def key_bounded(where: ast.Node | None, keys: tuple[str, ...],
                names: frozenset[str] | None = None,
                ctes: dict[str, ast.Node] | None = None) -> bool:
    """True when `where` bounds the rows by the key `keys` (any of them): `key = value`,
    `key IN (values)`, `key = ANY(array)`, `key BETWEEN a AND b`, both a lower and an upper
    bound, `key IN (SELECT … LIMIT n)`, a join on the key (`key = other.col`), CURRENT OF."""
    lower: set[str] = set()
    upper: set[str] = set()
    for conjunct in _conjuncts(where):
        if isinstance(conjunct, ast.CurrentOfExpr):
            return True
        if isinstance(conjunct, ast.BoolExpr) and conjunct.boolop == _OR and all(
                key_bounded(arg, keys, names, ctes) for arg in seq(conjunct.args)):
            return True  # id = 1 OR id = 2
        if isinstance(conjunct, ast.SubLink) and (_column(conjunct.testexpr, names) or "") in keys:
            if _batched_subquery(conjunct, keys, ctes or {}):
                return True
            continue
        if not isinstance(conjunct, ast.A_Expr):
            continue
        op = last_name(conjunct.name)
        left: object = conjunct.lexpr
        right: object = conjunct.rexpr  # a node, or a tuple (IN lists)
        kind = conjunct.kind
        if (_column(left, names) or "") not in keys and (_column(right, names) or "") in keys:
            left, right = right, left
            op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
        column = _column(left, names)
        if column is None or column not in keys:
            continue
        if kind in (A_Expr_Kind.AEXPR_IN, A_Expr_Kind.AEXPR_BETWEEN,
                    A_Expr_Kind.AEXPR_BETWEEN_SYM) and _constant(right):
            return True
        if kind == A_Expr_Kind.AEXPR_OP_ANY and _constant(right):
            return True
        if kind == A_Expr_Kind.AEXPR_OP and op == "=" and (
                _constant(right) or _joined(right, names, ctes)):
            return True
        if kind == A_Expr_Kind.AEXPR_OP and _constant(right):
            if op in _LOWER:
                lower.add(column)
            elif op in _UPPER:
                upper.add(column)
    return bool(lower & upper)


def select_bounded(select: ast.SelectStmt, ctx: RevisionContext) -> bool:
    """Whether a SELECT reads few rows: a LIMIT, or a filter bounded by the key of a table it
    reads."""
    return _limited(select) or any(
        key_bounded(select.whereClause, _keys(ctx, ctx.qualify(rel)), _names(rel))
        for rel in _relations(select.fromClause))


def bounded_by_key(node: ast.UpdateStmt | ast.DeleteStmt, ctx: RevisionContext) -> bool:
    """Whether an UPDATE/DELETE's filter bounds its rows by the table's key."""
    table = ctx.qualify(node.relation)
    return key_bounded(node.whereClause, _keys(ctx, table), _names(node.relation))


def _keys(ctx: RevisionContext, table: Qualified) -> tuple[str, ...]:
    """The table's primary key when the guard saw it, else `id` (the usual convention); its
    last column for a composite key (`tenant_id = 1` alone bounds nothing); `ctid` too."""
    return (*(ctx.model.primary_keys.get(table) or ("id",))[-1:], "ctid")


def _relations(items: tuple[ast.Node, ...] | None) -> Iterator[ast.RangeVar]:
    """The tables of a FROM list, joins included."""
    for item in seq(items):
        if isinstance(item, ast.RangeVar):
            yield item
        elif isinstance(item, ast.JoinExpr):
            yield from _relations(tuple(n for n in (item.larg, item.rarg) if n is not None))
        elif isinstance(item, ast.RangeSubselect) and isinstance(item.subquery, ast.SelectStmt):
            yield from _relations(item.subquery.fromClause)


def _ctes(node: ast.Node) -> dict[str, ast.Node]:
    """The statement's WITH queries by name."""
    clause = getattr(node, "withClause", None)
    return {c.ctename: c.ctequery for c in seq(clause.ctes if clause else None)
            if isinstance(c, ast.CommonTableExpr) and c.ctename and c.ctequery is not None}


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    token = _VARIABLES.set(stmt.variables)
    try:
        yield from _check(stmt, ctx)
    finally:
        _VARIABLES.reset(token)


def _check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    ctes = _ctes(stmt.node)
    for node in stmt.query_nodes:
        target: ast.RangeVar | None = None
        where: ast.Node | None = None
        joined: tuple[ast.Node, ...] | None = None
        verb = ""
        if isinstance(node, ast.UpdateStmt | ast.DeleteStmt):
            target, where = node.relation, node.whereClause
            verb = "UPDATE" if isinstance(node, ast.UpdateStmt) else "DELETE"
            joined = node.fromClause if isinstance(node, ast.UpdateStmt) else node.usingClause
            if not has_row_filter(where):
                continue  # dml-without-where says it
        elif isinstance(node, ast.MergeStmt):
            target, where, verb = node.relation, node.joinCondition, "MERGE"
        elif isinstance(node, ast.InsertStmt) and node.onConflictClause is not None and \
                node.onConflictClause.action == OnConflictAction.ONCONFLICT_UPDATE and \
                isinstance(node.selectStmt, ast.SelectStmt) and node.selectStmt.fromClause:
            select = node.selectStmt
            if not _limited(select) and not any(
                    isinstance(r, ast.RangeVar) and key_bounded(
                        select.whereClause, _keys(ctx, ctx.qualify(r)), _names(r))
                    for r in seq(select.fromClause)):
                yield (f"INSERT … SELECT … ON CONFLICT DO UPDATE on "
                       f"{'.'.join(ctx.qualify(node.relation))} updates every row the SELECT "
                       f"matches in one transaction; move it to a backfill ({backfill_hint(ctx)})")
            continue
        elif isinstance(node, ast.SelectStmt) and node.lockingClause:
            locked = {n.relname for c in seq(node.lockingClause) if isinstance(c, ast.LockingClause)
                      for n in seq(c.lockedRels) if isinstance(n, ast.RangeVar)}
            for rel in _relations(node.fromClause):
                if locked and not _names(rel) & locked:
                    continue  # FOR UPDATE OF another relation
                if not ctx.is_new_table(rel) and not _limited(node) and not key_bounded(
                        node.whereClause, _keys(ctx, ctx.qualify(rel)), _names(rel), ctes):
                    yield (f"SELECT … FOR UPDATE/SHARE on {'.'.join(ctx.qualify(rel))} "
                           "row-locks every matching row until the revision commits")
            continue
        if target is None or ctx.is_new_table(target):
            continue
        table = ctx.qualify(target)
        if stmt.repeated:
            yield (f"{verb} on {'.'.join(table)} runs once per iteration of a loop, all in one "
                   "transaction: every row it changes stays locked until the block ends; move "
                   f"it to a backfill ({backfill_hint(ctx)})")
            continue
        # the target's own names, and aliases of the same table joined to it (a self-join)
        names = _names(target) | {n for r in _relations(joined) if r.relname == target.relname
                                  for n in _names(r)}
        if not key_bounded(where, _keys(ctx, table), names, ctes):
            yield (f"{verb} on {'.'.join(table)} is not bounded by a key range or batch: "
                   "it changes and locks every matching row in one transaction; move it to a "
                   f"backfill ({backfill_hint(ctx)})")


RULE = StatementRule(
    name="unbatched-data-change",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Move the data change to a backfill: services/<service>/backfills/"
    "YYYY-MM-DDThhmm__<service>__<slug>.sql with the statement bounded by `id >= :start AND id "
    "< :end`, run in short batches after the deploy by `svcmig backfill run` (a later revision "
    "that needs it done declares `-- requires-backfill: <service>.<slug>`); or put a small, "
    "known set of keys in the WHERE.",
    check=check,
    bad=BAD,
    good=GOOD,
    kinds=(ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt),
)
