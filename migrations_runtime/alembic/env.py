"""Alembic environment for svcmig: everything is in migrations_runtime.alembic_env."""

from alembic import context

from migrations_runtime.alembic_env import run

run(context)
