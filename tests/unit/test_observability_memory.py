"""Statistics, waiting reasons and search on `MemoryStore` with a scripted backend: the domain
rules in milliseconds. `tests/e2e/test_stats.py` checks the same numbers through real nodes on
both databases."""

from __future__ import annotations

import pytest

from taskyard import auth, errors
from taskyard.clock import now_ms
from taskyard.domain import lifecycle
from taskyard.domain.changes import ServerPatch, TaskPatch
from taskyard.domain.coordinator import Coordinator
from taskyard.domain.models import ErrorCode, ServerStatus, TaskOptions, TaskStatus
from taskyard.domain.ports import PredictReply, ReplyKind, TaskQuery, TaskUpdate
from taskyard.domain.tallies import MINUTE_MS, bucket_of, bucket_value, percentile
from taskyard.domain.waiting import WaitingReason
from tests.unit.fakes import ScriptedBackend
from tests.unit.test_coordinator_memory import (
    ACCEPTED,
    ALICE,
    RETRYABLE,
    create,
    memory_yard,
    one_pass,
    read,
    register,
)

REJECTED = PredictReply(ReplyKind.REJECTED, status=422, error="HTTP 422")
BOB = auth.Principal(sub="bob", roles=frozenset({auth.USER}))
ADMIN = auth.Principal(sub="root", roles=frozenset({auth.ADMIN}))


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def yard(backend: ScriptedBackend) -> Coordinator:
    return memory_yard(backend)


async def scripted_run(yard: Coordinator, backend: ScriptedBackend) -> None:
    """Two finish (one after a retry), one is rejected, one runs out of attempts, one is
    cancelled while running and one while waiting, one misses its queue deadline."""
    url = await register(yard, "s1")
    script = backend.script[url]
    first = await create(yard)
    script.append(RETRYABLE)
    await one_pass(yard)
    await one_pass(yard)  # OK
    assert (await read(yard, first)).status is TaskStatus.FINISHED
    rejected = await create(yard)
    script.append(REJECTED)
    await one_pass(yard)
    assert (await read(yard, rejected)).error_code == ErrorCode.BACKEND_REJECTED
    once = await create(yard, max_attempts=1)
    script.append(RETRYABLE)
    await one_pass(yard)
    assert (await read(yard, once)).error_code == ErrorCode.BACKEND_ERROR
    running = await create(yard)
    script.append(ACCEPTED)
    await one_pass(yard)
    assert (await read(yard, running)).status is TaskStatus.PROCESSING
    await yard.tasks.cancel_task(running.id, principal=ALICE)
    waiting = await create(yard)
    await yard.tasks.cancel_task(waiting.id, principal=ALICE)  # before any pass
    plain = await create(yard)
    await one_pass(yard)
    assert (await read(yard, plain)).status is TaskStatus.FINISHED
    # Nothing serves model "late": it waits until its queue deadline passes.
    late = await yard.tasks.create_task(
        owner="alice",
        request={"model": "late"},
        options=TaskOptions(queue_timeout_s=0.001),
    )
    await yard.dispatcher.sweep(now_ms() + 1_000)
    assert (await read(yard, late)).error_code == ErrorCode.NO_CAPACITY_DEADLINE


