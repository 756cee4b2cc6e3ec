"""Task dispatch end to end: real coordinator, real mock backends, over 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.support import (
    Fleet,
    MockBackend,
    Taskyard,
    bearer,
    mock_info,
    shared_taskyard,
    token,
    wait_for,
    wait_loop_passes,
)

MockFactory = Callable[..., MockBackend]
ASYNC = {"async": True}  # registration field; `async` is a Python keyword


@pytest.fixture(scope="module")
def yard(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taskyard]:
    """One coordinator (FAST_ENV intervals) shared by this module's tests."""
    with shared_taskyard(db_kind, tmp_path_factory.mktemp(f"yard-{db_kind}")) as node:
        yield node


@pytest.fixture
def fleet(yard: Taskyard, mock_factory: MockFactory) -> Iterator[Fleet]:
    f = Fleet(yard, mock_factory)
    yield f
    f.close()


def task_ids(backend: MockBackend) -> list[str]:
    """The task ids of the predict calls a mock received, in arrival order."""
    return [call["task_id"] for call in backend.received()]


def callbacks(backend: MockBackend) -> list[dict[str, Any]]:
    response = httpx.get(backend.url + "/callbacks", timeout=5)
    items: list[dict[str, Any]] = response.json()["callbacks"]
    return items


def wait_all(yard: Taskyard, ids: list[str], status: str, timeout: float = 30) -> None:
    pending = set(ids)

    def done() -> bool:
        for task_id in list(pending):
            task = yard.task(task_id)
            assert task["status"] in ("WAITING", "PROCESSING", status), task
            if task["status"] == status:
                pending.discard(task_id)
        return not pending

    wait_for(done, timeout=timeout, what=f"{len(pending)} tasks {status}")


def settled(task: dict[str, Any]) -> dict[str, Any]:
    """A task without `updatedAt` (an async backend's 202 touches it after the attempt starts)."""
    return {k: v for k, v in task.items() if k != "updatedAt"}


