"""Rules of trace mode (`svcmig lint --trace`, `migrations_runtime.tools.trace`): what a
revision was observed to do on a throwaway Postgres, statement by statement."""

from __future__ import annotations

from ..findings import Rule, Severity

REWRITE = Rule(
    name="traced-rewrite",
    severity=Severity.ERROR,
    doc="The statement rewrote a table or index that existed before the revision (its "
    "relfilenode changed): the relation is locked while every row is copied.",
    hint="Use the non-rewriting form (see the static rule on the same line), or a new "
    "column/table filled by a backfill (services/<service>/backfills/…, `svcmig backfill run`) "
    "and swapped in a contract revision.",
)
LOCK_HELD = Rule(
    name="traced-lock-held-during-work",
    severity=Severity.ERROR,
    doc="A strong lock (SHARE or above, from pg_locks) taken by an earlier statement of the "
    "transactional revision was held while this statement scanned, rewrote, built an index on "
    "or changed rows of a pre-existing table.",
    hint="Split the revision: the catalog change in one; a data change in a backfill "
    "(services/<service>/backfills/…, bounded by `id >= :start AND id < :end`, run by `svcmig "
    "backfill run`), other work in a later revision (or mark it '-- migrate:no-transaction').",
)
UNBOUNDED_SCAN = Rule(
    name="traced-unbounded-scan",
    severity=Severity.ERROR,
    doc="A data change or locking read scanned a pre-existing table sequentially although "
    "sequential scans were off: no index bounds the rows it touches.",
    hint="Move the data change to a backfill (services/<service>/backfills/…, bounded by "
    "`id >= :start AND id < :end`, run in short batches after the deploy by `svcmig backfill "
    "run`), or bound it by a small, known set of keys.",
)
ERROR = Rule(
    name="traced-error",
    severity=Severity.WARNING,
    doc="The revision could not be traced: it failed on the traced schema (empty tables, the "
    "service's history applied) or its history could not be applied.",
    hint="Run `svcmig migrate` on a scratch database to see the failure; a revision that "
    "needs data to succeed cannot be traced.",
)
