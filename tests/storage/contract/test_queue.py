"""The queue: claims in order with exact in-flight counts, due times, queue reads, the
deadline sweeps and attempts lost with their node."""

from __future__ import annotations

from taskyard.domain import lifecycle
from taskyard.domain.models import Server, Task, TaskStatus
from taskyard.domain.ports import ModelQueue, Store, TaskUpdate, WaitingReader
from tests.storage.contract.support import covers, start
from tests.unit.factories import make_server, make_task


def _queue() -> list[Task]:
    return [
        make_task(id="old", created_at=1_000),
        make_task(id="new", created_at=2_000),
        make_task(id="urgent", created_at=3_000, priority=5),
        make_task(id="same-time-b", created_at=1_500),
        make_task(id="same-time-a", created_at=1_500),
        make_task(id="other-model", created_at=1_200, model="x"),
        make_task(id="backing-off", created_at=500, next_attempt_at=10_001),
        make_task(id="done", created_at=100, status=TaskStatus.FINISHED),
    ]


@covers("claim_tasks")
async def test_a_claim_reads_due_tasks_by_priority_then_age_then_id(store: Store) -> None:
    for task in _queue():
        await store.add_task(task)
    seen: list[list[str]] = []

    def plan(servers: list[Server], waiting: WaitingReader) -> list[TaskUpdate]:
        seen.append([t.id for t in waiting(10, None)])
        seen.append([t.id for t in waiting(3, None)])
        seen.append([t.id for t in waiting(10, {"x", "unknown"})])
        seen.append([t.id for t in waiting(10, ())])
        return []

    assert await store.claim_tasks(now=10_000, plan=plan) == []
    order = ["urgent", "old", "other-model", "same-time-a", "same-time-b", "new"]
    assert seen == [order, order[:3], ["other-model"], []]
    seen.clear()
    await store.claim_tasks(now=10_001, plan=plan)  # the backoff has passed
    assert seen[0] == ["urgent", "backing-off", *order[1:]]


@covers("has_due_tasks", "next_due_at")
async def test_due_tasks_and_when_the_next_one_is_due(store: Store) -> None:
    assert not await store.has_due_tasks(now=10_000)
    assert await store.next_due_at() is None
    await start(store, make_task(id="running", next_attempt_at=0))
    await store.add_task(make_task(id="later", next_attempt_at=7_000))
    await store.add_task(make_task(id="latest", next_attempt_at=9_000))
    assert not await store.has_due_tasks(now=6_999)
    assert await store.has_due_tasks(now=7_000)
    assert await store.next_due_at() == 7_000


@covers("claim_tasks", "list_servers", "get_server")
async def test_a_claim_sees_exact_in_flight_counts_and_applies_its_plan(store: Store) -> None:
    await store.put_server(make_server("a", max_concurrency=2))
    await store.put_server(make_server("b", max_concurrency=2))
    for i in range(3):
        await store.add_task(make_task(id=f"t{i}", created_at=1_000 + i))
    counts: list[dict[str, int]] = []

    def plan(servers: list[Server], waiting: WaitingReader) -> list[TaskUpdate]:
        counts.append({s.id: s.in_flight for s in servers})
        starts = [
            lifecycle.start_attempt(t, server_id="a", node_id="n1", callback_url="cb", now=5)[0]
            for t in waiting(2, None)
        ]
        # A second start of the first task in the same claim sees the first one's change.
        return [*starts, *starts[:1]]

    assert await store.claim_tasks(now=10_000, plan=plan) == [True, True, False]
    assert await store.claim_tasks(now=10_000, plan=plan) == [True, False]
    assert counts == [{"a": 0, "b": 0}, {"a": 2, "b": 0}]
    assert {s.id: s.in_flight for s in await store.list_servers()} == {"a": 3, "b": 0}
    server = await store.get_server("a")
    assert server is not None and server.in_flight == 3 and server.free_slots == 0


@covers("processing_on")
async def test_processing_on_reads_the_running_tasks_of_those_servers(store: Store) -> None:
    await start(store, make_task(id="on-a"), server="a")
    await start(store, make_task(id="on-b"), server="b")
    await start(store, make_task(id="on-c"), server="c")
    done = await start(store, make_task(id="done-on-a"), server="a")
    assert await store.update_task(lifecycle.finish(done, result={}, now=3_000)[0])
    await store.add_task(make_task(id="waiting"))
    assert sorted(t.id for t in await store.processing_on(["a", "b", "missing"])) == [
        "on-a",
        "on-b",
    ]
    assert [t.id for t in await store.processing_on(iter(["c"]))] == ["on-c"]
    assert await store.processing_on([]) == []


