"""Cancel that reaches the backend (issue 9, item 4): a running task's backend is sent
`{task_id, attempt}` on its `endpoints.cancel`, durably (a kill -9 right after the cancel does
not forget it), and its slot stays counted until the backend lets go, so a backend never gets
more than `max_concurrency` tasks across cancels, deadlines and retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support import MockBackend, Taskyard, mock_info, wait_for

ENV = {"slot_grace_s": 30, "cancel_timeout_s": 1, "node_timeout_s": 1.5}


def register(node: Taskyard, backend: MockBackend, **fields: Any) -> None:
    node.register_online(backend, endpoints=backend.endpoints(), models=["m"], **fields)


def running(node: Taskyard, backend: MockBackend, count: int) -> list[str]:
    ids = [node.submit({"model": "m", "n": i}) for i in range(count)]
    wait_for(lambda: mock_info(backend)["in_flight"] == count, what=f"{count} running")
    return ids


def stopped_by_cancel(backend: MockBackend, task_id: str) -> list[dict[str, Any]]:
    return [c for c in backend.cancels() if c["task_id"] == task_id and c["stopped"]]


def test_a_cancelled_running_task_is_cancelled_on_its_backend(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    node = taskyard_factory(**ENV)
    backend = mock_factory("cancellable")
    backend.control(hang=True)
    register(node, backend, max_concurrency=1)
    [task_id] = running(node, backend, 1)
    waiting = node.submit({"model": "m", "n": "next"})
    assert node.admin.delete(f"/api/task/{task_id}").status_code == 200
    wait_for(lambda: stopped_by_cancel(backend, task_id), what="the backend told to stop")
    [cancel] = stopped_by_cancel(backend, task_id)
    assert (cancel["attempt"], cancel["status"]) == (1, 200)
    # The slot it let go of goes to the next task (released: it finishes).
    backend.control(hang=False)
    node.wait_status(waiting, "FINISHED")
    assert node.task(task_id)["status"] == "CANCELLED"
    assert (node.server(backend.server_id) or {})["heldSlots"] == 0
    assert mock_info(backend)["max_in_flight"] == 1


def test_a_cancel_survives_a_kill9_right_after_it(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    node = taskyard_factory(**ENV)
    backend = mock_factory("cancel-after-crash")
    backend.control(hang=True, cancel_fail_status=503)  # the first cancels do not get through
    register(node, backend, max_concurrency=2)
    task_id, other = running(node, backend, 2)
    assert node.admin.post(f"/api/task/{task_id}/cancel").status_code == 200
    wait_for(
        lambda: any(c["task_id"] == task_id and c["status"] == 503 for c in backend.cancels()),
        what="the first cancel refused",
    )
    node.kill9()
    backend.control(cancel_fail_status=None)
    node.start()
    # Remembered in the database and sent again by the restarted node.
    wait_for(lambda: stopped_by_cancel(backend, task_id), timeout=20, what="cancel re-sent")
    assert node.task(task_id)["status"] == "CANCELLED"
    backend.control(hang=False)
    assert node.wait_status(other, "FINISHED", timeout=30)["status"] == "FINISHED"


def test_max_concurrency_holds_across_cancels_deadlines_and_retries(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    node = taskyard_factory(**ENV, task_timeout_s=1, max_attempts=2)
    backend = mock_factory("narrow")
    backend.control(hang=True)  # every predict runs until released or cancelled
    register(node, backend, max_concurrency=2)
    ids = [node.submit({"model": "m", "n": i}) for i in range(6)]
    wait_for(lambda: mock_info(backend)["in_flight"] == 2, what="both slots busy")
    assert node.admin.post(f"/api/task/{ids[0]}/cancel").status_code == 200
    assert node.admin.post(f"/api/task/{ids[5]}/cancel").status_code == 200
    # Deadlines pass, attempts are cancelled on the backend and retried, tasks fail at their
    # last attempt: every task ends without the backend ever running more than two.
    tasks = [node.wait_status(i, "FAILED", "CANCELLED", timeout=60) for i in ids]
    assert [t["status"] for t in tasks].count("CANCELLED") == 2
    assert {t["errorCode"] for t in tasks if t["status"] == "FAILED"} == {"timeout"}
    timed_out = [a for t in tasks for a in t["attempts"] if a["errorCode"] == "timeout"]
    assert len(timed_out) >= 4
    # The last holds are let go after their tasks ended: by the cancels' answers (the hanging
    # predicts never answer, and the grace is longer than this wait).
    wait_for(lambda: (node.server(backend.server_id) or {})["inFlight"] == 0, what="all let go")
    stopped = {(c["task_id"], c["attempt"]) for c in backend.cancels() if c["stopped"]}
    cut_off = {(t["id"], a["attempt"]) for t in tasks for a in t["attempts"] if a["endedAt"]}
    assert stopped <= cut_off  # only ended attempts of these tasks were stopped
    assert len(stopped) >= len(timed_out)  # each timed-out attempt was cancelled
    info = mock_info(backend)
    assert info["max_in_flight"] == 2, info


def test_the_api_key_reaches_the_backend_and_is_never_shown(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    key = "sk-backend-" + "q" * 24
    node = taskyard_factory(**ENV)
    backend = mock_factory("keyed", api_key=key)
    backend.control(hang=True)
    register(node, backend, apiKey=key)  # online: its health checks carried the key
    [task_id] = running(node, backend, 1)
    assert node.admin.delete(f"/api/task/{task_id}").status_code == 200
    wait_for(lambda: stopped_by_cancel(backend, task_id), what="cancel with the key")
    backend.control(hang=False)
    done = node.wait_status(node.submit({"model": "m"}), "FINISHED")
    assert done["status"] == "FINISHED"
    checks = [c for c in backend.health_checks() if c["node"]]  # not the test's readiness probe
    calls = [*backend.received(), *checks, *backend.cancels()]
    assert calls and [c for c in calls if not c["auth_matched"]] == []
    shown = [
        node.admin.get("/api/servers").text,
        node.admin.get(f"/api/servers/{backend.server_id}").text,
        node.admin.get(f"/api/task/{task_id}").text,
        node.admin.get("/api/tasks").text,
        node.admin.get(f"/api/stats/servers/{backend.server_id}").text,
        node.admin.get("/dashboard").text,
    ]
    assert all(key not in text for text in shown)
    assert key not in node.log_tail(1_000_000)
