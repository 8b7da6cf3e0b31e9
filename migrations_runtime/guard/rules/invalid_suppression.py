"""A suppression must name a known rule and say why: -- svcmig:ignore <rule> <reason>."""

from ..findings import Rule, Severity

RULE = Rule(
    name="invalid-suppression",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint=(
        "Write the reason after the rule name, e.g. -- svcmig:ignore truncate table is a cache "
        "rebuilt at boot"
    ),
)
