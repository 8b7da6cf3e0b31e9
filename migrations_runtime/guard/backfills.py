"""Backfill files (`services/<service>/backfills/`, engine.backfill) linted like revisions.

A backfill is checked for what the runner checks when it loads it (its name, its service
folder, one data-changing statement with `:start` and `:end`, its key), each refusal a finding
at its file and line, then its statement runs through the SQL rules that apply to a statement
run in its own short transaction, once per key range, as the service's owner role with
`search_path = <service>` (`BACKFILL_RULES`), and `backfill-outside-range` checks that every row
it changes lies in the batch's range. Rules about a revision's single long transaction (whole-
table DML, locks held through work), its history (order, heads, down sections) or DDL do not
apply: a backfill has no history and the loader refuses anything but one data change.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pglast import ast, parser
from pglast.enums import A_Expr_Kind, MergeMatchKind, SetOperation, SubLinkType

from ..engine import load
from ..engine.backfill import BACKFILLS_FOLDER, Backfill, bind_bounds, load_backfill
from ..engine.discover import Service
from ..engine.errors import MigrationFileError
from . import rules
from .findings import Finding, Rule, StatementRule
from .parsing import SqlSyntaxError, parse_statements
from .sqltree import Qualified, RevisionContext, Statement, last_name, seq, walk

BACKFILL_RULES: tuple[StatementRule, ...] = (
    rules.CROSS_SERVICE_WRITE,
    rules.SESSION_OVERRIDE,
)
"""The statement rules run on a backfill's statement (the others are replaced by
`backfill-outside-range`, or cannot find anything in one data-changing statement)."""

def is_backfill_path(path: Path) -> bool:
    """A file in a `services/<name>/backfills/` folder (not a skipped entry like README.md)."""
    return path.parent.name == BACKFILLS_FOLDER and not load.not_a_revision(path.name)


def backfill_paths(service: Service) -> list[Path]:
    """The entries of the service's backfills folder the runner reads (or refuses)."""
    folder = service.folder / BACKFILLS_FOLDER
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not load.not_a_revision(p.name))


def with_parameters(text: str) -> str:
    """`text` with `:start`/`:end` as `$1`/`$2`, every position kept (the engine's
    `bind_bounds`); unchanged when it cannot be scanned (the load error says why)."""
    try:
        return bind_bounds(text)[0]
    except parser.ParseError:
        return text


