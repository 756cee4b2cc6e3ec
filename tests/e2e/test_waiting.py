"""Why a task waits (`taskDetails.waiting`, issue 8 item 3) end to end: each reason made by a
real situation on a real coordinator (SQLite and PostgreSQL) with real mock backends, and the
`warnings` a create carries for a model that no server serves."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support import Fleet, MockBackend, Taskyard, free_port, shared_taskyard, wait_for

MockFactory = Callable[..., MockBackend]
# A failed attempt is retried after 15 to 30 s (full jitter under a 30 s ceiling): long
# enough that the task is seen in its backoff, and never retried within a test.
RETRY_BASE_S = 30


@pytest.fixture(scope="module")
def yard(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taskyard]:
    workdir = tmp_path_factory.mktemp(f"yard-{db_kind}")
    with shared_taskyard(
        db_kind, workdir, retry_base_s=RETRY_BASE_S, retry_max_s=RETRY_BASE_S
    ) as node:
        yield node


@pytest.fixture
def fleet(yard: Taskyard, mock_factory: MockFactory) -> Iterator[Fleet]:
    f = Fleet(yard, mock_factory)
    yield f
    f.close()


def created(yard: Taskyard, model: str, client: httpx.Client | None = None, **params: Any) -> Any:
    """The body of a create (taskId, taskDetails, warnings)."""
    response = (client or yard.admin).post("/api/task", json={"model": model}, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def waiting(yard: Taskyard, task_id: str) -> Any:
    """`taskDetails.waiting` as GET /api/task/{id} answers it (the key must be there)."""
    response = yard.admin.get(f"/api/task/{task_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert "warnings" not in body or body["warnings"] is None, "warnings are for the create"
    details = body["taskDetails"]
    assert "waiting" in details
    assert (details["waiting"] is None) == (details["status"] != "WAITING"), details
    return details["waiting"]


def reason_becomes(yard: Taskyard, task_id: str, reason: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: (w := waiting(yard, task_id)) and w["reason"] == reason and w,
        what=f"{task_id} waiting for {reason}",
    )
    return found


def queue_of(yard: Taskyard, model: str) -> dict[str, Any] | None:
    """The model's entry in /api/stats `queue`."""
    response = yard.admin.get("/api/stats")
    assert response.status_code == 200, response.text
    found = [q for q in response.json()["queue"] if q["model"] == model]
    return found[0] if found else None


def unserved(yard: Taskyard) -> dict[str, int]:
    """/api/stats `modelsWithoutServer`: model → WAITING tasks."""
    response = yard.admin.get("/api/stats")
    assert response.status_code == 200, response.text
    return {m["model"]: m["waiting"] for m in response.json()["modelsWithoutServer"]}


def cancel(yard: Taskyard, *task_ids: str) -> None:
    for task_id in task_ids:
        response = yard.admin.post(f"/api/task/{task_id}/cancel")
        assert response.status_code in (200, 409), response.text


def test_no_server_for_model_and_the_create_warning(fleet: Fleet) -> None:
    """A create for a model that no registered server serves is 200 with a warning naming
    the model, and the task says it waits for a server of that model; once a server serves
    it, a create carries no warning."""
    yard = fleet.yard
    other, backend = fleet.mocks("other", "served")  # started now, registered later
    body = created(yard, fleet.model)
    task_id = body["taskId"]
    assert body["taskDetails"]["status"] == "WAITING"
    (warning,) = body["warnings"]
    assert fleet.model in warning and "no registered server" in warning
    user = yard.client(["user"], "carol")
    with user:
        mine = created(yard, fleet.model, client=user)
    assert len(mine["warnings"]) == 1 and fleet.model in mine["warnings"][0]

    why = waiting(yard, task_id)
    assert why["reason"] == "no_server_for_model"
    assert fleet.model in why["detail"]
    assert "retryAt" not in why and "position" not in why
    assert unserved(yard)[fleet.model] == 2  # /api/stats lists the model
    # A server of another model does not change that.
    fleet.register_online(other, models=[f"{fleet.model}-not-this-one"])
    assert waiting(yard, task_id)["reason"] == "no_server_for_model"
    assert len(created(yard, fleet.model)["warnings"]) == 1

    # A server for it: no warning on create, and the waiting tasks run.
    fleet.register_online(backend)
    served = created(yard, fleet.model)
    assert served["warnings"] == []
    for waited in (task_id, mine["taskId"], served["taskId"]):
        assert yard.wait_status(waited, "FINISHED")["waiting"] is None
    assert fleet.model not in unserved(yard)


def test_no_server_online_while_its_only_server_is_unreachable(fleet: Fleet) -> None:
    """A server registered on a port where nothing listens never comes online: its model's
    tasks wait for a server to be online, and the detail names the server and its error."""
    yard = fleet.yard
    task_id = created(yard, fleet.model)["taskId"]
    assert waiting(yard, task_id)["reason"] == "no_server_for_model"

    closed = f"http://127.0.0.1:{free_port()}"
    sid = fleet.sid("nowhere")
    body = register_unreachable_then_create(fleet, sid, closed)
    assert body["warnings"] == []  # a server serves it, even if it is offline
    for task in (task_id, body["taskId"]):
        why = reason_becomes(yard, task, "no_server_online")
        assert sid in why["detail"] and "offline" in why["detail"]
        assert "retryAt" not in why and "position" not in why
    wait_for(lambda: (yard.server(sid) or {}).get("health", {}).get("lastError"), what="error")
    why = waiting(yard, task_id)
    assert (yard.server(sid) or {})["health"]["lastError"] in why["detail"]
    cancel(yard, task_id, body["taskId"])


