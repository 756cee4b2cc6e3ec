"""`taskyard serve --workers N` (issue 11, item 4), on real processes and both databases: one
port, N worker processes, each a node of its own on the one database, with the cluster's
guarantees between them: `max_concurrency` held across workers, a worker killed with kill -9
loses nothing (the others recover its attempts; the supervisor starts it again), and one
SIGTERM to the supervisor stops every worker and exits 0. A long poll answers at once when
another worker finishes its task (PostgreSQL: LISTEN/NOTIFY; SQLite: `storage/peerbus.py`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import MockBackend, Taskyard, mock_info, wait_for

WORKERS_ENV = {"workers": 2, "node_timeout_s": 2, "chores_interval_s": 0.3}


def sqlite_only(database_url: str) -> None:
    """For what does not depend on the database: run once (PostgreSQL's nodes talk through
    LISTEN/NOTIFY, tested in test_cluster.py)."""
    if not database_url.startswith("sqlite"):
        pytest.skip("the same on PostgreSQL; run on SQLite only")


def worker_pids(node: Taskyard) -> list[int]:
    assert node.popen is not None
    pid = node.popen.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def worker_nodes(node: Taskyard) -> set[str]:
    with node.client(["admin"], "root") as client:  # a new connection: workers come and go
        return {n["id"] for n in client.get("/api/nodes").json()["nodes"]}


def started(node: Taskyard, count: int) -> set[str]:
    """Wait until `count` workers have registered as nodes; their ids."""

    def all_there() -> set[str] | None:
        ids = worker_nodes(node)
        return ids if len(ids) == count else None

    found: set[str] = wait_for(all_there, timeout=60, what=f"{count} worker nodes")
    return found


def test_workers_share_one_port_and_each_is_a_node(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    node = taskyard_factory(**WORKERS_ENV)
    ids = started(node, 2)
    assert {i.rsplit("-", 1)[1] for i in ids} == {"w0", "w1"}
    assert len(set(worker_pids(node))) == 2
    backend = mock_factory("busy", "--delay-ms", "150")
    node.register_online(backend, models=["m"], max_concurrency=3)
    # Many connections (new ones spread over the workers by the kernel), racing claims.
    with ThreadPoolExecutor(16) as pool:
        tasks = list(pool.map(lambda i: submit_fresh(node, i), range(48)))
        finals = list(pool.map(lambda t: wait_fresh(node, t), tasks))
    assert {task["status"] for task in finals} == {"FINISHED"}
    assert mock_info(backend)["max_in_flight"] <= 3  # held across both workers
    sent_by = {task["attempts"][-1]["nodeId"] for task in finals}
    assert sent_by <= ids
    received = [r["task_id"] for r in backend.received()]
    assert sorted(received) == sorted(tasks)  # each sent once: no double claim


def submit_fresh(node: Taskyard, i: int) -> str:
    with node.client(["admin"], "root") as client:  # a new connection each time
        response = client.post("/api/task", json={"model": "m", "i": i})
        assert response.status_code == 200, response.text
        task_id: str = response.json()["taskId"]
        return task_id


def wait_fresh(node: Taskyard, task_id: str) -> dict[str, Any]:
    with node.client(["admin"], "root") as client:
        response = client.get(f"/api/task/{task_id}", params={"wait": 20}, timeout=30)
        assert response.status_code == 200, response.text
        details: dict[str, Any] = response.json()["taskDetails"]
        return details


def test_a_long_poll_on_one_worker_answers_when_another_finishes_the_task(
    taskyard_factory: Callable[..., Taskyard],
    database_url: str,
) -> None:
    """A long poll waits on one worker while the task is cancelled through another (each
    client keeps its connection, so `/ready` on it says which worker it talks to): the poll
    answers within a moment, not after its fallback re-read (seconds)."""
    sqlite_only(database_url)
    node = taskyard_factory(**WORKERS_ENV)
    started(node, 2)
    crossed = 0
    for attempt in range(30):
        with node.client(["admin"], "root") as poller, node.client(["admin"], "root") as canceller:
            if worker_of(poller) == worker_of(canceller):
                continue  # the kernel put both on one worker: try new connections
            task_id = node.submit({"model": "nobody", "n": attempt})
            answers: list[float] = []
            thread = threading.Thread(target=poll_into, args=(poller, task_id, answers))
            thread.start()
            wait_for(lambda: long_polls_open(node) >= 1, what="the poll open")
            assert canceller.post(f"/api/task/{task_id}/cancel").status_code == 200
            cancelled = time.monotonic()
            thread.join(timeout=20)
            assert answers and answers[0] - cancelled < 1.0, answers
            crossed += 1
            if crossed == 3:
                return
    raise AssertionError(f"only {crossed} poll/cancel pairs landed on different workers")


def worker_of(client: httpx.Client) -> str:
    node_id: str = client.get("/ready").json()["node"]
    return node_id


def long_polls_open(node: Taskyard) -> int:
    """Open long polls summed over the workers' /metrics (each scrape reaches one worker)."""
    total = 0
    for _ in range(6):
        with node.client(["admin"], "root") as client:
            text = client.get("/metrics").text
        found = re.search(r"^taskyard_long_polls_open\{[^}]*\} (\d+)", text, re.MULTILINE)
        total = max(total, int(found.group(1)) if found else 0)
    return total