@dataclass
class BackfillLinter:
    """Lints the backfill files of one project."""

    services: frozenset[str]

    def lint(self, path: Path, service: Service | None, siblings: list[Path]) -> list[Finding]:
        """Lint one backfill file of `service` (None: its folder is no service's); `siblings`:
        the service's backfill files, for names used twice."""
        findings: list[Finding] = []
        match = load.FILENAME_RE.match(path.name)
        if service is None:
            return [Finding(path, 1, 1, rules.WRONG_SERVICE_FOLDER,
                            f"{path.parent.parent.name} is not a service (no migrations/ folder "
                            "beside backfills/); a backfill lives in "
                            "services/<service>/backfills/")]
        if not match:
            return [Finding(path, 1, 1, rules.FILENAME_CONVENTION,
                            "file name does not follow YYYY-MM-DDThhmm__<service>__<slug>.sql "
                            f"(or .py), e.g. 2026-12-01T0900__{service.name}__fill_plan.sql: "
                            "the name gives the backfill's name, <service>.<slug>")]
        if match["service"] != service.name:
            findings.append(Finding(
                path, 1, 1, rules.WRONG_SERVICE_FOLDER,
                f"file names service {match['service']!r} but lives in services/{service.name}/"
                f"; move it to services/{match['service']}/backfills/ (it runs as "
                f"{match['service']}_owner in schema {match['service']})"))
            service = Service(match["service"], service.folder.parent / match["service"])
        if not path.is_file():  # never read a pipe: it would hang
            return [*findings, Finding(path, 1, 1, rules.PARSE_ERROR,
                                       "not a regular file (a folder, a broken link, a pipe): "
                                       "the runner refuses it; a backfill is a .sql or .py file")]
        for other in siblings:
            twin = load.FILENAME_RE.match(other.name)
            if other.name < path.name and twin and twin["slug"] == match["slug"] and \
                    twin["service"] == match["service"]:
                findings.append(Finding(
                    path, 1, 1, rules.REFUSED_BY_RUNNER,
                    f"backfill name {service.name}.{match['slug']} is also {other.name}: a "
                    "slug names one backfill per service; choose another slug"))
                break
        try:
            backfill = load_backfill(path, service)
        except MigrationFileError as err:
            findings.append(self._load_error(path, service, err))
            return findings
        if backfill.kind == "sql":
            findings.extend(self._lint_statement(path, backfill))
        return findings

    def _load_error(self, path: Path, service: Service, err: MigrationFileError) -> Finding:
        line = err.line or 1
        rule: Rule = rules.REFUSED_BY_RUNNER
        message = err.message
        if err.kind == "parse":
            rule = rules.PARSE_ERROR
        elif err.kind == "unbounded":
            rule = rules.BACKFILL_OUTSIDE_RANGE
        elif err.kind == "other_schema":
            rule = rules.CROSS_SERVICE_WRITE
        elif err.kind == "no_key" and not self._lower_bound_on_start(path):
            rule = rules.BACKFILL_OUTSIDE_RANGE
            message = ("no key column is bounded below by :start (`<key> >= :start`, ANDed "
                       "with the rest of the filter): each batch would touch rows outside its "
                       "range; " + message)
        return Finding(path, line, 1, rule, message)

    @staticmethod
    def _lower_bound_on_start(path: Path) -> bool:
        try:
            text = with_parameters(load.runnable(path.read_text(encoding="utf-8")))
            [item] = parser.parse_sql(text)
        except (OSError, UnicodeDecodeError, parser.ParseError, ValueError):
            return True  # the engine's own message says what is wrong
        return any("lower" in marks for node in walk(item.stmt)
                   for marks in _bounds(getattr(node, "whereClause", None)).values())

    def _lint_statement(self, path: Path, backfill: Backfill) -> list[Finding]:

        text = with_parameters(load.runnable(path.read_text(encoding="utf-8")))
        try:
            parsed = parse_statements(text)
        except SqlSyntaxError as err:  # the engine parsed it: only if the two ever disagree
            return [Finding(path, err.line, err.column, rules.PARSE_ERROR,
                            f"SQL syntax error: {err.message}")]
        findings = [Finding(path, line, column, rules.INVALID_SUPPRESSION, message)
                    for line, column, message in parsed.bad_suppressions]
        ctx = RevisionContext(path=path, service=backfill.service, services=self.services)
        for stmt in parsed.statements:
            for rule in rules.for_node(stmt.node):
                if rule in BACKFILL_RULES and rule.name not in stmt.suppressions:
                    findings.extend(Finding(path, stmt.line, stmt.column, rule, message)
                                    for message in rule.check(stmt, ctx))
            if rules.BACKFILL_OUTSIDE_RANGE.name not in stmt.suppressions:
                findings.extend(
                    Finding(path, stmt.line, stmt.column, rules.BACKFILL_OUTSIDE_RANGE, message)
                    for message in outside_range(stmt, ctx, backfill))
        return findings


# --- backfill-outside-range -------------------------------------------------------------------

_AND, _OR = 0, 1
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
Column = tuple[str | None, str]
"""(qualifier or None, column) of a column reference."""


def _param(node: object) -> int | None:
    while isinstance(node, ast.TypeCast):
        node = node.arg
    return node.number if isinstance(node, ast.ParamRef) else None


def _end_minus(node: object) -> bool:
    """`:end - n` with a whole n >= 1: an inclusive upper bound that stays below :end."""
    while isinstance(node, ast.TypeCast):
        node = node.arg
    return (isinstance(node, ast.A_Expr) and node.kind == A_Expr_Kind.AEXPR_OP
            and last_name(node.name) == "-" and _param(node.lexpr) == 2
            and isinstance(node.rexpr, ast.A_Const) and isinstance(node.rexpr.val, ast.Integer)
            and (node.rexpr.val.ival or 0) >= 1)


