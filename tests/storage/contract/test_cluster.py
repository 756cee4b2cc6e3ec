"""Coordinator nodes, leases, and the store's own life: ping and close."""

from __future__ import annotations

from taskyard.domain.ports import Store
from taskyard.storage.sql import SqlStore
from tests.storage.contract.support import covers
from tests.unit.factories import make_task


@covers("touch_node", "list_nodes", "delete_nodes", "acquire_lease")
async def test_nodes_are_recorded_and_listed_with_their_leases(store: Store) -> None:
    assert await store.list_nodes() == []
    await store.touch_node(node_id="n2", host="h2", now=1_000)
    await store.touch_node(node_id="n1", host="h1", now=1_001)
    await store.touch_node(node_id="n0", host="h0", now=1_000)
    await store.touch_node(node_id="n1", host="renamed", now=3_000)  # a touch keeps the host
    await store.acquire_lease("chores", holder="n2", now=3_000, ttl_ms=1_000)
    await store.acquire_lease("another", holder="n2", now=3_000, ttl_ms=1_000)
    await store.acquire_lease("orphan", holder="unrecorded", now=3_000, ttl_ms=1_000)
    nodes = await store.list_nodes()
    assert [n.id for n in nodes] == ["n0", "n2", "n1"]  # by start, then id
    n1 = nodes[2]
    assert (n1.host, n1.started_at, n1.last_seen_at, n1.leases) == ("h1", 1_001, 3_000, ())
    assert nodes[1].leases == ("another", "chores")
    await store.delete_nodes(["n2", "missing"])
    await store.delete_nodes([])
    assert [n.id for n in await store.list_nodes()] == ["n0", "n1"]


@covers("acquire_lease", "release_leases")
async def test_a_lease_has_one_holder_until_it_expires_or_is_released(store: Store) -> None:
    assert await store.acquire_lease("chores", holder="n1", now=1_000, ttl_ms=500)
    assert not await store.acquire_lease("chores", holder="n2", now=1_100, ttl_ms=500)
    assert await store.acquire_lease("chores", holder="n1", now=1_400, ttl_ms=500)  # renewal
    assert not await store.acquire_lease("chores", holder="n2", now=1_900, ttl_ms=500)  # at expiry
    assert await store.acquire_lease("chores", holder="n2", now=1_901, ttl_ms=500)  # n1's lapsed
    assert not await store.acquire_lease("chores", holder="n1", now=2_100, ttl_ms=500)
    assert await store.acquire_lease("other", holder="n1", now=2_100, ttl_ms=500)
    await store.release_leases(holder="n2")
    await store.release_leases(holder="nobody")
    assert await store.acquire_lease("chores", holder="n1", now=2_200, ttl_ms=500)
    assert not await store.acquire_lease("other", holder="n2", now=2_200, ttl_ms=500)  # n1's


@covers("ping")
async def test_ping_answers(store: Store) -> None:
    await store.ping()


@covers("close", "add_task")
async def test_close_keeps_what_was_written_and_may_be_called_again(
    store: Store, store_url: str | None
) -> None:
    task = make_task(id="t1")
    await store.add_task(task)
    await store.close()
    await store.close()
    if store_url is not None:  # a database: what was acknowledged is there for the next one
        reopened = SqlStore.open(store_url)
        try:
            assert await reopened.get_task("t1") == task
        finally:
            await reopened.close()
