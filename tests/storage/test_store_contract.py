"""One set of `Store` tests, run on `MemoryStore`, SQLite and PostgreSQL alike.

This is what keeps the fake honest: domain tests on `taskyard.testing.MemoryStore` mean
something only while it does what `SqlStore` does. What needs several stores on one database
(claims racing under the dispatch lock, lease elections, notices) is in test_cluster_store.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy.exc

from taskyard.domain import lifecycle
from taskyard.domain.models import Server, ServerStatus, Task, TaskStatus
from taskyard.domain.ports import ModelQueue, Store, TaskQuery, TaskUpdate, WaitingReader
from taskyard.domain.tallies import Event
from taskyard.storage.migrate import upgrade
from taskyard.storage.sql import SqlStore
from taskyard.testing import MemoryStore
from tests.support import DATABASES, fresh_database
from tests.unit.factories import make_server, make_task

STORES = ["memory", *DATABASES]


@pytest.fixture(params=STORES, ids=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None for the memory store, else a fresh database (PostgreSQL skips or fails as
    `tests.pg` says). Synchronous: making a PostgreSQL database runs an event loop of its own."""
    if request.param == "memory":
        yield None
        return
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def store(store_url: str | None) -> AsyncIterator[Store]:
    if store_url is None:
        yield MemoryStore()
        return
    await upgrade(store_url)
    sql = SqlStore.open(store_url)
    try:
        yield sql
    finally:
        await sql.close()


async def start(
    store: Store, task: Task, *, server: str = "gpu", node: str = "n1", now: int = 2_000
) -> Task:
    """Store `task` and start its first attempt (PROCESSING on `server`, sent by `node`)."""
    await store.add_task(task)
    update, running = lifecycle.start_attempt(
        task, server_id=server, node_id=node, callback_url="http://cb", now=now
    )
    assert await store.update_task(update)
    return running


# ---- tasks ----------------------------------------------------------------------------------


async def test_a_task_reads_back_as_it_was_written(store: Store) -> None:
    request = {"model": "m", "nested": [1, 2.5, {"x": None, "é": "\u0000 inside JSON"}]}
    task = make_task(id="t1", request=request, priority=-3, queue_deadline_at=9_000)
    await store.add_task(task)
    assert await store.get_task("t1") == task
    assert await store.get_task("missing") is None
    with pytest.raises((ValueError, sqlalchemy.exc.IntegrityError)):
        await store.add_task(replace(task, owner="bob"))  # the id is the primary key
    assert await store.get_task("t1") == task


async def test_an_update_applies_only_in_the_expected_state(store: Store) -> None:
    task = make_task(id="t1")
    running = await start(store, task, server="gpu")
    assert await store.get_task("t1") == running  # the domain's view of the update is the row
    # The same start again: the task is no longer WAITING at attempt 0.
    again, _ = lifecycle.start_attempt(
        task, server_id="gpu", node_id="n1", callback_url="http://cb", now=2_000
    )
    assert not await store.update_task(again)
    finish = lifecycle.finish(running, result={"ok": 1}, now=3_000)[0]
    assert not await store.update_task(replace(finish, expect_server="other"))
    assert not await store.update_task(replace(finish, expect_attempt=2))
    assert not await store.update_task(replace(finish, expect_status=(TaskStatus.WAITING,)))
    assert not await store.update_task(replace(finish, task_id="missing"))
    assert (await store.get_task("t1")) == running
    assert await store.update_task(finish)
    done = await store.get_task("t1")
    assert done is not None and done.status is TaskStatus.FINISHED and done.result == {"ok": 1}
    assert done.attempts[0].ended_at == 3_000


async def test_an_update_without_conditions_matches_any_state(store: Store) -> None:
    await store.add_task(make_task(id="t1"))
    assert await store.update_task(TaskUpdate("t1", {"progress": 40.0, "updated_at": 1_500}))
    changed = await store.get_task("t1")
    assert changed is not None and (changed.progress, changed.updated_at) == (40.0, 1_500)


