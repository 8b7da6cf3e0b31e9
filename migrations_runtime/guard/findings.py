"""What the guard reports: findings, and the rules that produce them.

A rule is data (name, severity, doc, hint, examples) plus, for SQL rules, a check function, so
the docs, the SARIF rule table and the example tests all read the same objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sqltree import RevisionContext, Statement


# Every rule by name, filled as rule modules create their `RULE`: findings cross process
# boundaries pickled by rule name, and the receiving process has imported the same rules.
_RULES_BY_NAME: dict[str, Rule] = {}


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Rule:
    """A framework rule: checked by the engine itself (file names, history, git base)."""

    name: str
    severity: Severity
    doc: str
    hint: str

    def __post_init__(self) -> None:
        _RULES_BY_NAME.setdefault(self.name, self)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        """Pickle by name (findings cross process boundaries), so `finding.rule is RULE`
        holds in the parent process too."""
        return (_rule_named, (self.name,))


@dataclass(frozen=True)
class StatementRule(Rule):
    """A SQL rule: `check` yields one message per problem in one statement of a revision.

    `bad` and `good` are whole up-sections of a revision of service `users` (with `orders` as a
    second service); the tests lint every one of them.
    """

    check: Callable[[Statement, RevisionContext], Iterable[str]] = field(
        default=lambda stmt, ctx: (), compare=False, repr=False)
    bad: tuple[str, ...] = ()
    good: tuple[str, ...] = ()
    kinds: tuple[type, ...] | None = None
    """The statement node types `check` can find anything in (None: every statement), so the
    linter skips the rule for the others."""


def _rule_named(name: str) -> Rule:
    return _RULES_BY_NAME[name]


@dataclass(frozen=True)
class Finding:
    """One problem at one place. `line`/`column` are 1-based; file-level findings use 1:1."""

    path: Path
    line: int
    column: int
    rule: Rule
    message: str

    @property
    def severity(self) -> Severity:
        return self.rule.severity

    def sort_key(self) -> tuple[str, int, int, str]:
        return (str(self.path), self.line, self.column, self.rule.name)
