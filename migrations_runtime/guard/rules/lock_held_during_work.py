"""In a transactional revision every lock is held until it commits: a strong lock on a table in
use, followed by anything that scans, rewrites or changes many rows, blocks the table for all
of that work."""

from __future__ import annotations

from collections.abc import Iterator

from pglast.enums import AlterTableType

from ..effects import heavy_work, strong_locks
from ..findings import Severity, StatementRule
from ..sqltree import RevisionContext, Statement, alter_commands
from .dml_without_where import backfill_hint

DATA_CHANGES = frozenset({"UPDATE", "DELETE", "MERGE", "INSERT … SELECT"})
"""Work (effects.heavy_work) that belongs in a backfill."""

BAD = (
    "ALTER TABLE users ADD COLUMN plan text;\n"
    "UPDATE users SET plan = 'free' WHERE plan IS NULL;",
    "ALTER TABLE users ADD CONSTRAINT users_age_check CHECK (age >= 0) NOT VALID;\n"
    "ALTER TABLE users VALIDATE CONSTRAINT users_age_check;",
    "ALTER TABLE users ADD CONSTRAINT c CHECK (a > 0) NOT VALID, VALIDATE CONSTRAINT c;",
    "ALTER TABLE users RENAME COLUMN tmp TO tmp2;\n"
    "SELECT id FROM users WHERE plan = 'free' FOR UPDATE;",
    "LOCK TABLE users IN SHARE MODE;\nDELETE FROM users WHERE last_seen < '2020-01-01';",
    "CREATE INDEX users_plan_idx ON users (plan);\n"
    "UPDATE users SET plan = 'pro' WHERE plan = 'gold';",
)
GOOD = (
    "ALTER TABLE users ADD CONSTRAINT users_age_check CHECK (age >= 0) NOT VALID;\n"
    "-- next revision\n"
    "ALTER TABLE users VALIDATE CONSTRAINT users_age_check;",
    "ALTER TABLE users ADD COLUMN plan text;\n-- next revision\n"
    "UPDATE users SET plan = 'free' WHERE id BETWEEN 1 AND 1000;",
    "-- migrate:no-transaction\nALTER TABLE users ADD COLUMN plan text;\n"
    "UPDATE users SET plan = 'free' WHERE id BETWEEN 1 AND 1000;",
    "CREATE TABLE plans (id int PRIMARY KEY, name text);\n"
    "INSERT INTO plans VALUES (1, 'free');\nUPDATE plans SET name = 'pro' WHERE id = 1;",
    "ALTER TABLE users VALIDATE CONSTRAINT users_age_check;\n"
    "UPDATE users SET plan = 'free' WHERE id = 1;",
    # a row or a batch by key is short, even under the lock
    "ALTER TABLE users ADD COLUMN plan text;\n"
    "UPDATE app_config SET value = '2' WHERE id = 1;",
)


def check(stmt: Statement, ctx: RevisionContext) -> Iterator[str]:
    if ctx.transactional and ctx.held:
        work = next(heavy_work(stmt, ctx), None)
        if work is None:
            return
        table, (mode, command, line) = next(iter(ctx.held.items()))
        done = work
        instead = (f"; move the data change to a backfill ({backfill_hint(ctx)})"
                   if done.what in DATA_CHANGES else "")
        yield (f"{done.what} on {'.'.join(done.table)} runs while this revision holds {mode} on "
               f"{'.'.join(table)} ({command}, line {line}) until it commits: every query on "
               f"it waits for this work{instead}")
        return
    commands = [cmd for _, cmd in alter_commands(stmt)]
    validates = [c for c in commands if c.subtype == AlterTableType.AT_ValidateConstraint]
    own = list(strong_locks(stmt, ctx))
    if validates and own and len(commands) > len(validates):
        yield (f"VALIDATE CONSTRAINT {validates[0].name} scans {'.'.join(own[0].table)} in the "
               f"same ALTER TABLE that takes {own[0].mode} on it: the scan runs under that lock")


RULE = StatementRule(
    name="lock-held-during-work",
    severity=Severity.ERROR,
    doc=__doc__ or "",
    hint="Keep the catalog change alone in its revision (a transactional file is one "
    "transaction): a data change goes to a backfill (services/<service>/backfills/…, bounded "
    "by `id >= :start AND id < :end`, run in short batches by `svcmig backfill run`), a "
    "VALIDATE or index build to a later revision; or mark the revision "
    "'-- migrate:no-transaction' so each statement commits on its own.",
    check=check,
    bad=BAD,
    good=GOOD,
)