def _column(node: object) -> Column | None:
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if not isinstance(node, ast.ColumnRef):
        return None
    parts = [str(f.sval) for f in seq(node.fields) if isinstance(f, ast.String)]
    if not parts:
        return None
    return (parts[-2] if len(parts) > 1 else None, parts[-1])


def _conjuncts(where: ast.Node | None) -> list[ast.Node]:
    if isinstance(where, ast.BoolExpr) and where.boolop == _AND:
        return [c for arg in seq(where.args) for c in _conjuncts(arg)]
    return [where] if where is not None else []


def _bounds(where: ast.Node | None) -> dict[Column, set[str]]:
    """The columns the filter's AND-ed conjuncts bound by the batch: marks `lower` (>= :start),
    `upper` (< :end, <= :end - n), `skips-start` (> :start) and `includes-end` (<= :end)."""
    found: dict[Column, set[str]] = {}
    for conjunct in _conjuncts(where):
        if not isinstance(conjunct, ast.A_Expr):
            continue
        if conjunct.kind in (A_Expr_Kind.AEXPR_BETWEEN, A_Expr_Kind.AEXPR_BETWEEN_SYM):
            column = _column(conjunct.lexpr)
            pair = conjunct.rexpr if isinstance(conjunct.rexpr, tuple) else ()
            if column is None or len(pair) != 2:
                continue
            marks = found.setdefault(column, set())
            if _param(pair[0]) == 1:
                marks.add("lower")
            if _param(pair[1]) == 2:
                marks.update(("upper", "includes-end"))
            elif _end_minus(pair[1]):
                marks.add("upper")
            continue
        if conjunct.kind != A_Expr_Kind.AEXPR_OP:
            continue
        op = last_name(conjunct.name)
        left: object = conjunct.lexpr
        right: object = conjunct.rexpr
        if _column(left) is None and _column(right) is not None:
            left, right, op = right, left, _FLIP.get(op, op)
        column = _column(left)
        if column is None or op not in _FLIP:
            continue
        marks = found.setdefault(column, set())
        number = _param(right)
        if number == 1 and op in (">=", ">"):
            marks.add("lower")
            if op == ">":
                marks.add("skips-start")
        elif number == 2 and op in ("<", "<="):
            marks.add("upper")
            if op == "<=":
                marks.add("includes-end")
        elif op in ("<", "<=") and _end_minus(right):
            marks.add("upper")
    return found


def _names(relation: ast.RangeVar) -> frozenset[str]:
    alias = relation.alias.aliasname if relation.alias else None
    return frozenset(n for n in (relation.relname, alias) if n)


def _sources(items: tuple[ast.Node, ...] | None) -> Iterator[ast.Node]:
    """The relations of a FROM list: tables and sub-selects, joins opened."""
    for item in seq(items):
        if isinstance(item, ast.JoinExpr):
            yield from _sources(tuple(n for n in (item.larg, item.rarg) if n is not None))
        elif isinstance(item, ast.RangeVar | ast.RangeSubselect):
            yield item


@dataclass
class _Scope:
    """What the check of one backfill statement knows: its service, key and WITH queries."""

    ctx: RevisionContext
    key_table: Qualified
    key: str
    ctes: dict[str, ast.Node]

    def required(self, relation: ast.RangeVar) -> str | None:
        """The column that must bound `relation`'s rows: the key on the key's own table (any
        column on another table, which the runner does not walk)."""
        return self.key if self.ctx.qualify(relation) == self.key_table else None

    def relation_bounded(self, relation: ast.Node, where: ast.Node | None,
                         seen: frozenset[str] = frozenset()) -> bool:
        if isinstance(relation, ast.RangeSubselect):
            return self.select_bounded(relation.subquery, seen)
        if not isinstance(relation, ast.RangeVar):
            return False
        if not relation.schemaname and relation.relname in self.ctes:
            name = str(relation.relname)
            return name not in seen and self.query_bounded(self.ctes[name], seen | {name})
        return problem(self, relation, where, (), seen) is None

    def select_bounded(self, select: object, seen: frozenset[str] = frozenset(),
                       values: bool = False) -> bool:
        """A SELECT whose rows come from a batch's range (`values`: VALUES rows count too)."""
        if not isinstance(select, ast.SelectStmt):
            return False
        if select.op and select.op != SetOperation.SETOP_NONE:
            return self.select_bounded(select.larg, seen, values) and self.select_bounded(
                select.rarg, seen, values)
        sources = list(_sources(select.fromClause))
        if select.valuesLists or not sources:  # VALUES, or only functions: no table's rows
            return values
        return any(self.relation_bounded(r, select.whereClause, seen) for r in sources)

    def query_bounded(self, query: ast.Node, seen: frozenset[str]) -> bool:
        if isinstance(query, ast.SelectStmt):
            return self.select_bounded(query, seen)
        return next(_problems(self, query, seen), None) is None


