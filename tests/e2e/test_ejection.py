"""Outlier ejection and rejections, end to end (issue 9, items 6 and 7): a server that fails
every predict while its /health passes, or refuses every task, is taken out of rotation and
the tasks finish on the healthy servers; ejections grow; past the panic threshold tasks are
still tried; a task every server refuses ends `rejected` after two."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.support import Fleet, MockBackend, Taskyard, shared_taskyard, wait_for

EJECT_BASE_S = 1.5
ENV = {
    "eject_after_failures": 3,
    "eject_after_rejections": 3,
    "eject_base_s": EJECT_BASE_S,
    "eject_max_s": 20,
    "max_attempts": 4,
}


@pytest.fixture(scope="module")
def yard(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taskyard]:
    with shared_taskyard(db_kind, tmp_path_factory.mktemp(f"eject-{db_kind}"), **ENV) as node:
        yield node


@pytest.fixture
def fleet(yard: Taskyard, mock_factory: Callable[..., MockBackend]) -> Iterator[Fleet]:
    f = Fleet(yard, mock_factory)
    yield f
    f.close()


def epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def finish_all(yard: Taskyard, ids: list[str], *statuses: str) -> list[dict[str, Any]]:
    return [yard.wait_status(i, *(statuses or ("FINISHED",)), timeout=60) for i in ids]


def attempts_on(tasks: list[dict[str, Any]], server_id: str) -> list[dict[str, Any]]:
    return [a for t in tasks for a in t["attempts"] if a["serverId"] == server_id]


def test_a_server_failing_every_predict_is_ejected_for_longer_each_time(
    yard: Taskyard, fleet: Fleet
) -> None:
    bad, good1, good2 = fleet.mocks("bad", "good1", "good2")
    bad.control(fail_status=500)  # every /predict answers 500; /health still passes
    fleet.register_online(bad, max_concurrency=1)
    for good in (good1, good2):
        fleet.register_online(good, max_concurrency=4)

    lengths = []
    for round_number in (1, 2):
        # Each task goes to the least loaded server, ties by chance (a create is claimed as
        # it is stored): keep submitting until the bad one had its three attempts.
        tasks: list[dict[str, Any]] = []
        while len(attempts_on(tasks, bad.server_id)) < 3 and len(tasks) < 160:
            tasks += finish_all(yard, [fleet.submit() for _ in range(16)])
        server = yard.server(bad.server_id)
        assert server is not None
        health = server["health"]
        assert (health["ejections"], health["ejectionReason"]) == (round_number, "failing")
        assert "3 failed dispatches in a row" in health["lastError"]
        failed = attempts_on(tasks, bad.server_id)
        # One slot: failures come one at a time, and the third ejects it before its slot frees.
        assert [a["errorCode"] for a in failed] == ["backend_error"] * 3
        assert all(len(t["attempts"]) <= 2 for t in tasks)  # failed once at most, then elsewhere
        lengths.append(epoch_ms(health["ejectedUntil"]) - max(a["endedAt"] for a in failed))
        # Still out while its time runs; a passing check re-admits it after.
        assert server["state"] == "ejected"
        wait_for(
            lambda: (yard.server(bad.server_id) or {}).get("state") == "online",
            timeout=EJECT_BASE_S * 4 + 10,
            what="the ejected server re-admitted by a passing check",
        )
    first, second = lengths
    assert abs(first - EJECT_BASE_S * 1000) < 700, lengths
    assert abs(second - 2 * EJECT_BASE_S * 1000) < 700, lengths


def test_past_the_panic_threshold_tasks_are_still_tried_on_ejected_servers(
    yard: Taskyard, fleet: Fleet
) -> None:
    backends = fleet.mocks("a", "b", "c")
    for backend in backends:
        backend.control(fail_status=503)
        fleet.register_online(backend, max_concurrency=2)
    tasks = finish_all(yard, [fleet.submit() for _ in range(6)], "FAILED")
    # Every server of the model ejected: routing went on (the least bad first), so each task
    # used its whole budget instead of waiting for a server that would never come back.
    assert {(t["errorCode"], len(t["attempts"])) for t in tasks} == {("backend_error", 4)}
    servers = [yard.server(b.server_id) or {} for b in backends]
    assert all(s["health"]["ejections"] >= 1 for s in servers), servers


def test_a_server_refusing_every_task_is_ejected_as_rejecting(yard: Taskyard, fleet: Fleet) -> None:
    bad, good1, good2 = fleet.mocks("refuser", "good1", "good2")
    bad.control(fail_status=422)
    fleet.register_online(bad, max_concurrency=1)
    for good in (good1, good2):
        fleet.register_online(good, max_concurrency=4)
    # Some successes on the model first: the refusals are then this server's fault.
    finish_all(yard, [fleet.submit() for _ in range(4)])
    tasks = finish_all(yard, [fleet.submit() for _ in range(20)])
    server = yard.server(bad.server_id) or {}
    assert server["state"] == "ejected", server
    assert server["health"]["ejectionReason"] == "rejecting"
    refused = [t for t in tasks if attempts_on([t], bad.server_id)]
    assert refused, "the refusing server got none of the tasks"
    for task in refused:  # each refused task ran elsewhere at once
        first, second = task["attempts"]
        assert (first["serverId"], first["errorCode"]) == (bad.server_id, "backend_rejected")
        assert second["serverId"] != bad.server_id and second["errorCode"] is None


def test_a_task_every_server_refuses_ends_rejected_after_two(yard: Taskyard, fleet: Fleet) -> None:
    backends = fleet.mocks("r1", "r2", "r3")
    for backend in backends:
        backend.control(fail_status=422)
        fleet.register_online(backend)
    started = time.monotonic()
    [task] = finish_all(yard, [fleet.submit()], "FAILED")
    assert (task["errorCode"], len(task["attempts"])) == ("rejected", 2)
    assert [a["errorCode"] for a in task["attempts"]] == ["backend_rejected"] * 2
    assert len({a["serverId"] for a in task["attempts"]}) == 2
    assert task["error"].count("HTTP 422") == 2  # both answers recorded
    assert time.monotonic() - started < 30
