"""`/metrics` through a real node: protected as documented, and after a scripted run its
counters say what happened; with two nodes, the database's gauges come from one of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import running_cluster
from tests.support import MockBackend, Taskyard, bearer, token, wait_for

METRICS_TOKEN = "scrape-" + "s" * 24


def scrape(
    node: Taskyard, credentials: str = METRICS_TOKEN
) -> dict[tuple[str, tuple[Any, ...]], float]:
    """(sample name, sorted labels) → value."""
    response = httpx.get(node.url + "/metrics", headers=bearer(credentials), timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[tuple[str, tuple[Any, ...]], float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        v for (n, got), v in samples.items() if n == name and set(labels.items()) <= set(got)
    )


def test_metrics_are_protected(taskyard_factory: Callable[..., Taskyard]) -> None:
    node = taskyard_factory(TASKYARD_METRICS_TOKEN=METRICS_TOKEN)
    url = node.url + "/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=bearer("wrong-token")).status_code == 401
    user = httpx.get(url, headers=bearer(token(["user"], "alice")))
    assert user.status_code == 403
    assert httpx.get(url, headers=bearer(token(["service"], "s1"))).status_code == 403
    for good in (METRICS_TOKEN, token(["admin"], "root")):
        assert httpx.get(url, headers=bearer(good)).status_code == 200
    assert METRICS_TOKEN not in node.log.read_text(errors="replace")


def test_counters_match_a_scripted_run(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    node = taskyard_factory(TASKYARD_METRICS_TOKEN=METRICS_TOKEN)
    backend = mock_factory("gpu-1")
    node.register_online(backend, models=["m"])
    done = [node.submit({"model": "m", "i": i}) for i in range(3)]
    for task_id in done:
        node.wait_status(task_id, "FINISHED")
    late = node.submit({"model": "nobody-serves-it"}, queue_timeout_s=0.2)
    node.wait_status(late, "FAILED")
    cancelled = node.submit({"model": "nobody-serves-it"})
    assert node.admin.post(f"/api/task/{cancelled}/cancel").status_code == 200
    waiting = node.submit({"model": "nobody-serves-it"})
    assert node.task(waiting)["status"] == "WAITING"

    samples = scrape(node)
    node_id = next(
        dict(labels)["node"] for (n, labels) in samples if n == "taskyard_tasks_created_total"
    )
    assert value(samples, "taskyard_tasks_created_total", node=node_id) == 6
    assert value(samples, "taskyard_tasks_created_total", model="m") == 3
    assert value(samples, "taskyard_tasks_finished_total", model="m") == 3
    assert value(samples, "taskyard_tasks_failed_total", error_code="no_capacity_deadline") == 1
    assert value(samples, "taskyard_tasks_cancelled_total") == 1
    assert value(samples, "taskyard_attempts_total", server="gpu-1", outcome="ok") == 3
    assert value(samples, "taskyard_backend_latency_seconds_count", server="gpu-1") == 3
    assert value(samples, "taskyard_queue_wait_seconds_count", model="m") == 3
    assert value(samples, "taskyard_health_checks_total", server="gpu-1", result="pass") >= 1
    for loop in ("dispatcher", "health monitor", "chores"):
        assert value(samples, "taskyard_loop_last_success_timestamp_seconds", loop=loop) > 0
    # The database's gauges: this node holds the chores lease, so it exports them.
    assert value(samples, "taskyard_cluster_gauges_exporter", node=node_id) == 1
    assert value(samples, "taskyard_tasks", status="FINISHED") == 3
    assert value(samples, "taskyard_tasks", status="WAITING") == 1
    assert value(samples, "taskyard_queue_depth", model="nobody-serves-it", status="WAITING") == 1
    assert value(samples, "taskyard_server_capacity", server="gpu-1") == 4
    assert value(samples, "taskyard_server_in_flight", server="gpu-1") == 0
    assert value(samples, "taskyard_server_state", server="gpu-1", state="online") == 1
    assert value(samples, "taskyard_server_state", server="gpu-1", state="offline") == 0


def test_two_nodes_export_the_database_gauges_once(
    postgres_database_url: str, tmp_path: Path
) -> None:
    """Counters are per node; the database's gauges come from the chores holder alone, so
    `sum()` over the nodes is the true count."""
    with running_cluster(
        postgres_database_url, tmp_path, size=2, metrics_token=METRICS_TOKEN
    ) as cluster:
        cluster.nodes[0].submit({"model": "nobody-serves-it"})

        def exporters() -> list[float] | None:
            found = [value(scrape(n), "taskyard_cluster_gauges_exporter") for n in cluster.nodes]
            return found if sorted(found) == [0, 1] else None

        wait_for(exporters, what="one node exporting the database's gauges")
        waiting = [value(scrape(n), "taskyard_tasks", status="WAITING") for n in cluster.nodes]
        assert sorted(waiting) == [0, 1]
        created = [value(scrape(n), "taskyard_tasks_created_total") for n in cluster.nodes]
        assert sorted(created) == [0, 1]  # counted by the node that stored it