async def test_a_batch_of_updates_reports_each_one(store: Store) -> None:
    await store.add_task(make_task(id="t1"))
    await store.add_task(make_task(id="t2", status=TaskStatus.FAILED))
    cancel = {"status": TaskStatus.CANCELLED, "finished_at": 2_000}
    updates = [
        TaskUpdate("t1", cancel, expect_status=lifecycle.OPEN, expect_attempt=0),
        TaskUpdate("t2", cancel, expect_status=lifecycle.OPEN),
        TaskUpdate("missing", cancel),
        TaskUpdate("t1", cancel, expect_status=lifecycle.OPEN),  # sees the first one's change
    ]
    assert await store.update_tasks(updates) == [True, False, False, False]
    assert await store.update_tasks([]) == []
    assert await store.count_tasks() == {"CANCELLED": 1, "FAILED": 1}


# ---- the queue and claims -------------------------------------------------------------------


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


async def test_due_tasks_and_when_the_next_one_is_due(store: Store) -> None:
    assert not await store.has_due_tasks(now=10_000)
    assert await store.next_due_at() is None
    await start(store, make_task(id="running", next_attempt_at=0))
    await store.add_task(make_task(id="later", next_attempt_at=7_000))
    await store.add_task(make_task(id="latest", next_attempt_at=9_000))
    assert not await store.has_due_tasks(now=6_999)
    assert await store.has_due_tasks(now=7_000)
    assert await store.next_due_at() == 7_000


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
    assert sorted(t.id for t in await store.processing_on(["a", "b"])) == ["t0", "t1", "t2"]
    assert await store.processing_on(["b"]) == []


# ---- sweeps and lost attempts ---------------------------------------------------------------


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


# ---- retention and counts -------------------------------------------------------------------


async def test_purge_deletes_final_tasks_finished_before_the_cutoff(store: Store) -> None:
    for status in (TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.CANCELLED):
        await store.add_task(make_task(id=f"old-{status}", status=status, finished_at=1_000))
    await store.add_task(make_task(id="recent", status=TaskStatus.FINISHED, finished_at=5_000))
    await store.add_task(make_task(id="waiting", finished_at=1_000))  # not final: kept
    await start(store, make_task(id="running"))
    # A chunk at a time: at most `limit` per call.
    assert await store.purge_tasks(finished_before=5_000, limit=2) == 2
    assert await store.purge_tasks(finished_before=5_000, limit=2) == 1
    assert await store.purge_tasks(finished_before=5_000, limit=2) == 0
    assert await store.count_tasks() == {"FINISHED": 1, "WAITING": 1, "PROCESSING": 1}
    assert await store.get_task("old-FAILED") is None
    assert await store.get_task("recent") is not None


# ---- servers --------------------------------------------------------------------------------


async def test_servers_are_upserted_listed_by_id_updated_and_deleted(store: Store) -> None:
    registered = make_server("s2", models=("m", "x"), extra={"region": "eu"})
    await store.put_server(registered)
    await store.put_server(make_server("s1"))
    assert await store.get_server("s2") == registered
    assert [s.id for s in await store.list_servers()] == ["s1", "s2"]
    assert await store.get_server("missing") is None
    await store.put_server(replace(registered, weight=3.0, models=()))  # a new registration
    replaced = await store.get_server("s2")
    assert replaced is not None and (replaced.weight, replaced.models) == (3.0, ())

    values = {
        "status": "offline",
        "offline_since": 1_000,
        "models": ["a", "b"],
        "reported_load": {"gpu": 0.5},
    }
    assert await store.update_server("s2", values)
    assert not await store.update_server("missing", {"dispatch_failures": 1})
    updated = await store.get_server("s2")
    assert updated is not None
    assert (updated.status, updated.offline_since) == (ServerStatus.OFFLINE, 1_000)
    assert (updated.models, updated.reported_load) == (("a", "b"), {"gpu": 0.5})

    assert [s.id for s in await store.offline_servers(since_before=1_001)] == ["s2"]
    assert await store.offline_servers(since_before=1_000) == []  # not since before 1,000
    await store.put_server(make_server("s3", status=ServerStatus.OFFLINE, offline_since=None))
    assert [s.id for s in await store.offline_servers(since_before=9_999)] == ["s2"]
    assert await store.delete_servers(["s3"]) == ["s3"]

    assert sorted(await store.delete_servers(["s2", "missing", "s1"])) == ["s1", "s2"]
    assert await store.delete_servers(["s1"]) == []
    assert await store.delete_servers([]) == []
    assert await store.list_servers() == []


