"""The store's cluster primitives on real databases: claims under the dispatch lock, leases,
and change notices between nodes. Several `SqlStore`s on one database stand in for nodes.
What one store does alone (and `MemoryStore` must do too) is in contract/."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from taskyard.domain import dispatch, lifecycle
from taskyard.domain.changes import ServerPatch
from taskyard.domain.models import Server, ServerStatus, Task, TaskStatus
from taskyard.domain.ports import ClaimPlan, ClusterHandlers, TaskUpdate, WaitingReader
from taskyard.storage.migrate import upgrade
from taskyard.storage.notify import PgBus
from taskyard.storage.sql import SqlStore
from tests.unit.factories import make_server, make_task


@pytest.fixture
async def url(database_url: str) -> str:
    await upgrade(database_url)
    return database_url


@pytest.fixture
async def stores(url: str) -> AsyncIterator[list[SqlStore]]:
    opened = [SqlStore.open(url) for _ in range(4)]
    yield opened
    for store in opened:
        await store.close()


def planner(node: str, *, now: int) -> ClaimPlan:
    """The dispatcher's rule, made inside the claim transaction: fill free slots, FIFO."""

    def plan(servers: list[Server], waiting: WaitingReader) -> list[TaskUpdate]:
        online = [s for s in servers if s.status is ServerStatus.ONLINE and s.free_slots > 0]
        tasks = waiting(50, None) if online else []
        return [
            lifecycle.start_attempt(
                a.task, server_id=a.server.id, node_id=node, callback_url="http://cb", now=now
            )[0]
            for a in dispatch.assign(tasks, online, random.Random(0), max_ejected_share=0.5)
        ]

    return plan


async def test_concurrent_claims_never_exceed_max_concurrency(stores: list[SqlStore]) -> None:
    """Four nodes claim at once, round after round, while slots free up: the server never runs
    more than its max_concurrency, and no task is started twice."""
    first = stores[0]
    await first.put_server(make_server("gpu", max_concurrency=3))
    for i in range(40):
        await first.add_task(make_task(id=f"t{i:02}", created_at=1_000 + i))
    started: list[str] = []
    for round_no in range(12):
        results = await asyncio.gather(
            *(
                s.claim_tasks(now=10_000, plan=planner(f"n{k}", now=10_000))
                for k, s in enumerate(stores)
            )
        )
        running = [t for t in await _all_tasks(first) if t.status is TaskStatus.PROCESSING]
        assert len(running) <= 3, f"round {round_no}: {len(running)} running on a 3-slot server"
        started += [t.id for t in running if t.id not in started]
        assert sum(sum(won) for won in results) == len(running)
        # Finish what runs, freeing the slots for the next round.
        for task in running:
            await first.update_task(lifecycle.finish(task, result={"ok": 1}, now=10_001)[0])
    assert len(started) == len(set(started)) == 36
    assert all(t.attempt <= 1 for t in await _all_tasks(first))


async def _all_tasks(store: SqlStore) -> list[Task]:
    found = [await store.get_task(f"t{i:02}") for i in range(40)]
    return [t for t in found if t is not None]


async def test_concurrent_lease_attempts_elect_exactly_one(stores: list[SqlStore]) -> None:
    won = await asyncio.gather(
        *(
            s.acquire_lease("chores", holder=f"n{k}", now=5_000, ttl_ms=10_000)
            for k, s in enumerate(stores)
        )
    )
    assert sorted(won) == [False, False, False, True]


async def test_notices_reach_the_other_nodes_only(postgres_database_url: str) -> None:
    await upgrade(postgres_database_url)
    store = SqlStore.open(postgres_database_url)
    seen: dict[str, list[object]] = {"a": [], "b": []}

    def handlers(name: str) -> ClusterHandlers:
        log = seen[name]
        return ClusterHandlers(
            tasks_final=lambda ids: log.append(("final", sorted(ids))),
            work=lambda: log.append("work"),
            servers=lambda: log.append("servers"),
            nodes=lambda: log.append("nodes"),
        )

    buses = {name: PgBus(postgres_database_url, node_id=name, send=store.notify) for name in "ab"}
    try:
        for name, bus in buses.items():
            await bus.start(handlers(name))
            assert bus.listening
        for log in seen.values():
            # Connecting reports everything as changed once, before `start` returns.
            assert log == ["work", "servers", "nodes"]
            log.clear()
        many = [f"task-{i:05}-{'x' * 30}" for i in range(400)]  # more than one payload
        buses["a"].tasks_final(many)
        buses["a"].work()
        buses["a"].work()  # merged with the one before
        for _ in range(100):
            if sum(len(e[1]) for e in seen["b"] if isinstance(e, tuple)) == 400:
                break
            await asyncio.sleep(0.05)
        finals = [i for entry in seen["b"] if isinstance(entry, tuple) for i in entry[1]]
        assert sorted(finals) == many
        assert seen["b"].count("work") == 1
        assert seen["a"] == []  # a node ignores its own notices
    finally:
        for bus in buses.values():
            await bus.close()
        await store.close()


