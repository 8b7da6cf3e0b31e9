"""A revision on the base branch may be applied somewhere: never edit, rename or delete it. A
backfill on the base branch may have started or finished somewhere: never edit it or rename it
to another name."""

from ..findings import Rule, Severity

RULE = Rule(
    name="append-only",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint=(
        "Restore the file from the base branch and write a new revision (or a new backfill, "
        "with a new slug) that makes the change."
    ),
)
