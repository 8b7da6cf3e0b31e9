"""A revision without a down section cannot be rolled back (`alembic downgrade`) nor
round-tripped by `svcmig check`."""

from ..findings import Rule, Severity

RULE = Rule(
    name="missing-down",
    severity=Severity.WARNING,
    doc=__doc__ or "",
    hint=(
        "Add a '-- migrate:down' section (Python: a downgrade() body); if it cannot be undone, "
        "say why: '-- irreversible: <why>' in an empty down section (Python: "
        "irreversible = \"<why>\")."
    ),
)
