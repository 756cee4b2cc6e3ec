"""The per-user cap on unfinished tasks (`max_unfinished_tasks`) in `SqlStore.add_tasks`, on
both databases: creates of one owner that share a group commit are counted once per
transaction (on PostgreSQL under the owner's lock), their own inserts added, and the cap is
exact: never overrun, and no place is lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import event

from taskyard import errors
from taskyard.domain.models import TaskStatus
from taskyard.storage.sql import SqlStore
from tests.unit.factories import make_task

CAP = 5


def count_queries(store: SqlStore) -> list[str]:
    """The unfinished counts the store's write transactions run, as they run."""
    seen: list[str] = []
    # SQLite's creates run on the inline write engine (no other process holds the lock here).
    engine: Any = getattr(store.runner, "inline_engine", None) or store.runner.engine  # type: ignore[attr-defined]
    sync_engine = getattr(engine, "sync_engine", engine)

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SELECT count(*)") and "tasks.owner =" in statement:
            seen.append(statement)

    event.listen(sync_engine, "before_cursor_execute", before)
    return seen


async def test_creates_in_one_group_commit_fill_the_cap_exactly(store: SqlStore) -> None:
    counts = count_queries(store)
    tasks = [make_task(id=f"t{i}", owner="alice") for i in range(CAP + 3)]
    outcomes = await asyncio.gather(
        *(store.add_task(t, unfinished_cap=CAP) for t in tasks), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, errors.QuotaExceeded)]
    assert [o for o in outcomes if o is not None and o not in refused] == []
    assert (len(outcomes) - len(refused), len(refused)) == (CAP, 3)
    stored = [t for t in tasks if await store.get_task(t.id) is not None]
    assert len(stored) == CAP and all(t.status is TaskStatus.WAITING for t in stored)
    assert len(counts) == 1  # one count for the owner in the one transaction, not one a create
    # Another owner has places of its own; the next transaction counts afresh.
    await store.add_task(make_task(id="b0", owner="bob"), unfinished_cap=CAP)
    with pytest.raises(errors.QuotaExceeded):
        await store.add_task(make_task(id="t-late", owner="alice"), unfinished_cap=CAP)
    assert len(counts) == 3
