"""Parsing SQL for the guard: statements with their file positions (PostgreSQL's own parser,
through pglast) and the `svcmig:ignore` suppression comments that belong to each."""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pglast import ast, parser

from . import rules
from .sqltree import Statement

SUPPRESSION_RE = re.compile(r"^(?:--|#)\s*svcmig:ignore\b\s*(?P<rule>[\w-]*)\s*(?P<reason>.*?)\s*$")


class SqlSyntaxError(Exception):
    """SQL that PostgreSQL's parser refuses, with where it stopped (1-based line and column)."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


class _Lines:
    """Offset → (line, column) within a text that starts at `first_line` of its file."""

    def __init__(self, text: str, first_line: int) -> None:
        self.starts = [0, *itertools.accumulate(len(line) + 1 for line in
                                                text.split("\n")[:-1])]
        self.first_line = first_line

    def at(self, offset: int) -> tuple[int, int]:
        index = bisect.bisect_right(self.starts, offset) - 1
        return self.first_line + index, offset - self.starts[index] + 1


@dataclass
class ParsedSql:
    statements: list[Statement]
    bad_suppressions: list[tuple[int, int, str]] = field(default_factory=list)
    """(line, column, message) of suppression comments that name no rule or give no reason."""


@contextmanager
def unchecked_nodes() -> Iterator[None]:
    """While linting, build pglast nodes without its per-attribute validation
    (`ast.Node.__setattr__`, meant for trees built by hand): PostgreSQL's parser already hands
    over typed values, and the validation is ~75 % of parsing (tests/guard/test_rules.py checks
    the trees are equal). Entered once per lint run: changing a class attribute is costly."""
    checked = ast.Node.__setattr__
    ast.Node.__setattr__ = object.__setattr__  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        ast.Node.__setattr__ = checked  # type: ignore[method-assign]


def parse_statements(sql: str, first_line: int = 1) -> ParsedSql:
    """Split `sql` into statements with their file positions and suppression comments."""
    lines = _Lines(sql, first_line)
    try:
        raw = parser.parse_sql(sql)
    except parser.ParseError as err:
        offset = err.args[1] if len(err.args) > 1 and isinstance(err.args[1], int) else 0
        line, column = lines.at(max(0, min(offset, len(sql))))
        raise SqlSyntaxError(str(err.args[0]), line, column) from err
    statements: list[Statement] = []
    ends: list[int] = []
    for item in raw:
        start = location = item.stmt_location or 0
        while start < len(sql) and sql[start].isspace():
            start += 1
        line, column = lines.at(start)
        if item.stmt is not None:
            statements.append(Statement(item.stmt, line, column))
            ends.append(location + (item.stmt_len or len(sql) - location))
    parsed = ParsedSql(statements)
    if "svcmig:ignore" in sql:
        _attach_suppressions(sql, lines, parsed, ends)
    return parsed


def check_syntax(sql: str, first_line: int = 1) -> None:
    """Only check that `sql` parses (down sections are not linted): libpg_query's JSON output
    skips building a Python AST, which costs ~20 times the parse itself."""
    try:
        parser.parse_sql_json(sql)
    except parser.ParseError:
        parse_statements(sql, first_line)  # raises SqlSyntaxError with the right position


def _attach_suppressions(sql: str, lines: _Lines, parsed: ParsedSql, ends: list[int]) -> None:
    """A suppression belongs to the statement it precedes or sits in, or to the statement that
    ends on its line (a trailing comment after `;`)."""
    for token in parser.scan(sql):
        if token.name != "SQL_COMMENT":
            continue
        match = SUPPRESSION_RE.match(sql[token.start:token.end + 1])
        if not match:
            continue
        line, column = lines.at(token.start)
        if not match["rule"] or match["rule"] not in rules.BY_NAME:
            known = "a rule name" if not match["rule"] else f"a known rule, not {match['rule']!r}"
            parsed.bad_suppressions.append((line, column, f"svcmig:ignore needs {known}"))
            continue
        if not match["reason"]:
            parsed.bad_suppressions.append(
                (line, column, f"svcmig:ignore {match['rule']} gives no reason"))
            continue
        index = bisect.bisect_right(ends, token.start)
        if index > 0 and lines.at(ends[index - 1])[0] == line:
            index -= 1
        if parsed.statements:
            target = parsed.statements[min(index, len(parsed.statements) - 1)]
            target.suppressions[match["rule"]] = match["reason"]
