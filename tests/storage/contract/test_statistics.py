"""Statistics: the tallies of matched changes, summed by group, and pruned by minute."""

from __future__ import annotations

from taskyard.domain import lifecycle
from taskyard.domain.ports import Store
from taskyard.domain.tallies import Event
from tests.storage.contract.support import covers, start
from tests.unit.factories import make_task

MINUTE = 60_000


@covers("tally_sums", "prune_tallies")
async def test_tallies_count_matched_changes_only_and_sum_by_group(store: Store) -> None:
    task = make_task(id="t1", created_at=10 * MINUTE + 5)
    running = await start(store, task, now=10 * MINUTE + 100)
    done, _ = lifecycle.finish(running, result={"ok": 1}, now=11 * MINUTE + 100)
    assert await store.update_task(done)
    assert not await store.update_task(done)  # a second finish matches nothing, counts nothing
    sums = await store.tally_sums(
        since=0,
        events=(Event.CREATED, Event.FINISHED, Event.ATTEMPT, Event.QUEUE_WAIT),
        group_by=("period", "event"),
    )
    by_key = {(s.period, s.event): (s.count, s.total_ms) for s in sums}
    assert by_key == {
        (10 * MINUTE, "created"): (1, 0),
        (10 * MINUTE, "queue_wait"): (1, 95),
        (11 * MINUTE, "finished"): (1, 0),
        (11 * MINUTE, "attempt"): (1, MINUTE),
    }
    [attempt] = await store.tally_sums(
        since=11 * MINUTE, events=(Event.ATTEMPT,), group_by=("server_id", "code"), server_id="gpu"
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
    assert await store.prune_tallies(before=11 * MINUTE) == 2
    left = await store.tally_sums(since=0, events=tuple(Event), group_by=("event",))
    assert sorted((s.event, s.count) for s in left) == [
        ("attempt", 1),
        ("finished", 1),
        ("processing", 1),
    ]


@covers("prune_tallies", "tally_sums")
async def test_pruning_counts_the_rollup_rows_of_the_minutes_before(store: Store) -> None:
    # Three creates of one model in one minute are one rollup row; another model is another.
    for i, model in enumerate(("m", "m", "m", "x")):
        await store.add_task(make_task(id=f"t{i}", model=model, created_at=5 * MINUTE + i))
    await store.add_task(make_task(id="later", created_at=6 * MINUTE))
    assert await store.prune_tallies(before=5 * MINUTE) == 0
    assert await store.prune_tallies(before=6 * MINUTE) == 2
    assert await store.prune_tallies(before=6 * MINUTE) == 0
    [left] = await store.tally_sums(since=0, events=(Event.CREATED,), group_by=("period",))
    assert (left.period, left.count) == (6 * MINUTE, 1)