def _describe(marks: set[str], column: str) -> str | None:
    if "includes-end" in marks:
        return (f"`{column} <= :end` includes :end, the next batch's first key: every boundary "
                f"row is changed twice; write `{column} < :end`")
    if "skips-start" in marks:
        return (f"`{column} > :start` leaves out :start, the batch's first key: those rows are "
                f"never changed; write `{column} >= :start`")
    return None


def problem(scope: _Scope, target: ast.RangeVar, where: ast.Node | None,
            joined: tuple[ast.Node, ...] | None, seen: frozenset[str] = frozenset()
            ) -> str | None:
    """Why the rows of `target` a filter selects are not within the batch's range, or None."""
    names = _names(target)
    key = scope.required(target)
    marks = _bounds(where)
    own = [(column, m) for column, m in marks.items()
           if (column[0] is None or column[0] in names) and (key is None or column[1] == key)
           and {"lower", "upper"} <= m]
    if own:
        notes = [_describe(m, column[1]) for column, m in own]
        return None if None in notes else notes[0]
    others: dict[str, ast.Node] = {}  # the joined relations (FROM / USING) by name and alias
    for relation in _sources(joined):
        if isinstance(relation, ast.RangeVar):
            others.update(dict.fromkeys(_names(relation), relation))
        elif isinstance(relation, ast.RangeSubselect) and relation.alias:
            others[str(relation.alias.aliasname)] = relation
    for conjunct in _conjuncts(where):
        if isinstance(conjunct, ast.A_Expr) and conjunct.kind == A_Expr_Kind.AEXPR_OP and \
                last_name(conjunct.name) == "=":
            left, right = _column(conjunct.lexpr), _column(conjunct.rexpr)
            for mine, theirs in ((left, right), (right, left)):
                if mine is None or theirs is None or theirs[0] is None or theirs[0] in names:
                    continue
                if not (mine[0] is None or mine[0] in names) or (key and mine[1] != key):
                    continue
                bounded = marks.get(theirs, set())
                if {"lower", "upper"} <= bounded:
                    return _describe(bounded, f"{theirs[0]}.{theirs[1]}")
                other = others.get(theirs[0])
                if other is not None and scope.relation_bounded(other, where, seen):
                    return None
        if isinstance(conjunct, ast.SubLink) and \
                conjunct.subLinkType == SubLinkType.ANY_SUBLINK:  # key IN (SELECT …)
            tested = _column(conjunct.testexpr)
            if tested and (tested[0] is None or tested[0] in names) and (
                    key is None or tested[1] == key) and scope.select_bounded(
                    conjunct.subselect, seen):
                return None
    table = ".".join(scope.ctx.qualify(target))
    wanted = key or f"a column of {table}"
    elsewhere = [f"{c[0] + '.' if c[0] else ''}{c[1]}" for c, m in marks.items()
                 if {"lower", "upper"} <= m]
    reason = (f"the bounds are on {', '.join(elsewhere)}, not on {wanted}" if elsewhere else
              "a bound under OR, or :start/:end outside the filter, bounds nothing"
              if any(isinstance(n, ast.ParamRef) for n in walk(where)) else
              "its filter does not use :start and :end")
    return (f"the rows of {table} it touches are not bounded by the batch's range "
            f"({wanted} >= :start AND {wanted} < :end): {reason}; every batch touches rows "
            "outside its range")


