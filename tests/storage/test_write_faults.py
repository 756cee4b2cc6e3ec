"""Storage that cannot turn a success into an error or a stall (issue 10, item 7): a COMMIT
whose answer is lost is not replayed into a duplicate, a database that cannot be reached is
retried briefly and then answered with `StorageUnavailable` (503), and the write queue is
bounded. On real SQLite files and the real PostgreSQL server; the faults are injected around
the runner's real transaction, after (or instead of) its real COMMIT."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy

from taskyard import errors
from taskyard.api.app import create_app
from taskyard.config import Settings
from taskyard.domain import lifecycle
from taskyard.storage.batcher import GroupCommitter
from taskyard.storage.faults import CommitOutcomeUnknown
from taskyard.storage.sql import SqlStore
from tests.support import SECRET, bearer, count_rows, token
from tests.unit.factories import make_task


class LoseCommitAnswers:
    """Wraps a runner's `transaction`: the next `lose` transactions really commit, and then
    their caller is told the outcome is unknown, as when a connection dies right after COMMIT."""

    def __init__(self, store: SqlStore, *, lose: int = 1, of: str = "") -> None:
        self.real = store.runner.transaction
        self.lose = lose
        self.of = of  # only transactions with an operation made in this function
        self.calls = 0
        store.runner.transaction = self  # type: ignore[method-assign]

    async def __call__(self, ops: list[Any]) -> list[Any]:
        self.calls += 1
        results = await self.real(ops)
        if self.lose > 0 and any(self.of in op.__qualname__ for op in ops):
            self.lose -= 1
            raise CommitOutcomeUnknown("ConnectionResetError")
        return results


async def created_count(store: SqlStore) -> int:
    query = "SELECT COALESCE(SUM(count), 0) FROM stat_rollups WHERE event = 'created'"

    def total(conn: sqlalchemy.Connection) -> int:
        return int(conn.execute(sqlalchemy.text(query)).scalar_one())

    return await store.runner.read(total)


async def rows(url: str, table: str) -> int:
    return await asyncio.to_thread(count_rows, url, table)


async def test_a_create_whose_commit_answer_is_lost_is_stored_and_counted_once(
    store: SqlStore, url: str
) -> None:
    faults = LoseCommitAnswers(store)
    await store.add_task(make_task(id="kept"))  # answered as stored, not as an error
    assert faults.calls == 2  # the commit, then its replay
    assert (await store.get_task("kept")) is not None
    assert await rows(url, "tasks") == 1
    assert await created_count(store) == 1


async def test_a_lost_commit_answer_fails_writes_that_cannot_tell_what_was_stored(
    store: SqlStore,
) -> None:
    task = make_task(id="t")
    await store.add_task(task)
    update, _ = lifecycle.cancel(task, now=2_000, grace_ms=0)
    LoseCommitAnswers(store)
    with pytest.raises(errors.StorageUnavailable):
        await store.update_task(update)  # not replayed: a replay would report it lost
    assert (await store.get_task("t")).status.value == "CANCELLED"  # type: ignore[union-attr]


async def test_the_api_answers_201_once_for_a_create_whose_commit_answer_is_lost(
    tmp_path: Path,
) -> None:
    database = f"sqlite:///{tmp_path / 'lost-commit.db'}"
    app = create_app(Settings(database_url=database, jwt_secret=SECRET))
    user = bearer(token(["user"]))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://yard") as client,
    ):
        faults = LoseCommitAnswers(app.state.coordinator.store, of="add_tasks")
        response = await client.post("/api/task", json={"model": "m"}, headers=user)
        assert response.status_code == 200, response.text  # the seed's status for a create
        assert faults.lose == 0  # the fault did happen
        task_id = response.json()["taskId"]
        assert (await client.get(f"/api/task/{task_id}", headers=user)).status_code == 200
    assert await rows(database, "tasks") == 1


# ---- the group committer alone -------------------------------------------------------------


class Unreachable:
    """A transaction function: unreachable for the first `down` calls, then fine."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.calls = 0

    async def __call__(self, ops: list[Any]) -> list[Any]:
        self.calls += 1
        if self.calls <= self.down:
            raise errors.StorageUnavailable("database unavailable (ConnectionRefusedError)")
        return [op(None) for op in ops]


async def test_an_unreachable_database_is_retried_briefly_then_answered_unavailable() -> None:
    brief = Unreachable(down=2)
    writes = GroupCommitter(brief, retry_base_s=0.001)
    assert await writes.run(lambda _conn: "stored") == "stored"
    assert brief.calls == 3
    down = Unreachable(down=100)
    writes = GroupCommitter(down, retry_base_s=0.001)
    with pytest.raises(errors.StorageUnavailable):
        await writes.run(lambda _conn: "never")
    assert down.calls == 4  # the first try and three retries, no more
    await writes.close()


def returns(value: int) -> Callable[[Any], int]:
    return lambda _conn: value


async def test_past_its_bound_the_write_queue_sheds_creates_at_once() -> None:
    gate = asyncio.Event()

    async def slow(ops: list[Any]) -> list[Any]:
        await gate.wait()
        return [op(None) for op in ops]

    writes = GroupCommitter(slow, max_batch=1, max_pending=3)
    first = asyncio.ensure_future(writes.run(lambda _conn: 0, shed=True))
    await asyncio.sleep(0)  # the loop takes it: it is now in the (stuck) transaction
    queued = [asyncio.ensure_future(writes.run(returns(i), shed=True)) for i in range(3)]
    await asyncio.sleep(0)
    assert writes.pending == 3
    with pytest.raises(errors.StorageBusy):
        await writes.run(lambda _conn: "too many", shed=True)
    # Writes that must not be shed (state changes of tasks already accepted) still queue.
    unshed = asyncio.ensure_future(writes.run(lambda _conn: "state change"))
    gate.set()
    assert await asyncio.gather(first, *queued, unshed) == [0, 0, 1, 2, "state change"]
    await writes.close()


async def test_closing_mid_transaction_fails_its_writes_and_those_queued() -> None:
    started, gate = asyncio.Event(), asyncio.Event()

    async def stuck(ops: list[Any]) -> list[Any]:
        started.set()
        await gate.wait()
        return [op(None) for op in ops]

    writes = GroupCommitter(stuck, max_batch=1)
    running = asyncio.ensure_future(writes.run(returns(1)))
    await started.wait()
    queued = asyncio.ensure_future(writes.run(returns(2)))
    await asyncio.sleep(0)
    await writes.close()
    for write in (running, queued):  # answered, not left waiting for ever
        with pytest.raises(RuntimeError, match="storage closed"):
            await asyncio.wait_for(write, 5)
