"""Quick end-to-end checks of the main paths."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.support import MockBackend, Taskyard, wait_for

MockFactory = Callable[..., MockBackend]


def test_sync_backend_finishes_task(taskyard: Taskyard, mock_factory: MockFactory) -> None:
    """A task dispatched to a synchronous backend is FINISHED with the backend's result."""
    backend: MockBackend = mock_factory("sync-1", "--delay-ms", "20")
    taskyard.register_online(backend)
    task_id = taskyard.submit({"model": "m", "prompt": "hi"})
    task = taskyard.wait_status(task_id, "FINISHED")
    assert task["serverId"] == "sync-1"
    assert task["result"]["data"]["echo"] == {"model": "m", "prompt": "hi"}
    assert task["attempts"][0]["serverId"] == "sync-1"


def test_long_poll_answers_when_the_task_is_final(
    taskyard: Taskyard, mock_factory: MockFactory
) -> None:
    """GET ?wait= returns as soon as the task is final, in one request."""
    backend: MockBackend = mock_factory("slowish", "--delay-ms", "400")
    taskyard.register_online(backend)
    task_id = taskyard.submit()
    started = time.monotonic()
    response = taskyard.admin.get(f"/api/task/{task_id}", params={"wait": 20}, timeout=30)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["taskDetails"]["status"] == "FINISHED"
    assert 0.3 < elapsed < 10


def test_long_poll_gives_up_after_the_wait(taskyard: Taskyard) -> None:
    """With nothing to run it, GET ?wait= answers with the current state after the wait."""
    task_id = taskyard.submit({"model": "nobody"})
    started = time.monotonic()
    response = taskyard.admin.get(f"/api/task/{task_id}", params={"wait": 0.6}, timeout=30)
    assert response.json()["taskDetails"]["status"] == "WAITING"
    assert time.monotonic() - started >= 0.55
    bad = taskyard.admin.get(f"/api/task/{task_id}", params={"wait": 600})
    assert bad.status_code == 400


def test_final_tasks_are_purged_after_the_retention(
    taskyard_factory: Callable[..., Taskyard], mock_factory: MockFactory
) -> None:
    """Finished tasks disappear after TASKYARD_RESULT_RETENTION_S; open ones stay."""
    node: Taskyard = taskyard_factory(result_retention_s=1)
    node.register_online(mock_factory("quick"), models=["m"])
    done = node.submit({"model": "m"})
    waiting = node.submit({"model": "nobody"})
    node.wait_status(done, "FINISHED")
    wait_for(
        lambda: node.admin.get(f"/api/task/{done}").status_code == 404,
        timeout=10,
        what="the finished task to be purged",
    )
    assert node.task(waiting)["status"] == "WAITING"
