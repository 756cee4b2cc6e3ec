"""Quick end-to-end checks of the main paths."""

from __future__ import annotations

from tests.support import MockBackend, Taskyard


def test_sync_backend_finishes_task(taskyard: Taskyard, mock_factory) -> None:
    """A task dispatched to a synchronous backend is FINISHED with the backend's result."""
    backend: MockBackend = mock_factory("sync-1", "--delay-ms", "20")
    taskyard.register_online(backend)
    task_id = taskyard.submit({"model": "m", "prompt": "hi"})
    task = taskyard.wait_status(task_id, "FINISHED")
    assert task["serverId"] == "sync-1"
    assert task["result"]["data"]["echo"] == {"model": "m", "prompt": "hi"}
    assert task["attempts"][0]["serverId"] == "sync-1"
