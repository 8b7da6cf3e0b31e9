"""A revision may create, alter or write objects only in its own service's schema."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast
from pglast.enums import ObjectType

from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, seq, walk

BAD = (
    "INSERT INTO orders.orders (id) VALUES (1);",
    "UPDATE orders.orders SET status = 'x' WHERE id = 1;",
    "ALTER TABLE orders.orders ADD COLUMN note text;",
    "CREATE TABLE orders.shadow (id int);",
    "-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY o_idx ON orders.orders (id);",
    "DROP TABLE IF EXISTS orders.orders;",
    "CREATE FUNCTION orders.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
    "WITH moved AS (DELETE FROM orders.outbox WHERE id = 1 RETURNING id)\n"
    "INSERT INTO users.audit (id) SELECT id FROM moved;",
    "GRANT SELECT ON orders.orders TO users_app;",
)
GOOD = (
    "INSERT INTO users.audit (id) SELECT id FROM orders.orders WHERE id = 1;",
    "CREATE TABLE users.devices (id int);",
    "CREATE VIEW user_orders AS SELECT * FROM orders.orders;",
    "INSERT INTO audit (note) VALUES ('INSERT INTO orders.orders VALUES (1)');",
    "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ DELETE FROM orders.outbox $$;",
)

# Statement type → attributes naming what it creates, alters or writes.
_RELATION_TARGETS: dict[type, tuple[str, ...]] = {
    ast.CreateStmt: ("relation",),
    ast.ViewStmt: ("view",),
    ast.CreateSeqStmt: ("sequence",),
    ast.AlterSeqStmt: ("sequence",),
    ast.AlterTableStmt: ("relation",),
    ast.IndexStmt: ("relation",),
    ast.RenameStmt: ("relation",),
    ast.AlterObjectSchemaStmt: ("relation",),
    ast.TruncateStmt: ("relations",),
    ast.ClusterStmt: ("relation",),
    ast.ReindexStmt: ("relation",),
    ast.CreateTrigStmt: ("relation",),
    ast.RuleStmt: ("relation",),
    ast.CopyStmt: ("relation",),
    ast.CreatePolicyStmt: ("table",),
    ast.LockStmt: ("relations",),
    ast.CompositeTypeStmt: ("typevar",),
}
_NAME_TARGETS: dict[type, str] = {
    ast.CreateFunctionStmt: "funcname",
    ast.DefineStmt: "defnames",
    ast.CreateEnumStmt: "typeName",
    ast.AlterEnumStmt: "typeName",
    ast.CreateDomainStmt: "domainname",
}


def _schemas(value: object) -> Iterator[str | None]:
    if isinstance(value, ast.RangeVar):
        yield value.schemaname
    elif isinstance(value, ast.VacuumRelation):
        yield from _schemas(value.relation)
    elif isinstance(value, tuple):
        for item in value:
            yield from _schemas(item)


def _dotted_schema(names: object) -> str | None:
    parts = [n.sval for n in names if isinstance(n, ast.String)] if isinstance(
        names, tuple) else []
    return parts[-2] if len(parts) > 1 else None


def target_schemas(node: ast.Node) -> Iterator[str | None]:
    """Schemas of the objects `node` creates, alters or writes (None: unqualified)."""
    for attribute in _RELATION_TARGETS.get(type(node), ()):
        yield from _schemas(getattr(node, attribute, None))
    if type(node) in _NAME_TARGETS:
        yield _dotted_schema(getattr(node, _NAME_TARGETS[type(node)], None))
    if isinstance(node, ast.CreateTableAsStmt) and node.into is not None:
        yield next(_schemas(node.into.rel), None)
    elif isinstance(node, ast.AlterObjectSchemaStmt):
        yield node.newschema
    elif isinstance(node, ast.VacuumStmt):
        yield from _schemas(node.rels)
    elif isinstance(node, ast.CreateSchemaStmt):
        yield node.schemaname
    elif isinstance(node, ast.DropStmt):
        for names in seq(node.objects):
            if node.removeType == ObjectType.OBJECT_SCHEMA and isinstance(names, ast.String):
                yield names.sval
            else:
                yield _dotted_schema(names)
    elif isinstance(node, ast.GrantStmt):
        for target in node.objects or ():
            yield target.sval if isinstance(target, ast.String) else next(_schemas(target), None)
    elif isinstance(node, ast.SelectStmt | ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt
                    | ast.MergeStmt):
        for dml in walk(node):
            if isinstance(dml, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt):
                yield next(_schemas(dml.relation), None)


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    for schema in sorted({s for s in target_schemas(stmt.node) if s and ctx.other_service(s)}):
        yield (f"writes to schema {schema}, owned by service {schema}; service {ctx.service} "
               "may change only its own schema")


RULE = StatementRule(
    name="cross-service-write",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Make the change in a migration of the owning service; read across services through "
    "views or APIs the owner grants.",
    check=check,
    bad=BAD,
    good=GOOD,
)
