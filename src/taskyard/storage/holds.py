"""Held backend slots (`slot_holds`) and the cancels owed to backends: the statements, run by
`SqlStore` on its connections. A hold is inserted in the transaction of the state change that
ended its attempt (`TaskUpdate.hold`), so it is as durable as that change."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, delete, func, select, update

from taskyard.domain.models import SlotHold
from taskyard.storage.tables import servers, slot_holds

# Each server's held slots, beside its running tasks in the server list (ix_slot_holds_server).
HELD = (
    select(func.count())
    .where(slot_holds.c.server_id == servers.c.id)
    .scalar_subquery()
    .label("held")
)


def insert_hold(conn: Connection, hold: SlotHold) -> None:
    """Record a hold; an attempt is held once (a second end of it changes nothing)."""
    exists = select(slot_holds.c.task_id).where(
        slot_holds.c.task_id == hold.task_id, slot_holds.c.attempt == hold.attempt
    )
    if conn.execute(exists).first() is None:
        conn.execute(slot_holds.insert().values(_row(hold)))


def due_cancels(now: int, limit: int) -> Select[Any]:
    return (
        select(slot_holds)
        .where(slot_holds.c.cancel_due_at <= now)
        .order_by(slot_holds.c.cancel_due_at, slot_holds.c.task_id)
        .limit(limit)
    )


def claim_cancel(hold: SlotHold, next_try_at: int | None) -> Any:
    """Compare-and-set on the due time read: of nodes sending at once, one wins."""
    return (
        update(slot_holds)
        .where(
            slot_holds.c.task_id == hold.task_id,
            slot_holds.c.attempt == hold.attempt,
            slot_holds.c.cancel_due_at == hold.cancel_due_at,
        )
        .values(cancel_due_at=next_try_at, cancel_tries=slot_holds.c.cancel_tries + 1)
    )


def release(task_id: str, attempt: int | None, server_id: str | None) -> Any:
    conditions = [slot_holds.c.task_id == task_id]
    if attempt is not None:
        conditions.append(slot_holds.c.attempt == attempt)
    if server_id is not None:
        conditions.append(slot_holds.c.server_id == server_id)
    return delete(slot_holds).where(and_(*conditions))


PRUNE = delete(slot_holds).where(slot_holds.c.held_until < bindparam("now"))


def of_servers(server_ids: list[str]) -> Any:
    return delete(slot_holds).where(slot_holds.c.server_id.in_(server_ids))


def from_row(row: Any) -> SlotHold:
    return SlotHold(
        task_id=row.task_id,
        attempt=row.attempt,
        server_id=row.server_id,
        held_until=row.held_until,
        cancel_due_at=row.cancel_due_at,
        cancel_tries=row.cancel_tries,
    )


def _row(hold: SlotHold) -> dict[str, Any]:
    return {
        "task_id": hold.task_id,
        "attempt": hold.attempt,
        "server_id": hold.server_id,
        "held_until": hold.held_until,
        "cancel_due_at": hold.cancel_due_at,
        "cancel_tries": hold.cancel_tries,
    }