# ---- nodes and leases -----------------------------------------------------------------------


async def test_nodes_are_recorded_and_listed_with_their_leases(store: Store) -> None:
    await store.touch_node(node_id="n2", host="h2", now=1_000)
    await store.touch_node(node_id="n1", host="h1", now=1_001)
    await store.touch_node(node_id="n0", host="h0", now=1_000)
    await store.touch_node(node_id="n1", host="renamed", now=3_000)  # a touch keeps the host
    await store.acquire_lease("chores", holder="n2", now=3_000, ttl_ms=1_000)
    await store.acquire_lease("another", holder="n2", now=3_000, ttl_ms=1_000)
    nodes = await store.list_nodes()
    assert [n.id for n in nodes] == ["n0", "n2", "n1"]  # by start, then id
    n1 = nodes[2]
    assert (n1.host, n1.started_at, n1.last_seen_at, n1.leases) == ("h1", 1_001, 3_000, ())
    assert nodes[1].leases == ("another", "chores")
    await store.delete_nodes(["n2", "missing"])
    await store.delete_nodes([])
    assert [n.id for n in await store.list_nodes()] == ["n0", "n1"]


async def test_a_lease_has_one_holder_until_it_expires_or_is_released(store: Store) -> None:
    assert await store.acquire_lease("chores", holder="n1", now=1_000, ttl_ms=500)
    assert not await store.acquire_lease("chores", holder="n2", now=1_100, ttl_ms=500)
    assert await store.acquire_lease("chores", holder="n1", now=1_400, ttl_ms=500)  # renewal
    assert not await store.acquire_lease("chores", holder="n2", now=1_900, ttl_ms=500)  # at expiry
    assert await store.acquire_lease("chores", holder="n2", now=1_901, ttl_ms=500)  # n1's lapsed
    assert not await store.acquire_lease("chores", holder="n1", now=2_100, ttl_ms=500)
    assert await store.acquire_lease("other", holder="n1", now=2_100, ttl_ms=500)
    await store.release_leases(holder="n2")
    assert await store.acquire_lease("chores", holder="n1", now=2_200, ttl_ms=500)


async def test_ping_answers(store: Store) -> None:
    await store.ping()


# ---- search, queue reads, statistics ---------------------------------------------------------


