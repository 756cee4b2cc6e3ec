"""Held slots and the cancels owed to backends: a hold is stored with the change that ended its
attempt, counts as in flight until released or pruned, and its cancel is claimed by one sender
at a time."""

from __future__ import annotations

from dataclasses import replace

from taskyard.domain import lifecycle
from taskyard.domain.models import SlotHold
from taskyard.domain.ports import Store
from tests.storage.contract.support import covers, hold, start
from tests.unit.factories import make_server, make_task


@covers("update_task", "get_server", "list_servers", "due_cancels")
async def test_a_hold_is_stored_with_the_change_that_matched_and_counts_in_flight(
    store: Store,
) -> None:
    await store.put_server(make_server("gpu", max_concurrency=2))
    running = await start(store, make_task(id="t1"), server="gpu", now=2_000)
    cancel, _ = lifecycle.cancel(running, now=3_000, grace_ms=5_000)
    first = cancel.hold
    assert first is not None
    assert first == SlotHold("t1", 1, "gpu", held_until=17_000, cancel_due_at=3_000)
    assert not await store.update_task(replace(cancel, expect_attempt=2))  # no match, no hold
    assert await store.due_cancels(now=3_000, limit=10) == []
    assert await store.update_task(cancel)
    server = await store.get_server("gpu")
    assert server is not None and (server.in_flight, server.held) == (1, 1)  # cancelled, held
    assert [(s.in_flight, s.held) for s in await store.list_servers()] == [(1, 1)]
    # An attempt is held once: a second hold of it keeps the first.
    second = replace(first, held_until=99_000)
    assert await store.update_task(replace(cancel, expect_status=None, hold=second))
    assert await store.due_cancels(now=3_000, limit=10) == [first]
    server = await store.get_server("gpu")
    assert server is not None and (server.in_flight, server.held) == (1, 1)


@covers("due_cancels")
async def test_due_cancels_come_by_due_time_then_task_id_up_to_the_limit(store: Store) -> None:
    b = await hold(store, "b", cancel_at=2_000)
    a = await hold(store, "a", cancel_at=2_000)
    early = await hold(store, "early", cancel_at=1_000)
    await hold(store, "later", cancel_at=5_000)
    await hold(store, "none-owed", cancel_at=None)  # held, but no cancel to send
    assert await store.due_cancels(now=999, limit=10) == []
    assert await store.due_cancels(now=2_000, limit=10) == [early, a, b]
    assert await store.due_cancels(now=4_999, limit=2) == [early, a]


@covers("claim_cancel", "due_cancels", "get_server")
async def test_a_cancel_is_claimed_by_one_sender_and_tried_again_when_due(store: Store) -> None:
    await store.put_server(make_server("gpu"))
    await hold(store, "t1", cancel_at=1_000)
    [owed] = await store.due_cancels(now=1_000, limit=10)
    assert await store.claim_cancel(owed, next_try_at=4_000)
    assert not await store.claim_cancel(owed, next_try_at=4_000)  # taken since it was read
    assert await store.due_cancels(now=3_999, limit=10) == []
    [again] = await store.due_cancels(now=4_000, limit=10)
    assert (again.cancel_due_at, again.cancel_tries) == (4_000, 1)
    assert await store.claim_cancel(again, next_try_at=None)  # the last try
    assert await store.due_cancels(now=10**12, limit=10) == []
    # A compare-and-set on the due time as read, "none" included.
    assert not await store.claim_cancel(again, next_try_at=5_000)
    settled = replace(again, cancel_due_at=None, cancel_tries=2)  # as it is now
    assert await store.claim_cancel(settled, next_try_at=5_000)
    [revived] = await store.due_cancels(now=5_000, limit=10)
    assert (revived.cancel_due_at, revived.cancel_tries) == (5_000, 3)
    # The slot stays held until its backend lets go or its grace is over.
    server = await store.get_server("gpu")
    assert server is not None and server.held == 1


@covers("release_holds", "get_server")
async def test_released_holds_are_those_of_the_task_attempt_and_server_given(
    store: Store,
) -> None:
    await store.put_server(make_server("gpu", max_concurrency=5))
    await hold(store, "t1", attempt=1, server="gpu")
    await hold(store, "t1", attempt=2, server="cpu")
    await hold(store, "t1", attempt=3, server="gpu")
    await hold(store, "t2", attempt=1, server="gpu")
    assert await store.release_holds("t1", attempt=1, server_id="cpu") == 0
    assert await store.release_holds("t1", attempt=1, server_id="gpu") == 1
    assert await store.release_holds("t1", server_id="gpu") == 1  # attempt 3
    server = await store.get_server("gpu")
    assert server is not None and (server.in_flight, server.held) == (1, 1)  # t2's
    assert await store.release_holds("t1") == 1  # attempt 2, on cpu
    assert await store.release_holds("t1") == 0
    assert await store.release_holds("t2", attempt=1) == 1
    assert await store.release_holds("missing") == 0
    server = await store.get_server("gpu")
    assert server is not None and (server.in_flight, server.held) == (0, 0)


@covers("prune_holds", "due_cancels")
async def test_pruned_holds_are_those_whose_grace_is_over(store: Store) -> None:
    await hold(store, "t1", until=1_000, cancel_at=500)
    await hold(store, "t2", until=2_000, cancel_at=500)
    await hold(store, "t3", until=3_000, cancel_at=500)
    assert await store.prune_holds(now=1_000) == 0  # held until 1,000 inclusive
    assert await store.prune_holds(now=2_000) == 1
    assert await store.prune_holds(now=2_000) == 0
    assert [h.task_id for h in await store.due_cancels(now=500, limit=10)] == ["t2", "t3"]
    assert await store.prune_holds(now=10_000) == 2
    assert await store.due_cancels(now=500, limit=10) == []


@covers("delete_servers", "due_cancels", "get_server")
async def test_deleting_a_server_deletes_its_holds(store: Store) -> None:
    await store.put_server(make_server("gpu"))
    await store.put_server(make_server("cpu"))
    await hold(store, "t1", server="gpu", cancel_at=1_000)
    kept = await hold(store, "t2", server="cpu", cancel_at=1_000)
    assert await store.delete_servers(["gpu"]) == ["gpu"]
    await store.put_server(make_server("gpu"))  # registered again: nothing of the old one held
    server = await store.get_server("gpu")
    assert server is not None and server.held == 0
    assert await store.due_cancels(now=1_000, limit=10) == [kept]
