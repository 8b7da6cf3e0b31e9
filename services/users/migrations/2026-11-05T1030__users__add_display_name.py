"""add display name

Revision ID: users_202611051030
Revises: users_202611020900
Create Date: 2026-11-05 10:30:00+00:00
"""

from alembic import op
import sqlalchemy as sa

revision = "users_202611051030"
down_revision = "users_202611020900"
branch_labels = None
depends_on = None
phase = "expand"


def upgrade() -> None:
    op.add_column("users", sa.Column("display_name", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "display_name")