def poll_into(client: httpx.Client, task_id: str, answers: list[float]) -> None:
    response = client.get(f"/api/task/{task_id}", params={"wait": 20}, timeout=30)
    assert response.status_code == 200, response.text
    answers.append(time.monotonic())


def test_kill9_of_a_worker_loses_nothing_and_it_is_started_again(
    taskyard_factory: Callable[..., Taskyard], mock_factory: Callable[..., MockBackend]
) -> None:
    node = taskyard_factory(**WORKERS_ENV)
    first = started(node, 2)
    backend = mock_factory("slow", "--delay-ms", "1500")
    node.register_online(backend, models=["m"], max_concurrency=8, endpoints=backend.endpoints())
    with ThreadPoolExecutor(8) as pool:
        tasks = list(pool.map(lambda i: submit_fresh(node, i), range(24)))
    wait_for(lambda: mock_info(backend)["in_flight"] >= 4, what="sends in flight")
    victim = worker_pids(node)[0]
    os.kill(victim, signal.SIGKILL)
    # Fresh connections from here on: a kept one may have been the victim's.
    for task_id in tasks:
        wait_for(partial(finished, node, task_id), timeout=60, what=f"{task_id} FINISHED")
    wait_for(
        lambda: len(worker_pids(node)) == 2 and victim not in worker_pids(node),
        what="the worker started again",
    )
    assert any(i.endswith("r1") for i in started_ids(node, first))


def finished(node: Taskyard, task_id: str) -> bool:
    return bool(wait_fresh(node, task_id)["status"] == "FINISHED")


def started_ids(node: Taskyard, first: set[str]) -> set[str]:
    """Wait until a node not among `first` has registered; every node id then."""

    def newcomer() -> set[str] | None:
        ids = worker_nodes(node)
        return ids if ids - first else None

    found: set[str] = wait_for(newcomer, timeout=30, what="a new worker node")
    return found


def test_one_sigterm_stops_every_worker_and_exits_0(
    taskyard_factory: Callable[..., Taskyard],
    database_url: str,
) -> None:
    sqlite_only(database_url)
    node = taskyard_factory(**WORKERS_ENV)
    started(node, 2)
    pids = worker_pids(node)
    waiting = [node.submit({"model": "nobody", "n": i}) for i in range(5)]
    assert node.popen is not None
    node.popen.send_signal(signal.SIGTERM)
    try:
        code = node.popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 30 s after SIGTERM:\n{node.log_tail()}")
    assert code == 0, node.log_tail()
    assert not [pid for pid in pids if alive(pid)]  # the workers stopped before it
    with httpx.Client(timeout=2) as probe, pytest.raises(httpx.TransportError):
        probe.get(node.url + "/health")  # nothing answers on the port any more
    node.start()
    assert {node.task(i)["status"] for i in waiting} == {"WAITING"}


def test_workers_stop_when_their_supervisor_is_killed(
    taskyard_factory: Callable[..., Taskyard],
    database_url: str,
) -> None:
    """kill -9 of the supervisor: the kernel sends each worker SIGTERM (no orphan keeps the
    port); a new start finds every accepted task."""
    sqlite_only(database_url)
    node = taskyard_factory(**WORKERS_ENV)
    started(node, 2)
    pids = worker_pids(node)
    waiting = [submit_fresh(node, i) for i in range(5)]
    node.kill9()
    wait_for(lambda: not [pid for pid in pids if alive(pid)], timeout=30, what="the workers gone")
    node.start()
    assert {node.task(i)["status"] for i in waiting} == {"WAITING"}


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status
