"""A migration file lives in services/<service>/migrations/ (a backfill in
services/<service>/backfills/) of the service its name gives."""

from ..findings import Rule, Severity

BAD = ("services/orders/migrations/2026-11-25T1405__users__add_email.sql",
       "migrations/2026-11-25T1405__users__add_email.sql")
GOOD = ("services/users/migrations/2026-11-25T1405__users__add_email.sql",)

RULE = Rule(
    name="wrong-service-folder",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Move the file to services/<service>/migrations/ (a backfill to "
    "services/<service>/backfills/) or rename it for the folder's service; "
    "it runs as that service's owner role in that service's schema.",
)
