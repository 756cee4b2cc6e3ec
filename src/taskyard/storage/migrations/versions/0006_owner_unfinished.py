"""the cap on a user's unfinished tasks: an index of each owner's WAITING and PROCESSING tasks

Each capped create counts its owner's unfinished tasks in its own transaction; this partial
index makes that count walk those tasks only, never the owner's history.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# As tables.IS_UNFINISHED: `owner <> ''` keeps every other query off this index.
_UNFINISHED = "(status = 'WAITING' OR status = 'PROCESSING') AND owner != ''"


def upgrade() -> None:
    op.create_index(
        "ix_tasks_owner_unfinished",
        "tasks",
        ["owner"],
        sqlite_where=sa.text(_UNFINISHED),
        postgresql_where=sa.text(_UNFINISHED),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_owner_unfinished", table_name="tasks")
