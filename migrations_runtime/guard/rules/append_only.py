"""A revision on the base branch may be applied somewhere: never edit, rename or delete it."""

from ..findings import Rule, Severity

RULE = Rule(
    name="append-only",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint=(
        "Restore the file from the base branch and write a new revision that makes the change."
    ),
)
