"""Maintenance and drain (issue 9, item 5): a server in maintenance gets no new tasks, its
running ones finish (`draining`, then `maintenance`), it survives restarts, is never removed
while offline, and returns to rotation after a passing check; the same across two nodes.
`autoRemove: false` keeps a static fleet's registration while it is offline."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.cluster import running_cluster, wait_final
from tests.support import MockBackend, Taskyard, mock_info, wait_for

REMOVAL_S = 1.0
ENV = {"offline_removal_s": REMOVAL_S}


def maintenance(node: Taskyard, server_id: str, enabled: bool, reason: str | None = None) -> Any:
    response = node.admin.put(
        f"/api/servers/{server_id}/maintenance", json={"enabled": enabled, "reason": reason}
    )
    assert response.status_code == 200, response.text
    return response.json()


def state(node: Taskyard, server_id: str) -> str | None:
    return (node.server(server_id) or {}).get("state")


def offline_for_s(server: dict[str, Any]) -> float:
    since = server["health"]["offlineSince"]
    if since is None:
        return 0.0
    return datetime.now(UTC).timestamp() - datetime.fromisoformat(since).timestamp()


def test_drain_restart_never_removed_and_back(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    node = taskyard_factory(**ENV)
    backend = mock_factory("gpu", "--delay-ms", "1500")
    node.register_online(backend, models=["m"], max_concurrency=4)
    running = [node.submit({"model": "m", "n": i}) for i in range(3)]
    wait_for(lambda: mock_info(backend)["in_flight"] == 3, what="3 running")

    server = maintenance(node, backend.server_id, True, "driver upgrade")
    assert server["state"] == "draining" and server["maintenance"]["reason"] == "driver upgrade"
    queued = [node.submit({"model": "m", "n": f"q{i}"}) for i in range(2)]
    waiting = node.admin.get(f"/api/task/{queued[0]}").json()["taskDetails"]["waiting"]
    assert waiting["reason"] == "maintenance" and "driver upgrade" in waiting["detail"]
    for task_id in running:  # the running ones finish...
        node.wait_status(task_id, "FINISHED")
    wait_for(lambda: state(node, backend.server_id) == "maintenance", what="drained")
    assert len(backend.received()) == 3  # ...and nothing new arrived
    assert {node.task(t)["status"] for t in queued} == {"WAITING"}

    by_state = node.admin.get("/api/stats").json()["servers"]["byState"]
    assert (by_state["maintenance"], by_state["online"]) == (1, 0)

    node.stop()
    node.start()
    assert state(node, backend.server_id) == "maintenance"

    # Offline far past the removal time: a server in maintenance is kept.
    backend.control(unhealthy=True)
    wait_for(
        lambda: (
            offline_for_s(node.server(backend.server_id) or {}) > 3 * REMOVAL_S
            and (node.server(backend.server_id) or {})["health"]["consecutiveFailures"] >= 3
        ),
        timeout=20,
        what="offline for three removal times, checked all along",
    )
    assert state(node, backend.server_id) == "maintenance"

    backend.control(unhealthy=False)
    back = maintenance(node, backend.server_id, False)
    assert back["maintenance"]["enabled"] is False
    for task_id in queued:
        node.wait_status(task_id, "FINISHED")
    assert state(node, backend.server_id) == "online"
    assert len(backend.received()) == 5


def test_auto_remove_false_keeps_an_offline_server(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    node = taskyard_factory(**ENV)
    static, ephemeral = mock_factory("static"), mock_factory("ephemeral")
    node.register_online(static, models=["m"], autoRemove=False)
    node.register_online(ephemeral, models=["m"])
    assert (node.server(static.server_id) or {})["autoRemove"] is False
    static.control(unhealthy=True)
    ephemeral.control(unhealthy=True)
    # The removal runs (the other server goes)...
    wait_for(lambda: node.server(ephemeral.server_id) is None, timeout=20, what="removed")
    # ...and twice past the removal time the static one is still registered, offline.
    wait_for(
        lambda: offline_for_s(node.server(static.server_id) or {}) > 2 * REMOVAL_S,
        timeout=20,
        what="the static server offline for twice the removal time",
    )
    assert (node.server(static.server_id) or {})["state"] == "offline"


def test_maintenance_is_shared_by_two_nodes(
    postgres_database_url: str, tmp_path: Path, mock_factory: Callable[..., MockBackend]
) -> None:
    backend = mock_factory("shared", "--delay-ms", "1000")
    with running_cluster(postgres_database_url, tmp_path, size=2, **ENV) as cluster:
        first, second = cluster.nodes
        cluster.wait_all_alive()
        first.register_online(backend, models=["m"], max_concurrency=4)
        running = [second.submit({"model": "m", "n": i}) for i in range(2)]
        wait_for(lambda: mock_info(backend)["in_flight"] == 2, what="2 running")
        assert maintenance(second, backend.server_id, True, "rack move")["state"] == "draining"
        queued = [node.submit({"model": "m", "q": i}) for i, node in enumerate(cluster.nodes)]
        for task_id in running:
            assert wait_final(cluster.nodes, task_id)["status"] == "FINISHED"
        for node in cluster.nodes:

            def drained(n: Taskyard = node) -> bool:
                return state(n, backend.server_id) == "maintenance"

            wait_for(drained, what="drained")
        assert len(backend.received()) == 2
        assert {first.task(t)["status"] for t in queued} == {"WAITING"}
        maintenance(first, backend.server_id, False)
        for task_id in queued:
            assert wait_final(cluster.nodes, task_id)["status"] == "FINISHED"
        assert len(backend.received()) == 4