# ---- sweeps and lost attempts ---------------------------------------------------------------


@covers("expired_attempts")
async def test_expired_attempts_come_by_deadline_then_id(store: Store) -> None:
    # Each task's attempt deadline is its start time + 10 s.
    await start(store, make_task(id="b"), now=1_000)
    await start(store, make_task(id="a"), now=1_000)
    await start(store, make_task(id="early"), now=500)
    await start(store, make_task(id="not-yet"), now=5_000)
    await store.add_task(make_task(id="waiting"))
    ids = [t.id for t in await store.expired_attempts(now=11_001, limit=10)]
    assert ids == ["early", "a", "b"]
    assert [t.id for t in await store.expired_attempts(now=11_001, limit=2)] == ["early", "a"]
    assert [t.id for t in await store.expired_attempts(now=11_000, limit=10)] == ["early"]


@covers("expired_in_queue")
async def test_expired_in_queue_comes_by_queue_deadline_then_id(store: Store) -> None:
    await store.add_task(make_task(id="b", queue_deadline_at=3_000))
    await store.add_task(make_task(id="a", queue_deadline_at=3_000))
    await store.add_task(make_task(id="early", queue_deadline_at=2_000, created_at=9_000))
    await store.add_task(make_task(id="no-deadline"))
    await store.add_task(make_task(id="not-yet", queue_deadline_at=8_000))
    await start(store, make_task(id="running", queue_deadline_at=1_000))
    ids = [t.id for t in await store.expired_in_queue(now=3_001, limit=10)]
    assert ids == ["early", "a", "b"]
    assert [t.id for t in await store.expired_in_queue(now=3_001, limit=1)] == ["early"]
    assert [t.id for t in await store.expired_in_queue(now=3_000, limit=10)] == ["early"]


@covers("orphaned_attempts", "touch_node", "delete_nodes")
async def test_orphaned_attempts_are_the_unanswered_ones_of_unrecorded_nodes(
    store: Store,
) -> None:
    await store.touch_node(node_id="alive", host="h", now=1_000)
    await start(store, make_task(id="sent-by-alive"), node="alive")
    await start(store, make_task(id="sent-by-gone"), node="gone")
    accepted = await start(store, make_task(id="accepted-by-backend"), node="gone")
    # Its backend took it (202): its callback can still come.
    assert await store.update_task(lifecycle.acknowledge(accepted, progress=None, now=2_001)[0])
    await store.add_task(make_task(id="waiting"))
    assert [t.id for t in await store.orphaned_attempts(limit=10)] == ["sent-by-gone"]
    await store.delete_nodes(["alive"])
    assert [t.id for t in await store.orphaned_attempts(limit=10)] == [
        "sent-by-alive",
        "sent-by-gone",
    ]
    assert [t.id for t in await store.orphaned_attempts(limit=1)] == ["sent-by-alive"]
    # An attempt that ended (here: its task was cancelled) is nobody's to recover.
    lost = await store.get_task("sent-by-gone")
    assert lost is not None and await store.update_task(
        lifecycle.cancel(lost, now=3_000, grace_ms=0)[0]
    )
    assert [t.id for t in await store.orphaned_attempts(limit=10)] == ["sent-by-alive"]


# ---- queue reads ----------------------------------------------------------------------------


@covers("queue_by_model", "processing_by_model", "queue_position")
async def test_queue_reads_count_by_model_and_position(store: Store) -> None:
    assert (await store.queue_by_model(now=5_000), await store.processing_by_model()) == ([], {})
    queue = [
        make_task(id="a1", model="a", priority=0, created_at=1_000),
        make_task(id="a2", model="a", priority=5, created_at=3_000),
        make_task(id="a3", model="a", priority=0, created_at=2_000, next_attempt_at=99_000),
        make_task(id="a4", model="a", priority=0, created_at=2_000),  # same time: by id
        make_task(id="b1", model="b", created_at=1_000),
    ]
    for task in queue:
        await store.add_task(task)
    await start(store, make_task(id="b2", model="b", created_at=500))
    await start(store, make_task(id="c1", model="c", created_at=500))
    assert await store.queue_by_model(now=5_000) == [ModelQueue("a", 4, 3), ModelQueue("b", 1, 1)]
    assert await store.processing_by_model() == {"b": 1, "c": 1}
    positions = {t.id: await store.queue_position(t, limit=100) for t in queue}
    assert positions == {"a2": 0, "a1": 1, "a3": 2, "a4": 3, "b1": 0}
    assert await store.queue_position(queue[2], limit=1) == 1  # counted up to the limit