def test_factories_make_claimable_rows() -> None:
    """Guard for the claim test: its tasks and server are what the dispatcher would pick."""
    server = make_server("gpu", max_concurrency=3)
    task = make_task()
    assert server.status is ServerStatus.ONLINE and task.status is TaskStatus.WAITING
    assert dispatch.assign([task, replace(task, id="t2")], [server], max_ejected_share=0.5)


async def test_a_node_listens_again_after_losing_its_connection(postgres_database_url: str) -> None:
    """The LISTEN connection is killed server-side: the bus reconnects, reports everything as
    changed once (notices sent meanwhile are lost), and notices flow again."""
    await upgrade(postgres_database_url)
    store = SqlStore.open(postgres_database_url)
    heard: list[object] = []
    handlers = ClusterHandlers(
        tasks_final=lambda ids: heard.append(("final", list(ids))),
        work=lambda: heard.append("work"),
        servers=lambda: heard.append("servers"),
        nodes=lambda: heard.append("nodes"),
    )
    listener = PgBus(postgres_database_url, node_id="b", send=store.notify)
    sender = PgBus(postgres_database_url, node_id="a", send=store.notify)
    try:
        await listener.start(handlers)
        database = postgres_database_url.rsplit("/", 1)[1]
        killed = await store.runner.read(
            lambda conn: conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE datname = '{database}' AND query LIKE 'LISTEN%'"
            ).all()
        )
        assert killed == [(True,)]
        for _ in range(100):
            if not listener.listening:
                break
            await asyncio.sleep(0.05)
        heard.clear()
        for _ in range(200):  # reconnects after RECONNECT_S
            if listener.listening and "work" in heard:
                break
            await asyncio.sleep(0.05)
        assert listener.listening
        assert {"work", "servers", "nodes"} <= set(heard)  # the catch-up after reconnecting
        heard.clear()
        sender.tasks_final(["t-after"])
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.05)
        assert heard == [("final", ["t-after"])]
    finally:
        await listener.close()
        await sender.close()
        await store.close()


# ---- server rows: counters in SQL, writes bound to one registration --------------------------


async def test_failure_counts_from_several_nodes_lose_no_increment(stores: list[SqlStore]) -> None:
    """Four nodes each count 25 failed dispatches of one server at once: 100, not fewer."""
    server = make_server("gpu", revision="r1")
    await stores[0].put_server(server)

    async def count(store: SqlStore) -> list[int | None]:
        return [
            await store.increment_server("gpu", "dispatch_failures", revision="r1")
            for _ in range(25)
        ]

    seen = await asyncio.gather(*(count(store) for store in stores))
    values = sorted(v for per_node in seen for v in per_node if v is not None)
    assert values == list(range(1, 101))  # each increment saw its own new value
    fresh = await stores[1].get_server("gpu")
    assert fresh is not None and fresh.dispatch_failures == 100


async def test_writes_for_a_replaced_or_deleted_registration_change_nothing(
    stores: list[SqlStore],
) -> None:
    first, second = stores[0], stores[1]
    await first.put_server(make_server("gpu", revision="old"))
    # Re-registered by another node meanwhile: the old registration's writes match nothing.
    await second.put_server(make_server("gpu", revision="new", status=ServerStatus.OFFLINE))
    assert not await first.update_server(
        "gpu", ServerPatch(status=ServerStatus.ONLINE), revision="old"
    )
    assert await first.increment_server("gpu", "dispatch_failures", revision="old") is None
    fresh = await first.get_server("gpu")
    assert fresh is not None and (fresh.status, fresh.dispatch_failures) == (
        ServerStatus.OFFLINE,
        0,
    )
    await second.delete_servers(["gpu"])
    assert not await first.update_server(
        "gpu", ServerPatch(status=ServerStatus.ONLINE), revision="new"
    )
    assert await first.get_server("gpu") is None
