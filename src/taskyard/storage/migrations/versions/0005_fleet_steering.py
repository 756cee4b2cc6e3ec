"""fleet steering: maintenance, ejection, backend credentials, held slots, manual retry

Servers gain a registration `revision` (health results and counters for an older registration
match nothing), `cancel_url` and `api_key`, `auto_remove`, maintenance fields and the ejection
state. `slot_holds` keeps counting a backend's slot after its attempt ended here (cancelled,
timed out, abandoned) until the backend lets go, with the cancel owed to it. Tasks gain
`attempt_base`, the attempts made before their latest manual retry.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 05:00:00
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_SERVER_COLUMNS: list[sa.Column[Any]] = [
    sa.Column("revision", sa.String(32), nullable=False, server_default="0"),
    sa.Column("cancel_url", sa.String(2048), nullable=True),
    sa.Column("api_key", sa.Text(), nullable=True),
    sa.Column("auto_remove", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("maintenance", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("maintenance_reason", sa.Text(), nullable=True),
    sa.Column("maintenance_since", sa.BigInteger(), nullable=True),
    sa.Column("consecutive_rejections", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("ejected", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("ejected_until", sa.BigInteger(), nullable=True),
    sa.Column("ejections", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("ejection_reason", sa.String(32), nullable=True),
]


def upgrade() -> None:
    with op.batch_alter_table("servers") as batch:
        for column in _SERVER_COLUMNS:
            batch.add_column(column)
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("attempt_base", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "slot_holds",
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.String(128), nullable=False),
        sa.Column("held_until", sa.BigInteger(), nullable=False),
        sa.Column("cancel_due_at", sa.BigInteger(), nullable=True),
        sa.Column("cancel_tries", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("task_id", "attempt"),
    )
    op.create_index("ix_slot_holds_server", "slot_holds", ["server_id"])
    op.create_index("ix_slot_holds_cancel_due", "slot_holds", ["cancel_due_at"])
    op.create_index("ix_slot_holds_held_until", "slot_holds", ["held_until"])


def downgrade() -> None:
    op.drop_table("slot_holds")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("attempt_base")
    with op.batch_alter_table("servers") as batch:
        for column in reversed(_SERVER_COLUMNS):
            batch.drop_column(column.name)
