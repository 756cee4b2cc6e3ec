"""Housekeeping in bounded pieces (issue 10, item 7): old results are purged a chunk per
transaction and a bounded number of chunks per round, and a dead node's attempts are
re-queued a page at a time, so neither a backlog nor a big crash stalls the writes."""

from __future__ import annotations

import pytest

from taskyard.domain import chores, lifecycle
from taskyard.domain.models import TaskStatus
from tests.unit.factories import make_task
from tests.unit.fakes import ScriptedBackend
from tests.unit.test_coordinator_memory import memory_yard


async def test_old_results_are_purged_in_chunks_and_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chores, "PURGE_CHUNK", 10)
    monkeypatch.setattr(chores, "PURGE_CHUNKS_PER_ROUND", 3)
    yard = memory_yard(ScriptedBackend())
    for i in range(45):
        await yard.store.add_task(
            make_task(id=f"old-{i:02}", status=TaskStatus.FINISHED, finished_at=1)
        )
    housekeeping = yard.chores
    now = 1 + int(yard.config.result_retention_s * 1000) + 1
    assert await housekeeping.purge_old_results(now) == 30  # three chunks, then the round ends
    assert await housekeeping.purge_old_results(now) == 15
    assert await yard.store.count_tasks() == {}


async def test_a_dead_nodes_attempts_are_requeued_a_page_per_round() -> None:
    yard = memory_yard(ScriptedBackend())
    batch = yard.dispatcher.policy.batch
    for i in range(batch + 5):
        task = make_task(id=f"lost-{i:04}")
        await yard.store.add_task(task)
        update, _ = lifecycle.start_attempt(
            task, server_id="gpu", node_id="dead", callback_url="http://cb", now=2_000
        )
        assert await yard.store.update_task(update)
    housekeeping = yard.chores
    await housekeeping.recover_lost_nodes([])
    assert (await yard.store.count_tasks())["WAITING"] == batch
    await housekeeping.recover_lost_nodes([])
    assert await yard.store.count_tasks() == {"WAITING": batch + 5}
