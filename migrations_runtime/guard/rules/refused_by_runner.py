"""A statement the runner refuses before it runs anything (`engine.statements.check_statements`):
transaction control in a transactional revision, two-phase commit, RESET ALL, ALTER ROLE,
COPY FROM STDIN / TO STDOUT, svcmig's own settings; in a backfill, what the runner refuses
when it loads it (several statements, a statement that changes no rows, a key it cannot tell, a
Python backfill without batch(conn, start, end), a backfill name used twice). Linted so CI says
it, not the deploy."""

from ..findings import Rule, Severity

RULE = Rule(
    name="refused-by-runner",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Remove the statement, or split the revision (a revision that must commit in steps is "
    "marked '-- migrate:no-transaction') or the backfill (one data change per backfill); see "
    "the message for the statement's alternative.",
)
