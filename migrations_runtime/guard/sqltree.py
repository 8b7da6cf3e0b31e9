"""What SQL rules see: one parsed statement, the revision it belongs to, and what the service's
earlier statements built (tables, column types, proven NOT NULL columns).

Names resolve the way the runner runs them: `search_path = <service>`, so an unqualified name
belongs to the revision's own service schema.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pglast import ast
from pglast.enums import AlterTableType, ConstrType, NullTestType, ObjectType

Qualified = tuple[str, str]
"""(schema, name) of a table, index or other object."""

ColumnType = tuple[str, tuple[int, ...]]
"""(type name, integer type modifiers): `varchar(20)` → ("varchar", (20,))."""


@dataclass
class Statement:
    """One top-level statement of a revision and where it starts in the file (1-based)."""

    node: ast.Node
    line: int
    column: int
    suppressions: dict[str, str] = field(default_factory=dict)
    """rule name → reason, from `-- svcmig:ignore <rule> <reason>` comments on the statement."""
    repeated: bool = False
    """Run once per iteration of a loop (in a DO block) that does not commit in between."""
    variables: frozenset[str] = frozenset()
    """In a DO block: the PL/pgSQL variables it may name (values, not columns)."""
    _nodes: list[ast.Node] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def nodes(self) -> list[ast.Node]:
        """Every node of the statement, depth first: computed once, as several rules read it."""
        if self._nodes is None:
            self._nodes = list(walk(self.node))
        return self._nodes

    @property
    def query_nodes(self) -> list[ast.Node]:
        """`nodes` of a query (SELECT, INSERT, UPDATE, DELETE, MERGE: where data changes and
        locking reads live, CTEs included); nothing for other statements, unwalked."""
        return self.nodes if isinstance(self.node, QUERIES) else []


_SLOTS: dict[type, tuple[str, ...]] = {}
QUERIES = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


def walk(node: object) -> Iterator[ast.Node]:
    """Every AST node under `node` (itself included), depth first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.Node):
            yield item
            kind = type(item)
            names = _SLOTS.get(kind)
            if names is None:
                names = _SLOTS[kind] = tuple(getattr(kind, "__slots__", ()))
            children = [getattr(item, name, None) for name in names]
            stack.extend(c for c in reversed(children) if isinstance(c, ast.Node | tuple))
        elif isinstance(item, tuple):
            stack.extend(reversed(item))


def seq(value: tuple[ast.Node, ...] | None) -> tuple[ast.Node, ...]:
    """pglast leaves empty lists as None: iterate them as ()."""
    return value or ()


def last_name(names: tuple[ast.Node, ...] | None) -> str:
    """The last part of a dotted name list (`pg_catalog.varchar` → `varchar`)."""
    parts = [n.sval for n in seq(names) if isinstance(n, ast.String) and n.sval]
    return parts[-1] if parts else ""


def column_type(type_name: ast.TypeName | None) -> ColumnType:
    if type_name is None:
        return ("", ())
    name = last_name(type_name.names)
    if type_name.arrayBounds:
        name += "[]"
    mods = tuple(
        mod.val.ival for mod in seq(type_name.typmods)
        if isinstance(mod, ast.A_Const) and isinstance(mod.val, ast.Integer)
        and mod.val.ival is not None
    )
    return (name, mods)


def not_null_columns(expr: ast.Node | None) -> tuple[str, ...]:
    """Columns a CHECK expression proves NOT NULL: `a IS NOT NULL [AND b IS NOT NULL …]`."""
    if isinstance(expr, ast.BoolExpr) and expr.boolop == 0:  # AND_EXPR
        return tuple(col for arg in seq(expr.args) for col in not_null_columns(arg))
    if (isinstance(expr, ast.NullTest) and expr.nulltesttype == NullTestType.IS_NOT_NULL
            and isinstance(expr.arg, ast.ColumnRef) and last_name(expr.arg.fields)):
        return (last_name(expr.arg.fields),)
    return ()


