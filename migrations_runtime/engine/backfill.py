"""Backfills: data changes too big for a deploy, run afterwards in batches over a key range.

A backfill is a file `services/<service>/backfills/YYYY-MM-DDThhmm__<service>__<slug>.sql` (or
`.py`) named `<service>.<slug>`. The runner (`backfill_runner`) walks an integer key of one of
the service's tables from its smallest to its largest value, one key range `[start, end)` per
transaction. The model is GitLab's batched background migrations
(docs.gitlab.com/ee/development/database/batched_background_migrations.html).

A SQL backfill is one data-changing statement with the bounds `:start` and `:end`:

    -- key: users.id            (optional when the statement says it: `id >= :start`)
    -- batch-size: 1000         (optional: the first batch's width in key values)
    UPDATE users SET plan = 'free' WHERE id >= :start AND id < :end AND plan IS NULL;

A Python backfill sets `key = "users.id"` (and optionally `batch_size`) and defines
`batch(conn, start, end)`, which runs in the batch's transaction on the service owner's
psycopg connection and returns the number of rows it changed (an int: `cursor.rowcount`).

Loading reads files only (a Python backfill is imported when it runs); every problem is a
`MigrationFileError` naming the file and line.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .discover import Service
from .errors import MigrationFileError
from .load import (
    DIRECTIVE_RE,
    FILENAME_RE,
    Kind,
    checksum,
    not_a_revision,
    read_text,
    refuse_hidden_text,
    runnable,
    visible,
)

if TYPE_CHECKING:
    from pglast.parser import ParseError

# pglast is imported where a backfill file is read, not at module load: planning and applying
# revisions (which import this module through validate) never pay for it (~35 ms).
BACKFILLS_FOLDER = "backfills"
BACKFILL_DIRECTIVES = ("key", "batch-size")
DEFAULT_BATCH_SIZE = 1000
DATA_CHANGES = ("UpdateStmt", "DeleteStmt", "InsertStmt", "MergeStmt")
BatchFunction = Callable[[Any, int, int], "int | None"]


@dataclass(frozen=True)
class Backfill:
    """One backfill file. `statement` is a SQL backfill's statement with `$1` for `:start` and
    `$2` for `:end` (empty for a Python one); `table` and `key` name the integer column whose
    values are walked, in the service's schema."""

    name: str
    service: str
    root: Path
    file: str
    timestamp: str
    kind: Kind
    table: str
    key: str
    statement: str
    statement_line: int
    batch_size: int
    checksum: str

    @property
    def path(self) -> Path:
        return self.root / self.file

    @property
    def schema(self) -> str:
        return self.service

    def batch_function(self) -> BatchFunction:
        """A Python backfill's `batch(conn, start, end)`, imported now."""
        spec = importlib.util.spec_from_file_location(f"svcmig_backfill_{self.service}_"
                                                      f"{self.timestamp}", self.path)
        if spec is None or spec.loader is None:
            raise MigrationFileError(self.path, "cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # the user's code: any error is theirs, reported in one line
            raise MigrationFileError(self.path, f"importing it failed: {err!r}") from err
        function = getattr(module, "batch", None)
        if not callable(function):
            raise MigrationFileError(self.path, "defines no batch(conn, start, end) function")
        return function  # type: ignore[no-any-return]


def backfill_name(service: str, slug: str) -> str:
    return f"{service}.{slug}"


def backfill_files(service: Service) -> list[Path]:
    """The service's backfill files in name order; anything else in the folder is refused."""
    folder = service.folder / BACKFILLS_FOLDER
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if not_a_revision(path.name):
            continue
        if not path.is_file():
            raise MigrationFileError(path, "not a regular file; a backfill is a .sql or .py file")
        found.append(path)
    return found


def load_backfills(services: list[Service],
                   problems: dict[str, MigrationFileError] | None = None) -> dict[str, Backfill]:
    """Every service's backfills by name; a name used twice in a service is refused. With
    `problems`, a file that cannot be loaded is put there, under its backfill name (the file
    name when it has none), and the others still load; otherwise its error is raised."""
    found: dict[str, Backfill] = {}
    for service in services:
        for path in backfill_files(service):
            try:
                backfill = load_backfill(path, service)
                if backfill.name in found:
                    raise MigrationFileError(
                        path, f"backfill name {backfill.name} is also "
                        f"{found[backfill.name].file}: a slug names one backfill per service; "
                        "choose another slug")
            except MigrationFileError as err:
                if problems is None:
                    raise
                match = FILENAME_RE.match(path.name)
                problems[backfill_name(match["service"], match["slug"]) if match
                         else path.name] = err
                continue
            found[backfill.name] = backfill
    return found


def load_backfill(path: Path, service: Service) -> Backfill:
    match = FILENAME_RE.match(path.name)
    if not match:
        raise MigrationFileError(
            path, "file name does not follow YYYY-MM-DDThhmm__<service>__<slug>.sql (or .py), "
            f"e.g. 2026-12-01T0900__{service.name}__fill_plan.sql")
    if match["service"] != service.name:
        raise MigrationFileError(
            path, f"file names service {match['service']!r} but lives in "
            f"services/{service.name}/; move it to services/{match['service']}/backfills/ or "
            "rename it")
    text = read_text(path)
    common = {"name": backfill_name(service.name, match["slug"]), "service": service.name,
              "root": service.folder.parent.parent,
              "file": f"services/{service.name}/{BACKFILLS_FOLDER}/{path.name}",
              "timestamp": match["timestamp"], "checksum": checksum(text)}
    if match["ext"] == "py":
        return Backfill(kind="python", statement="", statement_line=0, **_python_parts(text, path),
                        **common)  # type: ignore[arg-type]
    return Backfill(kind="sql", **_sql_parts(runnable(text), path, service),
                    **common)  # type: ignore[arg-type]


def _sql_parts(text: str, path: Path, service: Service) -> dict[str, Any]:
    refuse_hidden_text(text, path)
    directives: dict[str, tuple[str, int]] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = visible(raw)
        if not line.startswith("--"):
            if line:
                break  # the header ends at the first SQL
            continue
        directive = DIRECTIVE_RE.match(line)
        if directive is None:
            continue
        key = re.sub(r"[ _-]+", "-", directive["key"].strip().lower())
        if key in BACKFILL_DIRECTIVES:
            directives[key] = (directive["value"], number)
        elif key in ("phase", "depends-on", "requires-backfill"):
            raise MigrationFileError(path, f"'-- {key}:' is a revision's directive; a backfill "
                                     "runs after the deploy, in batches: remove it", number,
                                     kind="parse")
    statement, first_line = _one_statement(text, path)
    table, column = _key(statement, directives.get("key"), path, service, first_line)
    return {"table": table, "key": column, "statement": statement, "statement_line": first_line,
            "batch_size": _batch_size(directives.get("batch-size"), path)}


def bind_bounds(text: str, tokens: list[Any] | None = None) -> tuple[str, set[str]]:
    """`text` with `:start` and `:end` as `$1` and `$2` (padded with spaces, so every line and
    column stays where it is in the file), and which of the two it uses. Only the tokens are
    replaced: `':start'` in a string or a comment is left alone. Raises pglast's `ParseError`
    when the text cannot even be scanned."""
    from pglast import parser

    tokens = parser.scan(text) if tokens is None else tokens
    pieces, last, seen = [], 0, set()
    for colon, word in zip(tokens, tokens[1:], strict=False):
        name = text[word.start:word.end + 1].lower()
        if colon.name == "ASCII_58" and word.start == colon.end + 1 and name in ("start",
                                                                                 "end"):
            seen.add(name)
            number = "$1" if name == "start" else "$2"
            pieces.append(text[last:colon.start] + number.ljust(word.end + 1 - colon.start))
            last = word.end + 1
    return "".join(pieces) + text[last:], seen


def _one_statement(text: str, path: Path) -> tuple[str, int]:
    """The file's statement with `:start`/`:end` as `$1`/`$2`, and its first line."""
    from pglast import parse_sql, parser
    from pglast.parser import ParseError

    try:
        tokens = parser.scan(text)
    except ParseError as err:
        raise MigrationFileError(path, f"SQL syntax error: {err.args[0]}",
                                 _error_line(text, err), kind="parse") from err
    converted, seen = bind_bounds(text, tokens)
    try:
        statements = parse_sql(converted)
    except ParseError as err:
        raise MigrationFileError(path, f"SQL syntax error: {err.args[0]}",
                                 _error_line(converted, err), kind="parse") from err
    if not statements:
        raise MigrationFileError(path, "the file has no statement: write the one data change "
                                 "each batch runs, or delete the file")
    if len(statements) != 1:
        raise MigrationFileError(
            path, f"a backfill is one statement, run once per batch; this file has "
            f"{len(statements)}: split it into several backfills")
    raw = statements[0]
    first = next((t for t in tokens if t.name not in ("SQL_COMMENT", "C_COMMENT")), None)
    line = text[: first.start].count("\n") + 1 if first else 1
    kind = type(raw.stmt).__name__
    if kind not in DATA_CHANGES:
        raise MigrationFileError(
            path, f"a backfill changes rows (UPDATE, DELETE, INSERT or MERGE); this is "
            f"{kind.removesuffix('Stmt')}: schema changes belong in a revision", line)
    missing = [f":{name}" for name in ("start", "end") if name not in seen]
    if missing:
        raise MigrationFileError(
            path, f"the statement does not use {' and '.join(missing)}: each batch must touch "
            "only its key range, e.g. WHERE id >= :start AND id < :end", line, kind="unbounded")
    return converted.strip().rstrip(";").strip(), line


def _error_line(text: str, err: ParseError) -> int:
    """The 1-based line of a pglast error (its second argument is the offset)."""
    offset = err.args[1] if len(err.args) > 1 and isinstance(err.args[1], int) else 0
    return text[:offset].count("\n") + 1


def _key(statement: str, declared: tuple[str, int] | None, path: Path, service: Service,
         line: int) -> tuple[str, str]:
    """The table and key column: `-- key: table.column`, or else what `column >= :start`
    compares in an UPDATE's or DELETE's own table."""
    from pglast import parse_sql

    stmt = parse_sql(statement)[0].stmt
    relation = getattr(stmt, "relation", None)
    if relation is not None and relation.schemaname not in (None, service.schema):
        raise MigrationFileError(
            path, f"the statement changes {relation.schemaname}.{relation.relname}, a table "
            f"of another schema; a backfill of {service.name} changes {service.name}'s "
            "tables", line, kind="other_schema")
    if declared is not None:
        value, number = declared
        parts = value.strip().split(".")
        if len(parts) == 3 and parts[0] == service.schema:
            parts = parts[1:]
        if len(parts) != 2 or not all(re.fullmatch(r"[a-z_][a-z0-9_$]*", p) for p in parts):
            raise MigrationFileError(
                path, f"'-- key: {value}' must name a table of {service.name} and its integer "
                "key column, e.g. '-- key: users.id'", number, kind="parse")
        return parts[0], parts[1]
    column = _bounded_column(getattr(stmt, "whereClause", None))
    if relation is not None and column is not None and type(stmt).__name__ in (
            "UpdateStmt", "DeleteStmt"):
        return relation.relname, column
    raise MigrationFileError(
        path, "cannot tell which key the batches walk: add '-- key: <table>.<column>' (an "
        "integer column of the service's table, e.g. '-- key: users.id') to the header", line,
        kind="no_key")


def _bounded_column(node: Any) -> str | None:
    """The column in `column >= $1` (or `$1 <= column`) anywhere under an AND."""
    from pglast.enums import BoolExprType

    if node is None:
        return None
    kind = type(node).__name__
    if kind == "BoolExpr" and node.boolop == BoolExprType.AND_EXPR:
        for arg in node.args:
            found = _bounded_column(arg)
            if found:
                return found
        return None
    if kind != "A_Expr" or not node.name:
        return None
    operator = node.name[-1].sval
    left, right = node.lexpr, node.rexpr
    if operator in (">=", ">") and _is_param(right, 1):
        return _column_name(left)
    if operator in ("<=", "<") and _is_param(left, 1):
        return _column_name(right)
    return None


def _is_param(node: Any, number: int) -> bool:
    while type(node).__name__ == "TypeCast":  # `:start::bigint`
        node = node.arg
    return type(node).__name__ == "ParamRef" and node.number == number


def _column_name(node: Any) -> str | None:
    if type(node).__name__ != "ColumnRef":
        return None
    name = node.fields[-1]
    return getattr(name, "sval", None)


def _batch_size(declared: tuple[str, int] | None, path: Path) -> int:
    if declared is None:
        return DEFAULT_BATCH_SIZE
    value, number = declared
    if not value.strip().isdigit() or int(value) < 1:
        raise MigrationFileError(path, f"'-- batch-size: {value}' must be a positive whole "
                                 "number of key values, e.g. 1000", number, kind="parse")
    return int(value)


def _python_parts(text: str, path: Path) -> dict[str, Any]:
    try:
        tree = ast.parse(text.removeprefix("\ufeff"), filename=str(path))
    except SyntaxError as err:
        raise MigrationFileError(path, f"Python syntax error: {err.msg}", err.lineno,
                                 kind="parse") from err
    values: dict[str, object] = {}
    batch = None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "batch":
            batch = node
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                node.targets[0], ast.Name) and node.targets[0].id in ("key", "batch_size"):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError as err:
                raise MigrationFileError(path, f"{node.targets[0].id} must be a literal",
                                         node.lineno) from err
    if batch is None or len(batch.args.args) != 3:
        raise MigrationFileError(path, "a Python backfill defines batch(conn, start, end), "
                                 "which changes the rows whose key is in [start, end) and "
                                 "returns how many it changed")
    key = values.get("key")
    if not isinstance(key, str) or not re.fullmatch(r"[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*",
                                                    key):
        raise MigrationFileError(path, "key must name the table and its integer key column, "
                                 "e.g. key = \"users.id\"")
    size = values.get("batch_size", DEFAULT_BATCH_SIZE)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise MigrationFileError(path, "batch_size must be a positive whole number")
    table, column = key.split(".")
    return {"table": table, "key": column, "batch_size": size}
