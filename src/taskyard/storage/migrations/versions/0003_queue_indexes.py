"""queue indexes: partial indexes in the order of the claim and of each sweep

The claim ordered `priority DESC, created_at, id` over an index on `(status, priority,
created_at)`, so every claim sorted all due WAITING tasks, and the queue-deadline sweep read them
all: dispatch halved with 50,000 tasks waiting. Each hot query now walks a partial index in its
own order (see tables.py). `ix_tasks_deadline` (`status, deadline_at`) goes too: without
statistics SQLite's planner preferred its `status` prefix to any partial index.

Building an index reads the whole table, finished tasks included, inside the migration's
transaction (other nodes wait on the migration lock meanwhile); on a large PostgreSQL table,
create the new indexes `CONCURRENTLY` by hand with these names and definitions before upgrading
(`IF NOT EXISTS` below then skips them).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WAITING = "status = 'WAITING'"
PROCESSING = "status = 'PROCESSING'"


def _partial_index(name: str, columns: list[str], where: str) -> None:
    """CREATE INDEX IF NOT EXISTS … WHERE …, the same statement on SQLite and PostgreSQL."""
    op.create_index(
        name,
        "tasks",
        [sa.text(column) for column in columns],
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
        if_not_exists=True,
    )


def upgrade() -> None:
    _partial_index("ix_tasks_waiting", ["priority DESC", "created_at", "id"], WAITING)
    _partial_index(
        "ix_tasks_queue_deadline",
        ["queue_deadline_at", "id"],
        f"{WAITING} AND queue_deadline_at IS NOT NULL",
    )
    _partial_index("ix_tasks_attempt_deadline", ["deadline_at", "id"], PROCESSING)
    op.drop_index("ix_tasks_queue", table_name="tasks")
    op.drop_index("ix_tasks_deadline", table_name="tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_deadline", "tasks", ["status", "deadline_at"])
    op.create_index("ix_tasks_queue", "tasks", ["status", "priority", "created_at"])
    for name in ("ix_tasks_attempt_deadline", "ix_tasks_queue_deadline", "ix_tasks_waiting"):
        op.drop_index(name, table_name="tasks")
