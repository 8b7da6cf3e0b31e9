"""The Alembic adapter: stock `alembic` sees svcmig's conventions.

- `plugin`: the `alembic.plugins` entry point (SQL files as revisions, every service revision
  run as its owner, svcmig's file names for `alembic revision`);
- `environment`: what `env.py` runs (lock, bootstrap, ledger) for online and offline commands;
- `env.py`, `script.py.mako`: the script location `alembic.ini` points at.
"""