async def test_stats_count_exactly_what_happened(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    await scripted_run(yard, backend)
    o = await yard.stats.overview(now=now_ms())
    assert o.by_status == {
        "WAITING": 0,
        "PROCESSING": 0,
        "FINISHED": 2,
        "FAILED": 3,
        "CANCELLED": 2,
    }
    for window in ("1m", "15m", "1h"):
        assert (o.throughput[window].finished, o.throughput[window].failed) == (2, 3)
    assert o.throughput["15m"].finished_per_min == round(2 / 15, 2)
    assert o.attempt_outcomes == {
        "ok": 2,
        "backend_error": 2,
        "backend_rejected": 1,
        "cancelled": 1,
    }
    assert o.queue_wait.count == 6  # attempts started
    assert o.processing.count == 4  # tasks that started and ended FINISHED or FAILED
    assert sum(m.created for m in o.per_minute) == 7
    assert sum(m.finished for m in o.per_minute) == 2
    [s1] = o.servers
    assert (s1.attempts, s1.failures) == (6, 4)
    assert s1.latency.count == 2
    hours = await yard.stats.hourly(now=now_ms())
    assert len(hours) == 24
    assert (hours[-1].created, hours[-1].finished, hours[-1].failed) == (7, 2, 3)
    assert hours[-1].mean_processing_ms is not None
    assert all(h.created == 0 and h.mean_processing_ms is None for h in hours[:-1])
    server = await yard.fleet.get_server("s1")
    per_server = await yard.stats.server(server, now=now_ms(), window_min=60)
    assert (per_server.attempts, per_server.successes) == (6, 2)
    assert per_server.failures == {"backend_error": 2, "backend_rejected": 1, "cancelled": 1}


async def test_a_lost_race_counts_nothing(yard: Coordinator, backend: ScriptedBackend) -> None:
    """A report that loses to a cancel changes nothing, and counts nothing either."""
    url = await register(yard, "s1")
    backend.script[url].append(ACCEPTED)
    task = await create(yard)
    await one_pass(yard)
    running = await read(yard, task)
    await yard.tasks.cancel_task(task.id, principal=ALICE)
    late, _ = lifecycle.finish(running, result={"late": True}, now=now_ms())
    assert late.tallies  # it would have counted a finish and an attempt
    assert await yard.dispatcher.apply([late]) == [False]
    o = await yard.stats.overview(now=now_ms())
    assert o.throughput["1h"].finished == 0
    assert o.attempt_outcomes == {"cancelled": 1}


async def test_old_minutes_leave_the_windows_and_are_pruned(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    await register(yard, "s1")
    await create(yard)
    await one_pass(yard)
    later = now_ms() + 20 * MINUTE_MS
    o = await yard.stats.overview(now=later)
    assert (o.throughput["1m"].finished, o.throughput["15m"].finished) == (0, 0)
    assert o.throughput["1h"].finished == 1
    assert await yard.store.prune_tallies(before=later) > 0
    assert (await yard.stats.overview(now=later)).throughput["1h"].finished == 0


def test_percentiles_from_buckets_are_within_ten_percent() -> None:
    for value in (1, 3, 17, 250, 999, 12_345, 3_600_000):
        assert abs(bucket_value(bucket_of(value)) - value) <= 0.1 * value
    samples = list(range(1, 1001))  # 1..1000 ms
    buckets: dict[int, int] = {}
    for ms in samples:
        buckets[bucket_of(ms)] = buckets.get(bucket_of(ms), 0) + 1
    p50, p95 = percentile(buckets, 0.5), percentile(buckets, 0.95)
    assert p50 is not None and abs(p50 - 500) <= 50
    assert p95 is not None and abs(p95 - 950) <= 95
    assert percentile({}, 0.5) is None


# ---- why is my task waiting? ---------------------------------------------------------------


async def test_no_server_for_the_model(yard: Coordinator) -> None:
    task = await create(yard)
    assert await yard.reads.create_warnings(task) == [
        "no registered server serves model 'm': the task waits until one registers"
        " (check the model name)"
    ]
    why = await yard.reads.why_waiting(await read(yard, task))
    assert why is not None and why.reason is WaitingReason.NO_SERVER_FOR_MODEL
    o = await yard.stats.overview(now=now_ms())
    assert o.unserved == {"m": 1}


async def test_no_server_online(yard: Coordinator) -> None:
    await register(yard, "s1")
    await yard.store.update_server(
        "s1", ServerPatch(status=ServerStatus.OFFLINE, last_error="boom")
    )
    task = await create(yard)
    assert await yard.reads.create_warnings(task) == []  # a server serves it, offline or not
    why = await yard.reads.why_waiting(await read(yard, task))
    assert why is not None and why.reason is WaitingReason.NO_SERVER_ONLINE
    assert "s1 offline (boom)" in why.detail


async def test_all_busy_with_a_position(yard: Coordinator, backend: ScriptedBackend) -> None:
    url = await register(yard, "s1")  # two slots
    backend.always[url] = ACCEPTED
    for _ in range(2):
        await create(yard)
    await one_pass(yard)  # both slots taken
    queued = sorted([await create(yard) for _ in range(3)], key=lambda t: (t.created_at, t.id))
    why = await yard.reads.why_waiting(await read(yard, queued[2]))  # last in claim order
    assert why is not None and why.reason is WaitingReason.ALL_BUSY
    assert why.position == 2
    assert "2/2 slots" in why.detail


async def test_backoff_after_a_failure(yard: Coordinator, backend: ScriptedBackend) -> None:
    url = await register(yard, "s1")
    backend.script[url].append(RETRYABLE)
    task = await create(yard)
    await one_pass(yard)
    again = await read(yard, task)
    assert again.status is TaskStatus.WAITING
    # The fixture retries at once; a backoff is a next attempt in the future.
    await yard.store.update_task(TaskUpdate(again.id, TaskPatch(next_attempt_at=now_ms() + 60_000)))
    why = await yard.reads.why_waiting(await read(yard, task))
    assert why is not None and why.reason is WaitingReason.BACKOFF
    assert why.retry_at is not None and why.retry_at > now_ms()
    assert "HTTP 503" in why.detail


async def test_a_final_task_has_no_waiting_reason(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    await register(yard, "s1")
    task = await create(yard)
    await one_pass(yard)
    assert await yard.reads.why_waiting(await read(yard, task)) is None


# ---- search ----------------------------------------------------------------------------------


async def test_search_filters_and_keeps_users_apart(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    url = await register(yard, "s1")
    backend.script[url].append(REJECTED)
    failed = await create(yard)
    await one_pass(yard)
    mine = [await create(yard) for _ in range(3)]
    theirs = await yard.tasks.create_task(
        owner="bob", request={"model": "m"}, options=TaskOptions()
    )
    everything = await yard.reads.search_tasks(TaskQuery(limit=100), principal=ADMIN)
    assert {t.id for t in everything} == {failed.id, theirs.id, *(t.id for t in mine)}
    assert all(t.request == {} and t.result is None for t in everything)  # summaries
    alices = await yard.reads.search_tasks(TaskQuery(limit=100), principal=ALICE)
    assert theirs.id not in {t.id for t in alices}
    bobs = await yard.reads.search_tasks(TaskQuery(limit=100, model="m"), principal=BOB)
    assert [t.id for t in bobs] == [theirs.id]
    with pytest.raises(errors.Forbidden):
        await yard.reads.search_tasks(TaskQuery(limit=100, owner="alice"), principal=BOB)
    by_code = await yard.reads.search_tasks(
        TaskQuery(limit=100, error_code="backend_rejected"), principal=ALICE
    )
    assert [t.id for t in by_code] == [failed.id]
    by_status = await yard.reads.search_tasks(
        TaskQuery(limit=100, statuses=(TaskStatus.FAILED, TaskStatus.FINISHED)), principal=ADMIN
    )
    assert [t.id for t in by_status] == [failed.id]


async def test_recent_attempts_follow_tasks_that_moved_on(
    yard: Coordinator, backend: ScriptedBackend
) -> None:
    """A server's recent attempts include those of tasks that no longer name it: retried on
    another server, or waiting again after failing there (a retry clears `server_id`)."""
    backend.always[await register(yard, "s1", weight=2.0)] = RETRYABLE  # s1 is picked first
    await register(yard, "s2")
    moved = await create(yard)
    await one_pass(yard)  # fails on s1
    waiting = await read(yard, moved)
    assert waiting.status is TaskStatus.WAITING and waiting.server_id is None
    [(task_id, attempt)] = [(r.task_id, r.attempt) for r in await yard.stats.recent_attempts("s1")]
    assert (task_id, attempt.number, attempt.error_code) == (moved.id, 1, "backend_error")
    await one_pass(yard)  # finishes on s2
    assert (await read(yard, moved)).server_id == "s2"
    on_s1 = await yard.stats.recent_attempts("s1")
    on_s2 = await yard.stats.recent_attempts("s2")
    assert [(r.task_id, r.attempt.number) for r in on_s1] == [(moved.id, 1)]
    assert [(r.task_id, r.attempt.number) for r in on_s2] == [(moved.id, 2)]
    # Newest first across tasks, by when the attempt started; at most `limit`.
    later = await create(yard)
    await one_pass(yard, now_ms() + 1_000)  # fails on s1 (not tried yet), waits
    await one_pass(yard, now_ms() + 2_000)  # finishes on s2, started after moved's
    on_s2 = await yard.stats.recent_attempts("s2")
    assert [r.task_id for r in on_s2] == [later.id, moved.id]
    assert [r.task_id for r in await yard.stats.recent_attempts("s2", limit=1)] == [later.id]
    assert await yard.stats.recent_attempts("nowhere") == []
