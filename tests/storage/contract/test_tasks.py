"""Tasks: stored and read back, whole batches, conditional updates, retention and counts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from taskyard import errors
from taskyard.domain import lifecycle
from taskyard.domain.changes import TaskPatch
from taskyard.domain.models import TaskStatus
from taskyard.domain.ports import Store, TaskQuery, TaskUpdate
from taskyard.domain.tallies import Event
from tests.storage.contract.support import covers, start
from tests.unit.factories import make_task


@covers("add_task", "get_task")
async def test_a_task_reads_back_as_it_was_written(store: Store) -> None:
    request = {"model": "m", "nested": [1, 2.5, {"x": None, "é": "\u0000 inside JSON"}]}
    task = make_task(id="t1", request=request, priority=-3, queue_deadline_at=9_000)
    await store.add_task(task)
    assert await store.get_task("t1") == task
    assert await store.get_task("missing") is None
    with pytest.raises(errors.TaskExists) as taken:
        await store.add_task(replace(task, owner="bob"))  # the id is the primary key
    assert (taken.value.task_ids, taken.value.message) == (("t1",), "Task t1 already exists")
    assert await store.get_task("t1") == task


@covers("add_tasks", "get_task", "tally_sums")
async def test_a_batch_of_tasks_is_stored_whole_or_not_at_all(store: Store) -> None:
    await store.add_tasks([])
    batch = [make_task(id=f"b{i}", created_at=60_000 + i) for i in range(3)]
    await store.add_tasks(iter(batch))  # any iterable
    assert [await store.get_task(t.id) for t in batch] == batch
    # A taken id, stored before or twice in the batch: none of the batch is stored.
    for batch_ids, taken_ids in [
        (["new", "b1"], ("b1",)),
        (["new", "new"], ("new",)),
        (["b2", "new", "b0", "b2"], ("b0", "b2")),
    ]:
        with pytest.raises(errors.TaskExists) as taken:
            await store.add_tasks([make_task(id=task_id) for task_id in batch_ids])
        assert taken.value.task_ids == taken_ids
        assert await store.get_task("new") is None
    [created] = await store.tally_sums(since=0, events=(Event.CREATED,), group_by=("event",))
    assert created.count == 3  # each stored task counted once, the refused ones not at all


@covers("add_tasks", "add_task", "update_task", "get_task")
async def test_the_unfinished_cap_counts_the_owners_open_tasks_with_the_batch(
    store: Store,
) -> None:
    cap = 3
    alice = [make_task(id=f"a{i}", owner="alice") for i in range(5)]
    await store.add_task(make_task(id="old", owner="alice", status=TaskStatus.FINISHED))
    await store.add_tasks(alice[:2], unfinished_cap=cap)  # finished tasks do not count
    with pytest.raises(errors.QuotaExceeded) as refused:
        await store.add_tasks(alice[2:4], unfinished_cap=cap)  # 2 open + 2 > 3
    assert (refused.value.limit, refused.value.window_s) == (cap, None)
    assert "has 2 unfinished tasks" in refused.value.message
    assert [await store.get_task(t.id) for t in alice[2:4]] == [None, None]  # nothing stored
    await store.add_tasks(
        [make_task(id=f"bob{i}", owner="bob") for i in range(3)], unfinished_cap=cap
    )
    # A task that ends frees its place; without a cap, nothing is counted.
    assert await store.update_task(lifecycle.cancel(alice[0], now=3_000, grace_ms=0)[0])
    await store.add_tasks(alice[2:4], unfinished_cap=cap)
    with pytest.raises(errors.QuotaExceeded):
        await store.add_task(alice[4], unfinished_cap=cap)
    await store.add_task(alice[4])
    assert await store.get_task(alice[4].id) == alice[4]


@covers("update_task", "get_task")
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


@covers("update_task", "get_task")
async def test_an_update_without_conditions_matches_any_state(store: Store) -> None:
    await store.add_task(make_task(id="t1"))
    assert await store.update_task(TaskUpdate("t1", TaskPatch(progress=40.0, updated_at=1_500)))
    changed = await store.get_task("t1")
    assert changed is not None and (changed.progress, changed.updated_at) == (40.0, 1_500)


@covers("update_task", "get_task")
async def test_an_update_that_changes_nothing_still_tells_whether_it_matched(
    store: Store,
) -> None:
    task = make_task(id="t1")
    await store.add_task(task)
    assert await store.update_task(TaskUpdate("t1", expect_status=(TaskStatus.WAITING,)))
    assert not await store.update_task(TaskUpdate("t1", expect_status=(TaskStatus.FAILED,)))
    assert not await store.update_task(TaskUpdate("missing"))
    assert await store.get_task("t1") == task


@covers("update_tasks", "count_tasks")
async def test_a_batch_of_updates_reports_each_one(store: Store) -> None:
    await store.add_task(make_task(id="t1"))
    await store.add_task(make_task(id="t2", status=TaskStatus.FAILED))
    cancel = TaskPatch(status=TaskStatus.CANCELLED, finished_at=2_000)
    updates = [
        TaskUpdate("t1", cancel, expect_status=lifecycle.OPEN, expect_attempt=0),
        TaskUpdate("t2", cancel, expect_status=lifecycle.OPEN),
        TaskUpdate("missing", cancel),
        TaskUpdate("t1", cancel, expect_status=lifecycle.OPEN),  # sees the first one's change
    ]
    assert await store.update_tasks(updates) == [True, False, False, False]
    assert await store.update_tasks([]) == []
    assert await store.count_tasks() == {"CANCELLED": 1, "FAILED": 1}


# ---- retention and counts -------------------------------------------------------------------


@covers("purge_tasks", "count_tasks")
async def test_purge_deletes_final_tasks_finished_before_the_cutoff(store: Store) -> None:
    assert await store.count_tasks() == {}
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


# ---- search ---------------------------------------------------------------------------------


@covers("search_tasks")
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
