"""A task created while servers have free slots is claimed beside its insert, not after its
commit and a dispatcher pass (issue 11: one transaction less from create to send), with the
dispatcher's loop running on a MemoryStore; on SQLite, insert and claim share one commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from taskyard import auth
from taskyard.clock import SystemClock, now_ms
from taskyard.config import Settings
from taskyard.domain.coordinator import Coordinator
from taskyard.domain.models import Task, TaskOptions, TaskStatus
from taskyard.domain.policies import CoordinatorConfig
from taskyard.domain.ports import ClaimPlan, PredictReply, ReplyKind
from taskyard.domain.registry import Registration
from taskyard.domain_config import coordinator_config
from taskyard.storage.migrate import upgrade
from taskyard.storage.sql import SqlStore
from taskyard.testing import MemoryStore
from tests.unit.fakes import ScriptedBackend

BASE_URL = "http://yard.test"
ALICE = auth.Principal(sub="alice", roles=frozenset({auth.USER}))
ACCEPTED = PredictReply(ReplyKind.ACCEPTED, status=202)


def slow_passes() -> CoordinatorConfig:
    """Passes so slow that whatever reaches the backend within a test was claimed beside a
    create."""
    config = coordinator_config(Settings(public_url=BASE_URL, dispatch_poll_s=60.0), "n1")
    return replace(config, dispatch=replace(config.dispatch, coalesce_s=60.0))


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.claims = 0

    async def claim_tasks(self, *, now: int, plan: ClaimPlan) -> list[bool]:
        self.claims += 1
        return await super().claim_tasks(now=now, plan=plan)


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
async def yard(backend: ScriptedBackend) -> AsyncIterator[Coordinator]:
    yard = Coordinator(
        store=CountingStore(),
        client=backend,
        tokens=auth.JwtIssuer("alongside-secret-" + "k" * 30),
        config=slow_passes(),
        clock=SystemClock(),
    )
    url = "http://s1.test/predict"
    await yard.fleet.register_server(Registration("s1", "s1", "t", url, None, max_concurrency=2))
    loop = asyncio.create_task(yard.dispatcher.run())
    await asyncio.sleep(0)  # the loop has started
    yield yard
    await yard.dispatcher.close(grace_s=0)
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)


async def create(yard: Coordinator) -> Task:
    return await yard.tasks.create_task(
        owner="alice", request={"model": "m"}, options=TaskOptions()
    )


async def test_tasks_created_while_slots_are_free_run_without_a_pass(yard: Coordinator) -> None:
    for _ in range(3):
        task = await create(yard)
        done = await yard.reads.wait_task(task.id, principal=ALICE, wait_s=5)
        assert done.status is TaskStatus.FINISHED  # the pass would have slept a minute


async def test_a_full_fleet_takes_no_claim_beside_a_create(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    backend.always["http://s1.test/predict"] = ACCEPTED  # each holds its slot
    first, second = await create(yard), await create(yard)
    await yard.dispatcher.sends_recorded()
    assert [(await yard.store.get_task(t.id)).status for t in (first, second)] == [  # type: ignore[union-attr]
        TaskStatus.PROCESSING
    ] * 2
    store = yard.store
    assert isinstance(store, CountingStore)
    claims = store.claims  # the second claim found the last slot: none is left to spare
    third = await create(yard)
    await yard.dispatcher.sends_recorded()  # whatever was spawned for it has run
    assert store.claims == claims
    assert (await store.get_task(third.id)).status is TaskStatus.WAITING  # type: ignore[union-attr]


async def test_on_sqlite_an_insert_and_the_claim_beside_it_share_one_commit(
    tmp_path: Path, backend: ScriptedBackend
) -> None:
    url = f"sqlite:///{tmp_path / 'alongside.db'}"
    await upgrade(url)
    store = SqlStore.open(url, node_id="n1")
    commits = 0
    transaction = store.runner.transaction

    async def counted(ops: list[Any]) -> list[Any]:
        nonlocal commits
        commits += 1
        return await transaction(ops)

    store.runner.transaction = counted  # type: ignore[method-assign]
    yard = Coordinator(
        store=store,
        client=backend,
        tokens=auth.JwtIssuer("alongside-secret-" + "k" * 30),
        config=slow_passes(),
        clock=SystemClock(),
    )
    url_s1 = "http://s1.test/predict"
    await yard.fleet.register_server(Registration("s1", "s1", "t", url_s1, None, max_concurrency=4))
    backend.always[url_s1] = ACCEPTED  # the send records one more write: keep it apart
    loop = asyncio.create_task(yard.dispatcher.run())
    await asyncio.sleep(0)  # the loop has started
    try:
        before = commits
        task = await create(yard)
        assert commits == before + 1  # its insert, and in the same transaction its claim
        await yard.dispatcher.sends_recorded()
        stored = await store.get_task(task.id)
        assert stored is not None and stored.status is TaskStatus.PROCESSING
        assert stored.attempts[0].started_at >= task.created_at
        assert now_ms() >= stored.updated_at
    finally:
        await yard.dispatcher.close(grace_s=0)
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await store.close()
