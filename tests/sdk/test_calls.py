"""Every SDK call against a real coordinator and mock backend, through `Client` and
`AsyncClient` alike (each test runs once with each)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from taskyard.client import (
    BulkResult,
    Conflict,
    NotFound,
    Registered,
    Server,
    ServerState,
    Task,
    TaskStatus,
    TaskSummary,
    WaitTimeout,
)
from tests.sdk.conftest import AnyClient, collect, run
from tests.support import MockBackend, Taskyard, wait_for

MakeClient = Callable[..., AnyClient]


def _unserved() -> str:
    """A model no server serves: its tasks wait."""
    return f"unserved-{uuid.uuid4().hex[:8]}"


async def test_submit_get_and_wait(
    make_client: MakeClient, backend: MockBackend, model: str
) -> None:
    """submit sends the request fields and every option; get reads the task; wait returns
    it FINISHED with the backend's result."""
    client = make_client()
    task: Task = await run(
        client.submit(
            model,
            {"video_url": "https://example.com/in.mp4", "n": 3},
            priority=7,
            timeout_s=30,
            max_attempts=2,
            queue_timeout_s=60,
        )
    )
    assert task.status in (TaskStatus.WAITING, TaskStatus.PROCESSING, TaskStatus.FINISHED)
    assert task.model == model and task.priority == 7 and task.owner == "root"
    assert task.request == {"model": model, "video_url": "https://example.com/in.mp4", "n": 3}
    assert task.warnings == []
    done: Task = await run(client.wait(task.id, timeout_s=30))
    assert done.status == TaskStatus.FINISHED and done.is_final
    assert done.result["data"]["echo"]["n"] == 3
    assert done.attempts[0].server_id == backend.server_id
    again: Task = await run(client.get(task.id))
    assert again.to_json()["status"] == "FINISHED"  # the wire names
    assert again.server_id == backend.server_id and again.finished_at is not None


async def test_run_creates_and_waits_in_one_call(
    make_client: MakeClient, backend: MockBackend, model: str
) -> None:
    """run: the create itself waits for the result (`POST /api/task?wait=`); a task that is
    not final in time raises WaitTimeout with the task as last seen."""
    client = make_client()
    done: Task = await run(client.run(model, {"n": 4}, wait_s=30, priority=2))
    assert done.status == TaskStatus.FINISHED and done.priority == 2
    assert done.result["data"]["echo"]["n"] == 4
    assert done.attempts[0].server_id == backend.server_id
    with pytest.raises(WaitTimeout) as caught:
        await run(client.run(_unserved(), wait_s=0.3))
    assert caught.value.task.status == TaskStatus.WAITING
    assert caught.value.task.warnings  # the create's answer: no server serves the model


async def test_submit_many_stores_a_batch_in_order_and_each_finishes(
    make_client: MakeClient, backend: MockBackend, model: str
) -> None:
    """submit_many sends every request with the shared options in one call; the answers
    come back in order, and each task runs as a single submit's would."""
    client = make_client()
    unserved = _unserved()
    requests = [{"model": model, "n": n} for n in range(5)] + [{"model": unserved}]
    submitted = await run(client.submit_many(requests, priority=3, max_attempts=2))
    assert [s.status for s in submitted] == [TaskStatus.WAITING] * 6
    assert submitted[0].warnings == [] and unserved in submitted[5].warnings[0]
    for n, one in enumerate(submitted[:5]):
        done: Task = await run(client.wait(one.task_id, timeout_s=30))
        assert done.status == TaskStatus.FINISHED and done.priority == 3
        assert done.result["data"]["echo"]["n"] == n
    with pytest.raises(ValueError, match="1 to 1000"):
        await run(client.submit_many([]))
    with pytest.raises(ValueError, match="request 1 names no model"):
        await run(client.submit_many([{"model": model}, {"n": 1}]))


async def test_submit_warns_when_no_server_serves_the_model(make_client: MakeClient) -> None:
    """The API's create warnings reach `task.warnings`; a waiting task says why it waits."""
    client = make_client()
    task: Task = await run(client.submit(_unserved()))
    assert task.warnings, task
    read: Task = await run(client.get(task.id))
    assert read.status == TaskStatus.WAITING
    assert read.waiting is not None and read.waiting.reason == "no_server_for_model"
    await run(client.cancel(task.id))


async def test_search_follows_cursors(make_client: MakeClient) -> None:
    """search yields every matching task newest first across pages; search_page gives one
    page and its cursor; filters narrow it."""
    client = make_client()
    model = _unserved()
    ids = [(await run(client.submit(model, {"i": i}))).id for i in range(5)]
    found: list[TaskSummary] = await collect(client.search(model=model, page_size=2))
    assert [t.id for t in found] == ids[::-1]
    page = await run(client.search_page(model=model, limit=2))
    assert [t.id for t in page.tasks] == ids[:2:-1] and page.next_cursor
    rest = await run(client.search_page(model=model, limit=10, cursor=page.next_cursor))
    assert [t.id for t in rest.tasks] == ids[2::-1] and rest.next_cursor is None
    await run(client.cancel(ids[0]))
    cancelled = await collect(client.search(model=model, status=["CANCELLED"]))
    assert [t.id for t in cancelled] == [ids[0]]
    none = await collect(
        client.search(model=model, created_before=datetime(2000, 1, 1, tzinfo=UTC))
    )
    assert none == []
    mine = await collect(client.search(model=model, owner="root", status="WAITING"))
    assert len(mine) == 4


