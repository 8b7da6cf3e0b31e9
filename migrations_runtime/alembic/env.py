"""Alembic environment for svcmig: everything is in migrations_runtime.alembic.environment."""

from alembic import context

from migrations_runtime.alembic.environment import run

run(context)
