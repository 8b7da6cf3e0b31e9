"""Each service's revisions form one line: one root, one head, every parent known."""

from ..findings import Rule, Severity

RULE = Rule(
    name="one-head-per-service",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint=(
        "Point down_revision at the service's newest other revision (SQL files chain themselves "
        "by name order)."
    ),
)
