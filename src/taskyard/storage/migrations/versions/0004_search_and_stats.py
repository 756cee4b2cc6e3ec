"""search and stats: indexes for `GET /api/tasks`, and the per-minute rollups of the statistics

`ix_tasks_created` and `ix_tasks_owner_created` let a search page walk tasks newest first (all
of them, or one owner's) and stop after its limit. `stat_rollups` holds the counters and
histograms that `/api/stats` reads (domain/tallies.py), written with the state changes they
count. As with 0003, a large PostgreSQL table is better indexed `CONCURRENTLY` by hand first.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_created", "tasks", ["created_at", "id"], if_not_exists=True)
    op.create_index(
        "ix_tasks_owner_created", "tasks", ["owner", "created_at", "id"], if_not_exists=True
    )
    op.create_table(
        "stat_rollups",
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("server_id", sa.String(128), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("total_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "minute", "node_id", "event", "model", "server_id", "code", "bucket"
        ),
    )
    op.create_index("ix_stat_rollups_event", "stat_rollups", ["event", "minute"])


def downgrade() -> None:
    op.drop_table("stat_rollups")
    op.drop_index("ix_tasks_owner_created", table_name="tasks")
    op.drop_index("ix_tasks_created", table_name="tasks")