async def test_search_pages_newest_first_with_every_filter(store: Store) -> None:
    tasks = [
        make_task(id=f"t{i:02}", created_at=1_000 + i // 2, owner="bob" if i % 3 else "alice")
        for i in range(12)
    ]
    for task in tasks:
        await store.add_task(task)
    failed = lifecycle.expire_in_queue(tasks[4], now=5_000)  # FAILED, no_capacity_deadline
    assert await store.update_task(failed)
    newest_first = sorted(tasks, key=lambda t: (t.created_at, t.id), reverse=True)
    seen: list[str] = []
    before: tuple[int, str] | None = None
    while True:
        page = await store.search_tasks(TaskQuery(limit=5, before=before))
        seen += [t.id for t in page]
        if len(page) < 5:
            break
        before = (page[-1].created_at, page[-1].id)
    assert seen == [t.id for t in newest_first]
    [summary] = await store.search_tasks(TaskQuery(limit=50, error_code="no_capacity_deadline"))
    assert summary.id == "t04" and summary.request == {} and summary.result is None
    assert summary.status is TaskStatus.FAILED
    by_status = await store.search_tasks(TaskQuery(limit=50, statuses=(TaskStatus.FAILED,)))
    assert [t.id for t in by_status] == ["t04"]
    alices = await store.search_tasks(TaskQuery(limit=50, owner="alice"))
    assert [t.id for t in alices] == ["t09", "t06", "t03", "t00"]
    window = await store.search_tasks(
        TaskQuery(limit=50, created_after=1_002, created_before=1_005)
    )
    assert [t.id for t in window] == ["t09", "t08", "t07", "t06"]
    assert await store.search_tasks(TaskQuery(limit=50, model="other")) == []
    running = await start(store, make_task(id="r1", created_at=2_000), server="gpu-7")
    assert [t.id for t in await store.search_tasks(TaskQuery(limit=5, server_id="gpu-7"))] == [
        running.id
    ]


async def test_queue_reads_count_by_model_and_position(store: Store) -> None:
    queue = [
        make_task(id="a1", model="a", priority=0, created_at=1_000),
        make_task(id="a2", model="a", priority=5, created_at=3_000),
        make_task(id="a3", model="a", priority=0, created_at=2_000, next_attempt_at=99_000),
        make_task(id="b1", model="b", created_at=1_000),
    ]
    for task in queue:
        await store.add_task(task)
    await start(store, make_task(id="b2", model="b", created_at=500))
    assert await store.queue_by_model(now=5_000) == [ModelQueue("a", 3, 2), ModelQueue("b", 1, 1)]
    assert await store.processing_by_model() == {"b": 1}
    positions = {t.id: await store.queue_position(t, limit=100) for t in queue}
    assert positions == {"a2": 0, "a1": 1, "a3": 2, "b1": 0}
    assert await store.queue_position(queue[2], limit=1) == 1  # counted up to the limit


async def test_tallies_count_matched_changes_only_and_sum_by_group(store: Store) -> None:
    minute = 60_000
    task = make_task(id="t1", created_at=10 * minute + 5)
    running = await start(store, task, now=10 * minute + 100)
    done, _ = lifecycle.finish(running, result={"ok": 1}, now=11 * minute + 100)
    assert await store.update_task(done)
    assert not await store.update_task(done)  # a second finish matches nothing, counts nothing
    sums = await store.tally_sums(
        since=0,
        events=(Event.CREATED, Event.FINISHED, Event.ATTEMPT, Event.QUEUE_WAIT),
        group_by=("period", "event"),
    )
    by_key = {(s.period, s.event): (s.count, s.total_ms) for s in sums}
    assert by_key == {
        (10 * minute, "created"): (1, 0),
        (10 * minute, "queue_wait"): (1, 95),
        (11 * minute, "finished"): (1, 0),
        (11 * minute, "attempt"): (1, minute),
    }
    [attempt] = await store.tally_sums(
        since=11 * minute, events=(Event.ATTEMPT,), group_by=("server_id", "code"), server_id="gpu"
    )
    assert (attempt.server_id, attempt.code, attempt.count) == ("gpu", "ok", 1)
    assert (
        await store.tally_sums(
            since=0, events=(Event.ATTEMPT,), group_by=("code",), server_id="other"
        )
        == []
    )
    hourly = await store.tally_sums(
        since=0, events=(Event.CREATED, Event.FINISHED), group_by=("period",), period_ms=3_600_000
    )
    assert [(s.period, s.count) for s in hourly] == [(0, 2)]
    assert await store.prune_tallies(before=11 * minute) >= 2
    left = await store.tally_sums(since=0, events=tuple(Event), group_by=("event",))
    assert sorted((s.event, s.count) for s in left) == [
        ("attempt", 1),
        ("finished", 1),
        ("processing", 1),
    ]