async def test_report_a_result_as_admin(make_client: MakeClient) -> None:
    """report PUTs a TaskResult; an admin may report on any task."""
    client = make_client()
    task: Task = await run(client.submit(_unserved()))
    result = {"backend_task_id": "b-1", "data": {"ok": True}, "metadata": {"status": "FINISHED"}}
    done: Task = await run(client.report(task.id, result))
    assert done.status == TaskStatus.FINISHED and done.result["data"] == {"ok": True}


async def test_cancel_then_retry(make_client: MakeClient, backend: MockBackend, model: str) -> None:
    """cancel makes a waiting task CANCELLED; retry puts it back to WAITING under the same id;
    a FINISHED task can be neither cancelled nor retried (409)."""
    client = make_client()
    task: Task = await run(client.submit(_unserved()))
    cancelled: Task = await run(client.cancel(task.id))
    assert cancelled.status == TaskStatus.CANCELLED
    retried: Task = await run(client.retry(task.id))
    assert retried.id == task.id and retried.status == TaskStatus.WAITING
    await run(client.cancel(task.id))
    finished: Task = await run(client.wait((await run(client.submit(model))).id, timeout_s=30))
    with pytest.raises(Conflict):
        await run(client.retry(finished.id))
    with pytest.raises(Conflict):
        await run(client.cancel(finished.id))


async def test_bulk_cancel_and_retry(make_client: MakeClient) -> None:
    """cancel_many and retry_many change the matching tasks up to the limit and say whether
    more remain."""
    client = make_client()
    model = _unserved()
    ids = {(await run(client.submit(model))).id for _ in range(3)}
    first: BulkResult = await run(client.cancel_many(model=model, limit=2))
    assert first.count == 2 and len(first.changed) == 2 and first.more
    second: BulkResult = await run(client.cancel_many(model=model, status="WAITING"))
    assert second.count == 1 and not second.more
    assert set(first.changed) | set(second.changed) == ids
    retried: BulkResult = await run(client.retry_many(model=model, status=["CANCELLED"]))
    assert set(retried.changed) == ids and retried.count == 3 and not retried.more
    waiting = await collect(client.search(model=model, status="WAITING"))
    assert {t.id for t in waiting} == ids
    await run(client.cancel_many(model=model))


async def test_server_management(
    make_client: MakeClient, backend: MockBackend, node: Taskyard
) -> None:
    """register_server, server, servers, heartbeat, set_maintenance, cleanup_servers and
    delete_server, with the registration's every field."""
    client = make_client()
    server_id = f"sdk-server-{uuid.uuid4().hex[:8]}"
    registered: Registered = await run(
        client.register_server(
            server_id,
            backend.url + "/predict",
            health=backend.url + "/health",
            cancel=backend.url + "/cancel",
            name="SDK server",
            provider="tests",
            is_async=False,
            callback=False,
            max_concurrency=3,
            models=["sdk-none"],
            weight=2.5,
            auto_remove=False,
            api_key="sekrit-key",
            extra={"region": "lab"},
        )
    )
    assert registered.id == server_id and registered.success and registered.token
    server: Server = await run(client.server(server_id))
    assert server.name == "SDK server" and server.provider == "tests"
    assert server.max_concurrency == 3 and server.models == ["sdk-none"] and server.weight == 2.5
    assert server.endpoints.health == backend.url + "/health"
    assert server.endpoints.cancel == backend.url + "/cancel"
    assert server.auto_remove is False
    assert "sekrit-key" not in str(server.to_json())
    # The list has the registration's extra fields (GET /api/servers/{id} leaves them out):
    # unknown to the client, they are kept.
    listed = {s.id: s for s in await run(client.servers())}
    assert (listed[server_id].model_extra or {})["region"] == "lab"
    assert listed[server_id].to_json()["region"] == "lab"
    beat = await run(client.heartbeat(server_id, {"queue": 1}))
    assert beat.id == server_id and beat.success and beat.last_heartbeat
    held: Server = await run(client.set_maintenance(server_id, True, reason="disk swap"))
    assert held.state == ServerState.MAINTENANCE
    assert held.maintenance is not None and held.maintenance.enabled
    assert held.maintenance.reason == "disk swap"
    back: Server = await run(client.set_maintenance(server_id, False))
    assert back.maintenance is not None and not back.maintenance.enabled
    assert back.state != ServerState.MAINTENANCE
    assert await run(client.cleanup_servers(max_age_mins=60)) == []
    await run(client.delete_server(server_id))
    with pytest.raises(NotFound):
        await run(client.server(server_id))
    wait_for(lambda: node.server(server_id) is None, what="server gone")


async def test_stats_nodes_and_probes(
    make_client: MakeClient, backend: MockBackend, model: str
) -> None:
    """stats, hourly_stats, server_stats, nodes, health and ready read their routes."""
    client = make_client()
    await run(client.wait((await run(client.submit(model))).id, timeout_s=30))
    stats = await run(client.stats())
    assert stats.tasks.by_status["FINISHED"] >= 1
    assert stats.throughput.h1.finished >= 1 and len(stats.throughput.per_minute) == 60
    assert stats.servers.total >= 1
    assert backend.server_id in {s.id for s in stats.server_stats}
    hourly = await run(client.hourly_stats())
    assert len(hourly.hours) == 24
    one = await run(client.server_stats(backend.server_id, window_min=30))
    assert one.server_id == backend.server_id and one.window_s == 1800 and one.attempts >= 1
    assert one.recent_attempts
    nodes = await run(client.nodes())
    assert len(nodes) == 1 and nodes[0].alive
    anonymous = make_client(None)
    health = await run(anonymous.health())
    assert health.status == "healthy" and health.version
    ready = await run(anonymous.ready())
    assert ready.ready and ready.database == "ok" and ready.node == nodes[0].id
