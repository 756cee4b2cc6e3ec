"""Kill -9 the coordinator with tasks in every state: after a restart, every task is there."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import MockBackend, Taskyard, wait_for

RESTART_ENV = {"task_timeout_s": 4, "node_timeout_s": 1.5, "max_attempts": 5}


def test_kill9_loses_nothing(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    """WAITING, PROCESSING (sync and async), FINISHED, FAILED and CANCELLED tasks all survive."""
    node = taskyard_factory(**RESTART_ENV)
    slow_sync = mock_factory("slow-sync", "--delay-ms", "1500")
    slow_async = mock_factory("slow-async", "--delay-ms", "1500", "--async")
    rejecting = mock_factory("rejecting")
    rejecting.control(fail_status=400)

    node.register_online(rejecting, models=["bad"], max_concurrency=1)
    failed = node.submit({"model": "bad"})
    node.wait_status(failed, "FAILED")

    # With cancel endpoints: the attempts the crash cut off are cancelled after the restart,
    # and the backends' answers free their slots at once (without, they stay held until a
    # grace past their deadline, docs/servers.md).
    node.register_online(
        slow_sync, models=["m"], max_concurrency=2, endpoints=slow_sync.endpoints()
    )
    node.register_online(
        slow_async,
        models=["m"],
        max_concurrency=2,
        endpoints=slow_async.endpoints(),
        **{"async": True},
    )
    finished = node.submit({"model": "m", "n": "first"})
    node.wait_status(finished, "FINISHED", timeout=10)

    cancelled = node.submit({"model": "nobody-serves-this"})
    assert node.admin.post(f"/api/task/{cancelled}/cancel").status_code == 200
    orphan = node.submit({"model": "nobody-serves-this"})  # stays WAITING throughout

    running = [node.submit({"model": "m", "n": i}) for i in range(4)]  # fills all 4 slots
    queued = [node.submit({"model": "m", "n": f"q{i}"}) for i in range(6)]
    wait_for(
        lambda: all(node.task(t)["status"] == "PROCESSING" for t in running),
        what="4 tasks processing",
    )
    assert {node.task(t)["serverId"] for t in running} == {"slow-sync", "slow-async"}

    node.kill9()
    node.start()

    everything = [failed, finished, cancelled, orphan, *running, *queued]
    for task_id in [*running, *queued]:
        task = node.wait_status(task_id, "FINISHED", timeout=40)
        assert task["result"]["data"]["echo"]["model"] == "m"
    assert node.task(failed)["status"] == "FAILED"
    assert node.task(finished)["status"] == "FINISHED"
    assert node.task(cancelled)["status"] == "CANCELLED"
    assert node.task(orphan)["status"] == "WAITING"
    assert len({node.task(t)["id"] for t in everything}) == len(everything)


def test_acknowledged_creates_survive_kill9(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    """Every task whose create returned 200 exists after a kill -9, and then runs."""
    creates_survive_kill9(taskyard_factory(**RESTART_ENV), mock_factory)


def test_acknowledged_creates_survive_kill9_with_sqlite_synchronous_normal(
    taskyard_factory: Callable[..., Taskyard],
    mock_factory: Callable[..., MockBackend],
    database_url: str,
) -> None:
    """The faster SQLite mode (no fsync per commit) still survives a crash of the process:
    the commits are in the WAL file, which the OS keeps (only power loss can lose them)."""
    if not database_url.startswith("sqlite"):
        pytest.skip("a SQLite setting (PostgreSQL's durability is the server's)")
    node = taskyard_factory(**RESTART_ENV, sqlite_synchronous="normal")
    creates_survive_kill9(node, mock_factory)


def creates_survive_kill9(node: Taskyard, mock_factory: Callable[..., MockBackend]) -> None:
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda i: node.submit({"model": "m", "i": i}), range(80)))
    node.kill9()
    node.start()
    assert all(node.task(t)["status"] == "WAITING" for t in ids)
    node.register_online(mock_factory("after-restart"), max_concurrency=8)
    for task_id in ids:
        node.wait_status(task_id, "FINISHED", timeout=30)


def test_processing_tasks_are_not_stuck_after_restart(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    """A sync attempt cut off by the crash is re-dispatched after restart, not left PROCESSING.

    Its slot is held until the backend says it let go (issue 9): here its cancel answer. A
    backend without a cancel endpoint would get the task again only a grace past the deadline.
    """
    node = taskyard_factory(**{**RESTART_ENV, "task_timeout_s": 30})
    backend = mock_factory("hangs-once")
    node.register_online(backend, max_concurrency=1, endpoints=backend.endpoints())
    backend.control(hang=True)
    task_id = node.submit()
    node.wait_status(task_id, "PROCESSING")
    node.kill9()
    backend.control(hang=False)
    node.start()
    # The deadline is 30 s away: only the lost-coordinator recovery can finish it this soon.
    task = node.wait_status(task_id, "FINISHED", timeout=15)
    assert [a["errorCode"] for a in task["attempts"]] == ["node_lost", None]
    assert [(c["task_id"], c["attempt"], c["status"]) for c in backend.cancels()] == [
        (task_id, 1, 200)
    ]
