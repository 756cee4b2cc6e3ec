"""Manual retry, one task and in bulk (issue 9, item 3): FAILED or CANCELLED back to WAITING
with the same id and its history, 409 from other states, bulk by the search filters. In-process
(`tests.inprocess`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.inprocess import InProcessFleet, InProcessYard


@pytest.fixture(scope="module")
def yard() -> Iterator[InProcessYard]:
    with InProcessYard() as node:
        yield node


@pytest.fixture
def fleet(yard: InProcessYard) -> Iterator[InProcessFleet]:
    f = InProcessFleet(yard)
    yield f
    f.close()


def test_a_failed_task_is_retried_with_its_id_and_history(
    yard: InProcessYard, fleet: InProcessFleet
) -> None:
    [backend] = fleet.mocks("flaky")
    backend.fail_status = 400  # refused: fails at once (the only server of the model)
    fleet.register_online(backend)
    alice = yard.client(["user"], "alice")
    created = alice.post("/api/task", json={"model": fleet.model, "x": 1})
    task_id = created.json()["taskId"]
    failed = yard.wait_status(task_id, "FAILED")
    assert failed["errorCode"] == "backend_rejected"
    backend.fail_status = None
    retried = alice.post(f"/api/task/{task_id}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["taskId"] == task_id
    assert retried.json()["taskDetails"]["status"] == "WAITING"
    done = yard.wait_status(task_id, "FINISHED")
    assert done["id"] == task_id
    assert [a["errorCode"] for a in done["attempts"]] == ["backend_rejected", None]
    assert done["result"]["data"]["echo"]["x"] == 1
    # Now FINISHED: a retry is a conflict, and changes nothing.
    again = alice.post(f"/api/task/{task_id}/retry")
    assert again.status_code == 409 and "FINISHED" in again.json()["error"]
    assert yard.task(task_id)["status"] == "FINISHED"


def test_a_cancelled_task_is_retried_and_others_may_not(
    yard: InProcessYard, fleet: InProcessFleet
) -> None:
    alice = yard.client(["user"], "alice")
    task_id = alice.post("/api/task", json={"model": fleet.model}).json()["taskId"]
    waiting = alice.post(f"/api/task/{task_id}/retry")
    assert waiting.status_code == 409 and "WAITING" in waiting.json()["error"]
    assert alice.post(f"/api/task/{task_id}/cancel").status_code == 200
    bob = yard.client(["user"], "bob")
    assert bob.post(f"/api/task/{task_id}/retry").status_code == 404  # not his
    retried = alice.post(f"/api/task/{task_id}/retry")
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert (body["taskId"], body["taskDetails"]["status"]) == (task_id, "WAITING")
    [backend] = fleet.mocks("late")
    fleet.register_online(backend)
    assert yard.wait_status(task_id, "FINISHED")["id"] == task_id
    assert yard.client(["user"], "alice").post("/api/task/nope/retry").status_code == 404


def test_bulk_retry_and_cancel_by_filter(yard: InProcessYard, fleet: InProcessFleet) -> None:
    [backend] = fleet.mocks("bulk")
    backend.fail_status = 400
    fleet.register_online(backend, max_concurrency=8)
    failed = [fleet.submit() for _ in range(5)]
    for task_id in failed:
        yard.wait_status(task_id, "FAILED")
    other = fleet.submit({"model": f"{fleet.model}-unserved"})  # WAITING, another model
    user = yard.client(["user"], "alice")
    assert user.post("/api/tasks/retry", params={"model": fleet.model}).status_code == 403
    bad = yard.admin.post("/api/tasks/retry", params={"limit": 0})
    assert bad.status_code == 400
    backend.fail_status = None
    params: dict[str, str | int] = {
        "model": fleet.model,
        "error_code": "backend_rejected",
        "limit": 3,
    }
    first = yard.admin.post("/api/tasks/retry", params=params).json()
    assert (first["count"], first["more"]) == (3, True)
    second = yard.admin.post("/api/tasks/retry", params=params).json()
    assert (second["count"], second["more"]) == (2, False)
    assert sorted(first["changed"] + second["changed"]) == sorted(failed)
    for task_id in failed:
        assert yard.wait_status(task_id, "FINISHED")["id"] == task_id
    # Cancel in bulk: only open tasks of the filter; the finished ones are left alone.
    cancel = yard.admin.post("/api/tasks/cancel", params={"model": f"{fleet.model}-unserved"})
    assert cancel.json() == {"changed": [other], "count": 1, "more": False}
    assert yard.task(other)["status"] == "CANCELLED"
    assert {yard.task(t)["status"] for t in failed} == {"FINISHED"}
    none_left = yard.admin.post("/api/tasks/cancel", params={"model": fleet.model})
    assert none_left.json()["count"] == 0
