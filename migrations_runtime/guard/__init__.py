"""The CI guard (`svcmig lint`): stops unsafe, edited or cross-service migrations before merge.

`linter.Linter` lints files; `rules` holds one rule per module; the click command is
`migrations_runtime.cli.lint`.
"""

from .findings import Finding, Rule, Severity, StatementRule
from .linter import Linter, lint_example

__all__ = ["Finding", "Linter", "Rule", "Severity", "StatementRule", "lint_example"]
