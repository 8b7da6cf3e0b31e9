"""A new revision must be newer than every revision of its service on the base branch."""

from ..findings import Rule, Severity

RULE = Rule(
    name="out-of-order",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint=(
        "Rename the file with the current time (YYYY-MM-DDThhmm) so it sorts after the service's "
        "newest revision."
    ),
)
