"""The users service's tables as SQLAlchemy Core metadata, for `alembic revision --autogenerate
--head users@head` and `alembic check` (see docs/writing-migrations.md, "Autogenerate").

It describes what the service's migrations build; the migrations stay the source of truth,
and `alembic check` (run in CI) fails when the two drift apart. SQLAlchemy is a dev
dependency: the Lambda handlers never import this module.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(schema="users")

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False,
              server_default=sa.text("now()")),
    sa.Column("display_name", sa.Text),
    sa.Column("email_domain", sa.Text),  # filled by the backfill users.fill_email_domain
    sa.CheckConstraint("email_domain IS NOT NULL", name="users_email_domain_present"),
)
sa.Index("users_email_key", sa.func.lower(users.c.email), unique=True)

idempotency_records = sa.Table(
    "idempotency_records", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("expiration", sa.BigInteger, nullable=False),
    sa.Column("in_progress_expiration", sa.BigInteger),
    sa.Column("data", sa.Text),
    sa.Column("validation", sa.Text),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False,
              server_default=sa.text("now()")),
    sa.CheckConstraint("status IN ('INPROGRESS', 'COMPLETED')",
                       name="idempotency_records_status_check"),
)
