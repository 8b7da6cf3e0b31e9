"""A migration file that does not parse or load is never skipped: nothing can check it."""

from ..findings import Rule, Severity

RULE = Rule(
    name="parse-error",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint=(
        "Fix the syntax at the reported line; the linter parses with PostgreSQL's own parser "
        "(libpg_query)."
    ),
)
