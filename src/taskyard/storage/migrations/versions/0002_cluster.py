"""cluster: leases, and which node checks each server

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 20:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("servers") as batch_op:
        batch_op.add_column(sa.Column("checked_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("servers") as batch_op:
        batch_op.drop_column("checked_by")
    op.drop_table("leases")