def _problems(scope: _Scope, node: ast.Node, seen: frozenset[str] = frozenset()
              ) -> Iterator[str]:
    """What in one data-changing node touches rows outside the batch's range."""
    if isinstance(node, ast.UpdateStmt | ast.DeleteStmt) and node.relation is not None:
        verb = "UPDATE" if isinstance(node, ast.UpdateStmt) else "DELETE"
        joined = node.fromClause if isinstance(node, ast.UpdateStmt) else node.usingClause
        found = problem(scope, node.relation, node.whereClause, joined, seen)
        if found:
            yield f"{verb}: {found}"
    elif isinstance(node, ast.MergeStmt) and node.relation is not None:
        source = node.sourceRelation
        if source is not None and scope.relation_bounded(source, None, seen):
            return
        found = problem(scope, node.relation, node.joinCondition, (source,) if source else (),
                        seen)
        inserts = any(isinstance(c, ast.MergeWhenClause)
                      and c.matchKind == MergeMatchKind.MERGE_WHEN_NOT_MATCHED_BY_TARGET
                      for c in seq(node.mergeWhenClauses))
        if found:
            yield f"MERGE: {found}"
        elif inserts:
            yield ("MERGE: WHEN NOT MATCHED inserts every source row outside the batch's range, "
                   "in every batch: bound the source (USING (SELECT … WHERE <key> >= :start AND "
                   "<key> < :end))")
    elif isinstance(node, ast.InsertStmt) and node.relation is not None and \
            isinstance(node.selectStmt, ast.SelectStmt) and not scope.select_bounded(
                node.selectStmt, seen, values=True):
        yield (f"INSERT … SELECT into {'.'.join(scope.ctx.qualify(node.relation))}: the rows it "
               "reads are not bounded by the batch's range (<key> >= :start AND <key> < :end "
               "on a table it reads): every batch inserts rows outside its range")
    elif isinstance(node, ast.SelectStmt) and node.lockingClause and not scope.select_bounded(
            node, seen):
        yield ("SELECT … FOR UPDATE/SHARE: the rows it locks are not bounded by the batch's "
               "range (<key> >= :start AND <key> < :end)")


def outside_range(stmt: Statement, ctx: RevisionContext, backfill: Backfill) -> Iterator[str]:
    """`backfill-outside-range` on a backfill's statement (`:start`/`:end` as `$1`/`$2`): every
    data change in it (CTEs included) and every locking read is bounded by the batch."""
    clause = getattr(stmt.node, "withClause", None)
    ctes = {str(c.ctename): c.ctequery for c in seq(clause.ctes if clause else None)
            if isinstance(c, ast.CommonTableExpr) and c.ctename and c.ctequery is not None}
    scope = _Scope(ctx, (ctx.service, backfill.table), backfill.key, ctes)
    seen: set[str] = set()
    for node in stmt.query_nodes:
        for message in _problems(scope, node):
            if message not in seen:
                seen.add(message)
                yield message


def unknown_backfills(names: tuple[str, ...], revision: Path) -> list[str]:
    """The names a revision's `requires-backfill` gives for which its project has no backfill
    file (`services/<service>/backfills/*__<service>__<slug>.sql|.py`): the planner would refuse
    every run of every service until it is fixed."""
    if not names:
        return []
    parents = revision.resolve().parents  # <root>/services/<service>/migrations/<file>
    if len(parents) < 4:
        return []  # not in a project (a rule's example)
    root = parents[3]
    missing = []
    for name in names:
        owner, _, slug = name.partition(".")
        folder = root / "services" / owner / BACKFILLS_FOLDER
        if not any(folder.glob(f"*__{owner}__{slug}.sql")) and not any(
                folder.glob(f"*__{owner}__{slug}.py")):
            missing.append(name)
    return missing


def unknown_backfill_findings(names: tuple[str, ...], revision: Path) -> list[Finding]:
    return [Finding(revision, 1, 1, rules.REFUSED_BY_RUNNER,
                    f"requires backfill {name!r}, but services/{name.partition('.')[0]}/"
                    f"{BACKFILLS_FOLDER}/ has no such file: the planner refuses every run until "
                    "the name is fixed or the backfill added")
            for name in unknown_backfills(names, revision)]

