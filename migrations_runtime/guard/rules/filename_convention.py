"""Migration and backfill files are named YYYY-MM-DDThhmm__<service>__<slug>.sql|.py, or they
are refused."""

from ..findings import Rule, Severity

BAD = ("add_email.sql", "2026-11-25__users__add_email.sql", "2026-11-25T1405__users__Add-Email.sql")
GOOD = ("2026-11-25T1405__users__add_email.sql", "2026-11-25T1405__users__add_email.py")

RULE = Rule(
    name="filename-convention",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Rename the file, e.g. 2026-11-25T1405__users__add_email.sql: the name gives the "
    "revision id and its order.",
)