class ScriptedBackend:
    """A minimal backend in a thread: GET /health → 200; POST /predict → 200 with `reply`."""

    def __init__(self, reply: dict[str, Any]) -> None:
        body = json.dumps(reply).encode()
        calls: list[dict[str, Any]] = []
        self.calls = calls

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._send(b'{"status": "ok"}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                calls.append(json.loads(self.rfile.read(length)))
                self._send(body)

            def _send(self, payload: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


# ---- results ---------------------------------------------------------------------------------


def test_sync_backend_finishes_task_with_its_result(fleet: Fleet) -> None:
    """A synchronous backend's 200 makes the task FINISHED with exactly that result."""
    (backend,) = fleet.mocks(("sync", "--delay-ms", "20"))
    fleet.register_online(backend)
    request = {"model": fleet.model, "prompt": "hi", "options": {"n": 2}}
    task_id = fleet.submit(request)
    task = fleet.yard.wait_status(task_id, "FINISHED")

    stored = httpx.get(f"{backend.url}/result/{task_id}", timeout=5).json()
    assert task["result"] == stored
    assert task["result"]["data"]["echo"] == request
    assert task["request"] == request
    assert task["serverId"] == backend.server_id
    assert task["error"] is None and task["errorCode"] is None
    assert task["progress"] == 100
    assert task["createdAt"] <= task["startedAt"] <= task["finishedAt"]
    (attempt,) = task["attempts"]
    assert attempt["serverId"] == backend.server_id
    assert attempt["endedAt"] is not None and attempt["error"] is None
    assert [(c["task_id"], c["attempt"]) for c in backend.received()] == [(task_id, 1)]


def test_async_backend_processing_then_finished_by_callback(fleet: Fleet) -> None:
    """An async backend's 202 leaves the task PROCESSING until its callback PUT finishes it."""
    (backend,) = fleet.mocks(("async", "--async", "--delay-ms", "1500"))
    fleet.register_online(backend, **ASYNC)
    task_id = fleet.submit({"model": fleet.model, "x": 1})
    yard = fleet.yard

    running = yard.wait_status(task_id, "PROCESSING", "FINISHED")
    assert running["status"] == "PROCESSING", "finished before the backend's delay"
    assert running["serverId"] == backend.server_id
    assert running["result"] is None

    task = yard.wait_status(task_id, "FINISHED")
    assert task["result"]["data"]["echo"] == {"model": fleet.model, "x": 1}
    assert task["result"]["metadata"]["status"] == "FINISHED"
    (record,) = wait_for(lambda: callbacks(backend), what="the callback record")
    assert record["task_id"] == task_id
    assert record["status"] == 200
    assert record["url"] == f"{yard.url}/api/task/{task_id}"


def test_sync_backend_reporting_failed_fails_task(fleet: Fleet) -> None:
    """A 200 whose metadata.status is FAILED fails the task with backend_failed, no retry."""
    reply = {
        "backend_task_id": "b-1",
        "data": None,
        "metadata": {"server_id": fleet.sid("scripted"), "status": "FAILED", "message": "OOM"},
    }
    backend = ScriptedBackend(reply)
    try:
        sid = fleet.sid("scripted")
        fleet.register_raw(
            {
                "id": sid,
                "endpoints": {"predict": backend.url + "/predict", "health": backend.url + "/h"},
            }
        )
        wait_for(lambda: (fleet.yard.server(sid) or {}).get("status") == "online", what="online")
        task = fleet.yard.wait_status(fleet.submit(), "FAILED")
    finally:
        backend.close()
    assert task["errorCode"] == "backend_failed"
    assert "OOM" in task["error"]
    assert task["result"] == reply
    assert len(task["attempts"]) == 1
    assert len(backend.calls) == 1


# ---- failures and retries --------------------------------------------------------------------


def test_failing_backend_is_retried_on_another(fleet: Fleet) -> None:
    """A 500 from one backend sends the task to a different one, where it finishes."""
    bad, good = fleet.mocks("bad", "good")
    bad.control(error_rate=1)
    fleet.register_online(bad, weight=10)  # wins the first choice
    fleet.register_online(good)
    task = fleet.yard.wait_status(fleet.submit(max_attempts=2), "FINISHED", "FAILED")

    assert task["status"] == "FINISHED", task
    assert task["serverId"] == good.server_id
    failed, succeeded = task["attempts"]
    assert failed["serverId"] == bad.server_id
    assert failed["errorCode"] == "backend_error"
    assert "500" in failed["error"]
    assert succeeded["serverId"] == good.server_id
    assert succeeded["error"] is None
    assert len(bad.received()) == 1


def test_all_backends_failing_fails_task_with_every_attempt(fleet: Fleet) -> None:
    """When every try fails, the task is FAILED (backend_error) after max_attempts attempts."""
    backends = fleet.mocks("a", "b")
    for backend in backends:
        backend.control(error_rate=1)
        fleet.register_online(backend)
    task = fleet.yard.wait_status(fleet.submit(max_attempts=3), "FAILED")

    assert task["errorCode"] == "backend_error"
    attempts = task["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    for attempt in attempts:  # each attempt keeps its own error; the summary is the task's
        assert attempt["errorCode"] == "backend_error"
        assert attempt["error"].startswith(f"{attempt['serverId']}: HTTP 500")
        assert "3 attempts" not in attempt["error"]
        assert attempt["endedAt"] is not None
    assert "3 attempts" in task["error"]
    assert attempts[0]["serverId"] != attempts[1]["serverId"]  # retried elsewhere
    assert sum(len(b.received()) for b in backends) == 3


def test_client_error_is_retried_once_elsewhere(fleet: Fleet) -> None:
    """A 400 from one backend sends the task to another server of the model at once (issue 9:
    rejections are not a black hole); the refusal stays in its history."""
    rejecting, good = fleet.mocks("rejecting", "good")
    rejecting.control(fail_status=400)
    fleet.register_online(rejecting, weight=10)  # wins the first choice
    fleet.register_online(good)
    yard = fleet.yard
    task = yard.wait_status(fleet.submit(max_attempts=3), "FAILED", "FINISHED")

    assert task["status"] == "FINISHED", task
    first, second = task["attempts"]
    assert (first["serverId"], first["errorCode"]) == (rejecting.server_id, "backend_rejected")
    assert "400" in first["error"]
    assert (second["serverId"], second["errorCode"]) == (good.server_id, None)
    assert (yard.server(rejecting.server_id) or {})["status"] == "online"  # not its health


def test_client_error_from_the_only_server_fails_the_task_at_once(fleet: Fleet) -> None:
    [rejecting] = fleet.mocks("alone")
    rejecting.control(fail_status=400)
    fleet.register_online(rejecting)
    task = fleet.yard.wait_status(fleet.submit(max_attempts=3), "FAILED")
    assert task["errorCode"] == "backend_rejected" and "400" in task["error"]
    assert len(task["attempts"]) == 1


def test_deadline_passed_retries_and_late_callback_is_rejected(fleet: Fleet) -> None:
    """An attempt past its deadline is retried; its late report is 409; all late → timeout."""
    slow_a, slow_b = fleet.mocks(
        ("slow-a", "--async", "--delay-ms", "4000"), ("slow-b", "--async", "--delay-ms", "4000")
    )
    fleet.register_online(slow_a, weight=10, **ASYNC)  # takes the first attempt
    fleet.register_online(slow_b, **ASYNC)
    yard = fleet.yard
    task_id = fleet.submit(timeout_s=2, max_attempts=2)

    def second_attempt() -> dict[str, Any] | None:
        task = yard.task(task_id)
        return task if task["status"] == "PROCESSING" and len(task["attempts"]) == 2 else None

    retried = wait_for(second_attempt, timeout=10, what="the second attempt")
    first = retried["attempts"][0]
    assert first["serverId"] == slow_a.server_id
    assert first["errorCode"] == "timeout"
    assert retried["serverId"] == slow_b.server_id

    report = {
        "backend_task_id": "late",
        "data": {"answer": "too late"},
        "metadata": {"server_id": slow_a.server_id, "status": "FINISHED"},
    }
    stale = token(
        ["service"], f"server:{slow_a.server_id}", srv=slow_a.server_id, tid=task_id, att=1
    )
    late = httpx.put(f"{yard.url}/api/task/{task_id}", json=report, headers=bearer(stale))
    assert late.status_code == 409, late.text
    assert "error" in late.json()
    assert settled(yard.task(task_id)) == settled(retried)  # nothing changed

    task = yard.wait_status(task_id, "FAILED", timeout=10)
    assert task["errorCode"] == "timeout"
    assert [a["errorCode"] for a in task["attempts"]] == ["timeout", "timeout"]
    assert task["result"] is None

    after_final = yard.admin.put(f"/api/task/{task_id}", json=report)
    assert after_final.status_code == 409, after_final.text
    # The mocks' own late callbacks (attempts 1 and 2) were refused too.
    for backend in (slow_a, slow_b):
        (record,) = wait_for(partial(callbacks, backend), timeout=10, what="late callback")
        assert record["status"] == 409
    assert yard.task(task_id) == task


# ---- queueing --------------------------------------------------------------------------------


def test_task_waits_without_servers_then_runs_when_one_comes_online(fleet: Fleet) -> None:
    """With no server the task stays WAITING; a server registering later runs it."""
    yard = fleet.yard
    task_id = fleet.submit()
    wait_loop_passes(yard, "dispatcher", 2)  # passes with nothing to dispatch the task to
    task = yard.task(task_id)
    assert task["status"] == "WAITING"
    assert task["attempts"] == [] and task["serverId"] is None

    (backend,) = fleet.mocks("late")
    fleet.register_online(backend)
    task = yard.wait_status(task_id, "FINISHED")
    assert task["serverId"] == backend.server_id


def test_queue_timeout_fails_task_with_no_capacity_deadline(fleet: Fleet) -> None:
    """A task still WAITING at its queue_timeout_s is FAILED with no_capacity_deadline."""
    task = fleet.yard.wait_status(fleet.submit(queue_timeout_s=0.5), "FAILED", timeout=10)
    assert task["errorCode"] == "no_capacity_deadline"
    assert task["error"]
    assert task["attempts"] == []


def test_cancelled_waiting_task_is_never_dispatched(fleet: Fleet) -> None:
    """Cancelling a WAITING task makes it CANCELLED for good: a server arriving skips it."""
    yard = fleet.yard
    task_id = fleet.submit()
    cancelled = yard.admin.post(f"/api/task/{task_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["taskDetails"]["status"] == "CANCELLED"
    assert yard.task(task_id)["status"] == "CANCELLED"
    assert yard.admin.post(f"/api/task/{task_id}/cancel").status_code == 409

    # DELETE cancels too (the seed's newer route), and keeps the task.
    deleted_id = fleet.submit()
    deleted = yard.admin.delete(f"/api/task/{deleted_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["taskDetails"]["status"] == "CANCELLED"
    assert yard.task(deleted_id)["status"] == "CANCELLED"
    assert yard.admin.delete(f"/api/task/{deleted_id}").status_code == 409

    (backend,) = fleet.mocks("arrives")
    fleet.register_online(backend)
    sentinel = fleet.submit()
    yard.wait_status(sentinel, "FINISHED")
    assert task_ids(backend) == [sentinel]
    task = yard.task(task_id)
    assert task["status"] == "CANCELLED"
    assert task["attempts"] == []


def test_higher_priority_runs_first(fleet: Fleet) -> None:
    """On a busy server, a later higher-priority task runs before earlier low-priority ones."""
    (backend,) = fleet.mocks("single")
    backend.control(hang=True)
    fleet.register_online(backend, max_concurrency=1)
    yard = fleet.yard
    blocker = fleet.submit()
    wait_for(lambda: task_ids(backend) == [blocker], what="the blocker to occupy the server")
    low = [fleet.submit(priority=0) for _ in range(2)]
    high = fleet.submit(priority=5)
    assert yard.task(high)["status"] == "WAITING"

    backend.control(hang=False)
    wait_all(yard, [blocker, *low, high], "FINISHED")
    assert task_ids(backend) == [blocker, high, *low]


def test_max_concurrency_is_never_exceeded(fleet: Fleet) -> None:
    """A burst of 30 tasks never has more than max_concurrency running on the server."""
    (backend,) = fleet.mocks(("capped", "--delay-ms", "100"))
    burst = [fleet.submit({"model": fleet.model, "i": i}) for i in range(30)]  # all WAITING
    fleet.register_online(backend, max_concurrency=3)
    yard = fleet.yard
    peak = 0

    def finished() -> bool:
        nonlocal peak
        peak = max(peak, (yard.server(backend.server_id) or {})["inFlight"])
        return all(yard.task(t)["status"] == "FINISHED" for t in burst)

    wait_for(finished, timeout=30, interval=0.1, what="30 tasks finished")
    info = mock_info(backend)
    assert info["max_in_flight"] == 3  # full, and never over
    assert info["completed"] == 30
    assert peak <= 3


def test_models_route_tasks_to_servers_that_serve_them(fleet: Fleet) -> None:
    """A server gets only tasks for its models; a model nobody serves stays WAITING."""
    server_a, server_b = fleet.mocks("a", "b")
    model_a, model_b, model_c = (f"{fleet.model}-{x}" for x in "abc")
    fleet.register_online(server_a, models=[model_a])
    fleet.register_online(server_b, models=[model_b])
    yard = fleet.yard
    for_a = [fleet.submit({"model": model_a}) for _ in range(4)]
    for_b = [fleet.submit({"model": model_b}) for _ in range(4)]
    for_c = fleet.submit({"model": model_c})

    wait_all(yard, [*for_a, *for_b], "FINISHED")
    assert sorted(task_ids(server_a)) == sorted(for_a)
    assert sorted(task_ids(server_b)) == sorted(for_b)
    orphan = yard.task(for_c)
    assert orphan["status"] == "WAITING"
    assert orphan["attempts"] == []
    assert yard.admin.post(f"/api/task/{for_c}/cancel").status_code == 200  # tidy up


# ---- load and responsiveness ---------------------------------------------------------------


def test_hundred_concurrent_creates_all_finish(fleet: Fleet) -> None:
    """100 tasks created at once get 100 distinct ids, and every one finishes exactly once."""
    backends = fleet.mocks(("c1", "--delay-ms", "10"), ("c2", "--delay-ms", "10"))
    for backend in backends:
        fleet.register_online(backend, max_concurrency=8)
    yard = fleet.yard

    async def create_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        headers = bearer(token(["user"], "crowd"))
        async with httpx.AsyncClient(
            base_url=yard.url, headers=headers, limits=limits, timeout=30
        ) as client:
            return await asyncio.gather(
                *(client.post("/api/task", json={"model": fleet.model, "i": i}) for i in range(100))
            )

    responses = asyncio.run(create_all())
    assert [r.status_code for r in responses] == [200] * 100
    ids = [r.json()["taskId"] for r in responses]
    assert len(set(ids)) == 100
    wait_all(yard, ids, "FINISHED")
    for i, task_id in enumerate(ids):
        task = yard.task(task_id)
        assert task["owner"] == "crowd"
        assert task["result"]["data"]["echo"] == {"model": fleet.model, "i": i}
    received = [t for b in backends for t in task_ids(b)]
    assert sorted(received) == sorted(ids)  # each dispatched exactly once


def test_no_client_request_waits_on_a_hanging_backend(fleet: Fleet) -> None:
    """POST /api/task and GET return at once even while the only backend hangs."""
    (backend,) = fleet.mocks("hanging")
    backend.control(hang=True)
    fleet.register_online(backend)
    yard = fleet.yard

    started = time.monotonic()
    task_id = fleet.submit()
    assert time.monotonic() - started < 2
    wait_for(lambda: task_ids(backend) == [task_id], what="the task to reach the backend")
    started = time.monotonic()
    task = yard.task(task_id)
    second = fleet.submit()
    assert time.monotonic() - started < 2
    assert task["status"] == "PROCESSING"

    backend.control(hang=False)
    wait_all(yard, [task_id, second], "FINISHED")
