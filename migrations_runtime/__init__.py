"""svcmig: per-service Postgres migrations for serverless monorepos.

- `engine`: the deploy path (discover → load → validate → plan → apply → report); the only part
  the migrator Lambda ships;
- `alembic`: the Alembic adapter (plugin, env, templates), so stock `alembic` agrees with svcmig;
- `guard`: `svcmig lint`, one rule per file;
- `tools`: authoring (new-service, revision), check, graph, plan scripts, the pytest plugin;
- `cli`: the `svcmig` command line, thin adapters over the above;
- `dev`: the embedded local Postgres and the `svcmig dev` server.
"""