@dataclass
class SchemaModel:
    """What a service's revisions built so far, as far as the rules need to know it."""

    columns: dict[Qualified, dict[str, ColumnType]] = field(default_factory=dict)
    not_null: set[tuple[str, str, str]] = field(default_factory=set)
    """(schema, table, column) proven NOT NULL: NOT NULL, PRIMARY KEY or a validated CHECK."""
    unvalidated_checks: dict[tuple[str, str, str], tuple[str, ...]] = field(default_factory=dict)
    """(schema, table, constraint) → columns of a `CHECK (c IS NOT NULL) NOT VALID`."""
    primary_keys: dict[Qualified, tuple[str, ...]] = field(default_factory=dict)
    partitioned: set[Qualified] = field(default_factory=set)
    """Tables created with PARTITION BY."""
    checked: set[Qualified] = field(default_factory=set)
    """Tables with a validated CHECK constraint (any): ATTACH PARTITION can skip its scan."""
    index_columns: dict[Qualified, tuple[str, ...]] = field(default_factory=dict)
    """(schema, index) → its plain columns, for ADD … USING INDEX."""
    created: set[Qualified] = field(default_factory=set)
    """Tables whose CREATE the guard read: it knows all their columns and constraints."""
    validated_unknown: set[Qualified] = field(default_factory=set)
    """Tables the guard never saw created (adopted with `baseline`) on which a constraint it
    does not know was validated: it may prove NOT NULL, the guard cannot tell."""

    def add_column(self, table: Qualified, column: ast.ColumnDef) -> None:
        name = column.colname or ""
        self.columns.setdefault(table, {})[name] = column_type(column.typeName)
        for constraint in seq(column.constraints):
            if not isinstance(constraint, ast.Constraint):
                continue
            if constraint.contype in (ConstrType.CONSTR_NOTNULL, ConstrType.CONSTR_PRIMARY,
                                      ConstrType.CONSTR_IDENTITY):
                self.not_null.add((*table, name))
            if constraint.contype == ConstrType.CONSTR_PRIMARY:
                self.primary_keys[table] = (name,)
            elif constraint.contype == ConstrType.CONSTR_CHECK:
                self.add_check(table, constraint)

    def add_check(self, table: Qualified, constraint: ast.Constraint) -> None:
        if not constraint.skip_validation:
            self.checked.add(table)
        columns = not_null_columns(constraint.raw_expr)
        if not columns:
            return
        if constraint.skip_validation:
            # Postgres names an unnamed check <table>_<column>_check (one column) or <table>_check.
            name = constraint.conname or (
                f"{table[1]}_{columns[0]}_check" if len(columns) == 1 else f"{table[1]}_check")
            self.unvalidated_checks[(*table, name)] = columns
        else:
            self.not_null.update((*table, col) for col in columns)

    def validate(self, table: Qualified, name: str) -> None:
        if (*table, name) not in self.unvalidated_checks and table not in self.created:
            self.validated_unknown.add(table)
        columns = self.unvalidated_checks.pop((*table, name), ())
        self.not_null.update((*table, col) for col in columns)
        self.checked.add(table)


