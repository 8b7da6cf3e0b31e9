"""The deploy path: discover → load → validate → plan → apply → report, with the ledger, the lock,
the statements a revision runs and the build-time manifest. This is all the migrator Lambda
ships (with the Alembic adapter), so it imports nothing from the other subpackages: the tools,
the guard, the CLI and the dev server depend on it, never the reverse.

Modules, in the order of the flow:
- `discover`: services under `services/<name>/migrations/` (step 1)
- `load`: every file becomes a `Revision` (step 2)
- `validate`: one linear branch per service → `Graph` (step 3)
- `plan`: graph + database state → ordered steps and anomalies (step 4)
- `apply`, with `database`, `lock`, `ledger`, `statements`: run the plan (step 5)
- `report`: one result object for every entry point (step 6)
- `manifest`: the graph as one JSON file, built at deploy-build time
- `repair`: baseline an existing database, settle a dirty or edited revision
- `backfill`, `backfill_runner`: data changes run after the deploy in resumable batches, and
  their progress, which revisions may wait for (`requires-backfill`)
- `errors`: the error types every step raises
"""
