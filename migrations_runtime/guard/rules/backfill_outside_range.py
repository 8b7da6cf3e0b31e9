"""A backfill's statement runs once per key range [start, end): every row it changes (or
row-locks) must lie in that range, bounded by the key with `>= :start` and `< :end`. A bound
joined by OR, one on another column than the backfill's key, `<= :end` (the next batch's first
key), `> :start` (the batch's first key, never changed) or `:start` used only outside the
filter makes a batch touch rows outside its range — or every batch the whole table."""

from ..findings import Rule, Severity

BAD = (
    "UPDATE users SET plan = 'free' WHERE id >= :start OR true;",
    "UPDATE users SET first_id = :start WHERE id < :end;",
    "DELETE FROM sessions WHERE id BETWEEN :start AND :end;",
    "WITH gone AS (DELETE FROM audit RETURNING id)\n"
    "UPDATE users SET audited = true WHERE id >= :start AND id < :end;",
)
GOOD = (
    "UPDATE users SET plan = 'free' WHERE id >= :start AND id < :end AND plan IS NULL;",
    "UPDATE users SET plan = 'free' WHERE id BETWEEN :start AND :end - 1;",
    "INSERT INTO user_stats (user_id, n) SELECT id, 0 FROM users\n"
    "WHERE id >= :start AND id < :end ON CONFLICT (user_id) DO NOTHING;",
)

RULE = Rule(
    name="backfill-outside-range",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Bound every row the statement changes by the backfill's key, ANDed with the rest of "
    "the filter: WHERE <key> >= :start AND <key> < :end (or through a join on a table so "
    "bounded); the runner walks the key in ranges [start, end).",
)
