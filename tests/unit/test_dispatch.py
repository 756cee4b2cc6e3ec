"""Server choice and retry timing (pure functions)."""

from __future__ import annotations

import random

import pytest

from taskyard.domain import dispatch
from taskyard.domain.models import AttemptRecord, ServerStatus
from tests.unit.factories import make_server, make_task

SHARE = 0.5  # the panic threshold: more than this share of a model's servers ejected


def test_least_loaded_server_wins() -> None:
    """The server with the lowest in-flight/capacity ratio gets the task."""
    busy = make_server("busy", max_concurrency=4, in_flight=3)
    idle = make_server("idle", max_concurrency=4, in_flight=1)
    plan = dispatch.assign([make_task()], [busy, idle], random.Random(1), max_ejected_share=SHARE)
    assert [a.server.id for a in plan] == ["idle"]


def test_ties_go_to_the_heavier_weight() -> None:
    """Equal load: the higher weight wins, whatever the random draw."""
    light = make_server("light", weight=1.0)
    heavy = make_server("heavy", weight=5.0)
    for seed in range(20):
        plan = dispatch.assign(
            [make_task()], [light, heavy], random.Random(seed), max_ejected_share=SHARE
        )
        assert plan[0].server.id == "heavy"


def test_equal_ties_are_spread_randomly() -> None:
    """Equal load and weight: different draws pick different servers."""
    servers = [make_server(f"s{i}") for i in range(4)]
    chosen = {
        dispatch.assign([make_task()], servers, random.Random(seed), max_ejected_share=SHARE)[
            0
        ].server.id
        for seed in range(50)
    }
    assert len(chosen) > 1


def test_capacity_taken_in_batch_counts() -> None:
    """A batch never puts more tasks on a server than its free slots."""
    server = make_server("s", max_concurrency=2, in_flight=1)
    tasks = [make_task(id=f"t{i}") for i in range(5)]
    plan = dispatch.assign(tasks, [server], random.Random(0), max_ejected_share=SHARE)
    assert [a.task.id for a in plan] == ["t0"]


def test_batch_spreads_over_servers() -> None:
    """Successive tasks in one batch go to the least loaded server each time."""
    a = make_server("a", max_concurrency=2)
    b = make_server("b", max_concurrency=2)
    plan = dispatch.assign(
        [make_task(id=f"t{i}") for i in range(4)], [a, b], random.Random(0), max_ejected_share=SHARE
    )
    assert sorted(x.server.id for x in plan) == ["a", "a", "b", "b"]


def test_offline_full_and_wrong_model_servers_are_skipped() -> None:
    """Only online servers with a free slot that serve the model are eligible."""
    servers = [
        make_server("offline", status=ServerStatus.OFFLINE),
        make_server("full", in_flight=1),
        make_server("other-model", models=("x",)),
        make_server("right", models=("m", "y")),
    ]
    plan = dispatch.assign([make_task()], servers, random.Random(0), max_ejected_share=SHARE)
    assert [a.server.id for a in plan] == ["right"]


def test_no_eligible_server_leaves_task_unassigned() -> None:
    """A task nobody can take is simply not in the plan (it keeps waiting)."""
    plan = dispatch.assign(
        [make_task(model="nope")], [make_server(models=("m",))], max_ejected_share=SHARE
    )
    assert plan == []


def test_retry_prefers_an_untried_server() -> None:
    """A retried task goes to a server it has not tried, even a busier one."""
    tried = make_server("tried", max_concurrency=10)
    fresh = make_server("fresh", max_concurrency=10, in_flight=8)
    task = make_task(attempt=1, attempts=(AttemptRecord(1, "tried", 0, 1, "boom", "x"),))
    plan = dispatch.assign([task], [tried, fresh], random.Random(0), max_ejected_share=SHARE)
    assert plan[0].server.id == "fresh"


def test_retry_falls_back_to_the_same_server_when_alone() -> None:
    """With no other eligible server, the retry goes where it failed before."""
    only = make_server("only")
    task = make_task(attempt=1, attempts=(AttemptRecord(1, "only", 0, 1, "boom", "x"),))
    assert dispatch.assign([task], [only], max_ejected_share=SHARE)[0].server.id == "only"


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 20])
def test_backoff_grows_and_is_capped(attempt: int) -> None:
    """Backoff is jittered within [ceiling/2, ceiling], ceiling = min(max, base * 2^(n-1))."""
    rng = random.Random(attempt)
    ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
    for _ in range(100):
        delay = dispatch.retry_delay_s(attempt, base_s=0.5, max_s=8.0, rng=rng)
        assert ceiling / 2 <= delay <= ceiling


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (408, True), (409, True), (400, False), (404, False)],
)
def test_retryable_statuses(status: int, retryable: bool) -> None:
    """5xx, 408, 409 and 429 are retried elsewhere; other 4xx fail the task."""
    assert dispatch.is_retryable_status(status) is retryable
