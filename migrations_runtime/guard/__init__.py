"""The CI guard (`svcmig lint`): stops unsafe, edited or cross-service migrations before merge.

`cli.lint` is the click command; `engine.Linter` lints files; `rules` holds one rule per module.
"""

from .engine import Linter, lint_example
from .findings import Finding, Rule, Severity, StatementRule

__all__ = ["Finding", "Linter", "Rule", "Severity", "StatementRule", "lint_example"]