def register_unreachable_then_create(fleet: Fleet, sid: str, url: str) -> Any:
    fleet.register_raw({"id": sid, "endpoints": {"predict": url + "/p", "health": url + "/h"}})
    return created(fleet.yard, fleet.model)


def test_no_server_online_after_its_server_stops(fleet: Fleet) -> None:
    """Its only server goes down (the mock process stops): once it is offline, a task of
    its model waits for a server to be online."""
    yard = fleet.yard
    (backend,) = fleet.mocks("stops")
    fleet.register_online(backend)
    backend.stop()
    wait_for(
        lambda: (yard.server(backend.server_id) or {}).get("status") == "offline",
        what=f"{backend.server_id} offline",
    )
    task_id = created(yard, fleet.model)["taskId"]
    why = waiting(yard, task_id)
    assert why["reason"] == "no_server_online"
    assert backend.server_id in why["detail"]
    cancel(yard, task_id)


def test_all_busy_with_queue_positions(fleet: Fleet) -> None:
    """One server with one slot, taken by a task that hangs: the next tasks wait because all
    servers are busy, each with its place in the queue (claim order: priority, then age)."""
    yard = fleet.yard
    (backend,) = fleet.mocks("busy")
    backend.control(hang=True)
    fleet.register_online(backend, max_concurrency=1)
    running = fleet.submit()
    queued: list[str] = []
    urgent: list[str] = []
    try:
        assert yard.wait_status(running, "PROCESSING")["waiting"] is None
        queued += [fleet.submit() for _ in range(3)]
        for position, task_id in enumerate(queued):
            why = reason_becomes(yard, task_id, "all_busy")
            assert why["position"] == position, (position, why)
            assert "1/1" in why["detail"] and fleet.model in why["detail"]
            assert "retryAt" not in why
        queue = queue_of(yard, fleet.model)
        assert queue is not None
        counts = {k: queue[k] for k in ("waiting", "due", "inFlight", "capacity")}
        assert counts == {"waiting": 3, "due": 3, "inFlight": 1, "capacity": 1}
        urgent.append(fleet.submit(priority=5))  # jumps the queue
        assert waiting(yard, urgent[0])["position"] == 0
        assert [waiting(yard, t)["position"] for t in queued] == [1, 2, 3]
        # Another model's queue is its own: it does not count ahead.
        other = created(yard, f"{fleet.model}-elsewhere")["taskId"]
        assert waiting(yard, other)["reason"] == "no_server_for_model"
        assert [waiting(yard, t)["position"] for t in queued] == [1, 2, 3]
        cancel(yard, other)
        # A task ahead leaves the queue: everyone behind it moves up.
        cancel(yard, queued[0])
        assert waiting(yard, queued[0]) is None
        assert [waiting(yard, t)["position"] for t in (*urgent, *queued[1:])] == [0, 1, 2]
    finally:
        cancel(yard, running, *urgent, *queued)
        backend.control(hang=False)


def test_backoff_after_a_failed_attempt(fleet: Fleet) -> None:
    """An attempt fails (the backend answers 500): the task is WAITING again, in its retry
    backoff, with the time of the next attempt and the error, even though the server is
    free and online."""
    yard = fleet.yard
    (backend,) = fleet.mocks(("failing", "--error-rate", "1"))
    fleet.register_online(backend)
    task_id = fleet.submit(max_attempts=3)

    def failed_once() -> dict[str, Any] | None:
        task = yard.task(task_id)
        return task if task["status"] == "WAITING" and task["attempts"] else None

    task = wait_for(failed_once, what="the first attempt to fail")
    (attempt,) = task["attempts"]
    assert attempt["errorCode"] == "backend_error"
    why = task["waiting"]
    assert why["reason"] == "backoff", why
    now = int(time.time() * 1000)
    assert why["retryAt"] > now
    low, high = RETRY_BASE_S / 2 * 1000, RETRY_BASE_S * 1000
    assert low <= why["retryAt"] - attempt["endedAt"] <= high, (why, attempt)
    assert "attempt 1 of 3 failed" in why["detail"]
    assert attempt["error"] in why["detail"]
    assert "position" not in why
    assert (yard.server(backend.server_id) or {})["status"] == "online"
    queue = queue_of(yard, fleet.model)
    assert queue is not None and (queue["waiting"], queue["due"]) == (1, 0)  # not due yet
    # It stays in its backoff, not tried again meanwhile.
    assert waiting(yard, task_id)["retryAt"] == why["retryAt"]
    cancel(yard, task_id)
    assert len(backend.received()) == 1


def test_waiting_is_null_unless_waiting(fleet: Fleet) -> None:
    """`waiting` is in every task read, null for a task that is not WAITING: running,
    finished, failed, cancelled."""
    yard = fleet.yard
    (backend,) = fleet.mocks("ok")
    fleet.register_online(backend)
    finished = yard.wait_status(fleet.submit(), "FINISHED")
    failed = yard.wait_status(
        created(yard, f"{fleet.model}-none", queue_timeout_s=0.2)["taskId"], "FAILED"
    )
    cancelled_id = created(yard, f"{fleet.model}-none")["taskId"]
    assert waiting(yard, cancelled_id)["reason"] == "no_server_for_model"
    cancel(yard, cancelled_id)
    for task in (finished, failed, yard.task(cancelled_id)):
        assert task["status"] != "WAITING" and task["waiting"] is None, task
