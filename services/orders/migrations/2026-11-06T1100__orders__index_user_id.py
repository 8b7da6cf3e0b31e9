"""index orders by user

Revision ID: orders_202611061100
Revises: orders_202611031000
Create Date: 2026-11-06 11:00:00+00:00
"""

from alembic import op

revision = "orders_202611061100"
down_revision = "orders_202611031000"
branch_labels = None
depends_on = None
phase = "expand"
# CREATE INDEX CONCURRENTLY cannot run inside a transaction block.
transactional = False


def upgrade() -> None:
    op.create_index(
        "orders_user_id_idx", "orders", ["user_id", "id"],
        postgresql_concurrently=True, if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("orders_user_id_idx", table_name="orders", postgresql_concurrently=True,
                  if_exists=True)