@dataclass
class RevisionContext:
    """The revision being linted, and the state of its service before the current statement."""

    path: Path
    service: str
    services: frozenset[str]
    transactional: bool = True
    phase: str = "expand"
    pg_version: int = 16
    model: SchemaModel = field(default_factory=SchemaModel)
    new_tables: set[Qualified] = field(default_factory=set)
    new_indexes: set[Qualified] = field(default_factory=set)
    held: dict[Qualified, tuple[str, str, int]] = field(default_factory=dict)
    """Strong locks this transactional revision holds so far: table → (mode, command, line)."""

    def qualify(self, relation: ast.RangeVar | None) -> Qualified:
        if relation is None:
            return (self.service, "")
        return (relation.schemaname or self.service, relation.relname or "")

    def qualify_names(self, names: object) -> Qualified:
        """A dotted name list (`DROP INDEX s.i`, `CREATE FUNCTION s.f`) → (schema, name)."""
        items = names if isinstance(names, tuple) else ()
        parts = [n.sval for n in items if isinstance(n, ast.String) and n.sval]
        return (parts[-2] if len(parts) > 1 else self.service, parts[-1] if parts else "")

    def is_new_table(self, relation: ast.RangeVar | None) -> bool:
        """Created earlier in this same revision: empty and unseen by other sessions."""
        return relation is not None and self.qualify(relation) in self.new_tables

    def other_service(self, schema: str | None) -> bool:
        return schema is not None and schema != self.service and schema in self.services

    def record(self, node: ast.Node) -> None:
        """Apply what `node` creates or changes, for the statements that follow it."""
        if isinstance(node, ast.CreateStmt):
            table = self.qualify(node.relation)
            if node.if_not_exists and table not in self.new_tables:
                return  # it may exist already, with its rows: not new
            self.new_tables.add(table)
            self.model.columns[table] = {}
            self.model.created.add(table)
            if node.partspec is not None:
                self.model.partitioned.add(table)
            for element in seq(node.tableElts):
                if isinstance(element, ast.ColumnDef):
                    self.model.add_column(table, element)
                elif isinstance(element, ast.Constraint):
                    if element.contype == ConstrType.CONSTR_CHECK:
                        self.model.add_check(table, element)
                    elif element.contype == ConstrType.CONSTR_PRIMARY:
                        keys = tuple(key.sval for key in seq(element.keys)
                                     if isinstance(key, ast.String) and key.sval)
                        self.model.not_null.update((*table, key) for key in keys)
                        self.model.primary_keys[table] = keys
        elif isinstance(node, ast.CreateTableAsStmt) and node.into is not None and \
                not node.if_not_exists:
            self.new_tables.add(self.qualify(node.into.rel))
        elif isinstance(node, ast.ViewStmt) and not node.replace:
            self.new_tables.add(self.qualify(node.view))
        elif isinstance(node, ast.IndexStmt) and node.idxname:
            index = (self.qualify(node.relation)[0], node.idxname)
            self.new_indexes.add(index)
            self.model.index_columns[index] = tuple(
                e.name for e in seq(node.indexParams) if isinstance(e, ast.IndexElem) and e.name)
        elif isinstance(node, ast.AlterTableStmt):
            self._record_alter(self.qualify(node.relation), seq(node.cmds))
        elif isinstance(node, ast.DropStmt) and node.removeType == ObjectType.OBJECT_TABLE:
            for names in seq(node.objects):
                table = self.qualify_names(names)
                self.model.columns.pop(table, None)
                self.new_tables.discard(table)

    def _record_alter(self, table: Qualified, commands: Sequence[ast.Node]) -> None:
        columns = self.model.columns.setdefault(table, {})
        for cmd in commands:
            if not isinstance(cmd, ast.AlterTableCmd):
                continue
            subtype = cmd.subtype
            if subtype == AlterTableType.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
                self.model.add_column(table, cmd.def_)
            elif (subtype == AlterTableType.AT_AlterColumnType and cmd.name
                    and isinstance(cmd.def_, ast.ColumnDef)):
                columns[cmd.name] = column_type(cmd.def_.typeName)
            elif subtype == AlterTableType.AT_DropColumn and cmd.name:
                columns.pop(cmd.name, None)
            elif subtype == AlterTableType.AT_SetNotNull and cmd.name:
                self.model.not_null.add((*table, cmd.name))
            elif subtype == AlterTableType.AT_AddConstraint and isinstance(
                    cmd.def_, ast.Constraint) and cmd.def_.contype == ConstrType.CONSTR_CHECK:
                self.model.add_check(table, cmd.def_)
            elif subtype == AlterTableType.AT_AddConstraint and isinstance(
                    cmd.def_, ast.Constraint) and cmd.def_.contype == ConstrType.CONSTR_PRIMARY:
                keys = tuple(k.sval for k in seq(cmd.def_.keys)
                             if isinstance(k, ast.String) and k.sval)
                self.model.primary_keys[table] = keys
                self.model.not_null.update((*table, key) for key in keys)
            elif subtype == AlterTableType.AT_ValidateConstraint and cmd.name:
                self.model.validate(table, cmd.name)


def alter_commands(stmt: Statement) -> Iterator[tuple[ast.AlterTableStmt, ast.AlterTableCmd]]:
    """The subcommands of an `ALTER TABLE` statement (nothing for other statements)."""
    node = stmt.node
    if isinstance(node, ast.AlterTableStmt) and node.objtype == ObjectType.OBJECT_TABLE:
        for cmd in seq(node.cmds):
            if isinstance(cmd, ast.AlterTableCmd):
                yield node, cmd


def constraints_added_to_existing_tables(
        stmt: Statement, ctx: RevisionContext,
) -> Iterator[tuple[ast.AlterTableStmt, ast.Constraint]]:
    """`ALTER TABLE … ADD CONSTRAINT` on a table that existed before this revision: the ones
    that lock or scan a table in use (a table created in the same revision is empty)."""
    for alter, cmd in alter_commands(stmt):
        if ctx.is_new_table(alter.relation):
            continue
        if cmd.subtype == AlterTableType.AT_AddConstraint and isinstance(cmd.def_,
                                                                         ast.Constraint):
            yield alter, cmd.def_
        elif cmd.subtype == AlterTableType.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
            # inline: ADD COLUMN c int UNIQUE / CHECK (…) / REFERENCES t
            for constraint in seq(cmd.def_.constraints):
                if isinstance(constraint, ast.Constraint):
                    yield alter, constraint


def function_names(expr: ast.Node | None) -> Iterator[str]:
    """Names of the functions an expression calls (lower case, without schema)."""
    for node in walk(expr):
        if isinstance(node, ast.FuncCall):
            yield last_name(node.funcname).lower()
