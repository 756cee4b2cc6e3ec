"""Helpers for multi-node tests: several taskyard nodes on one PostgreSQL database."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.support import MockBackend, Taskyard, wait_for

# A node unseen this long is dead: short, so failover happens within a test's patience.
NODE_TIMEOUT_S = 2.0

T = TypeVar("T")
R = TypeVar("R")


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`fn` over `items` in threads (starting processes, registering servers); keeps order."""
    todo = list(items)
    with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
        return list(pool.map(fn, todo))


def in_background(fn: Callable[[], R]) -> Future[R]:
    """Run `fn` in a thread of its own (e.g. start mocks while the nodes start)."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)  # the thread ends once `fn` returns
    return future


class Cluster:
    """`size` taskyard nodes named node-1..node-N sharing `database_url`.

    Every node sends callback URLs to node-1 (TASKYARD_PUBLIC_URL), standing in for the load
    balancer of a real deployment: tests that kill a node never kill node-1.
    """

    def __init__(
        self, *, database_url: str, workdir: Path, size: int = 3, env: dict[str, str] | None = None
    ) -> None:
        self.nodes: list[Taskyard] = []
        for index in range(size):
            node_env = {
                "TASKYARD_NODE_ID": f"node-{index + 1}",
                "TASKYARD_NODE_TIMEOUT_S": str(NODE_TIMEOUT_S),
                **(env or {}),
            }
            if self.nodes:
                node_env["TASKYARD_PUBLIC_URL"] = self.nodes[0].url
            self.nodes.append(Taskyard(database_url=database_url, workdir=workdir, env=node_env))

    @staticmethod
    def node_id(node: Taskyard) -> str:
        return node.env["TASKYARD_NODE_ID"]

    @property
    def ids(self) -> list[str]:
        return [self.node_id(node) for node in self.nodes]

    def start(self) -> Cluster:
        # All at once, as a deployment would: they migrate the fresh database concurrently.
        parallel(lambda node: node.start(timeout=60), self.nodes)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
            node.admin.close()

    def log_tails(self, chars: int = 2000) -> str:
        """The end of each node's log, for an assertion message."""
        return "\n".join(
            f"--- {self.node_id(node)} ---\n{node.log_tail(chars)}" for node in self.nodes
        )

    def wait_all_alive(self, timeout: float = 20.0) -> None:
        """Until every node's GET /api/nodes lists all running nodes alive."""
        expected = {self.node_id(node) for node in self.nodes if node.running}

        def agreed() -> bool:
            return all(alive_ids(node) >= expected for node in self.nodes if node.running)

        wait_for(agreed, timeout=timeout, interval=0.2, what=f"nodes {sorted(expected)} alive")


@contextlib.contextmanager
def running_cluster(
    database_url: str, workdir: Path, size: int = 3, **env: Any
) -> Iterator[Cluster]:
    """A started cluster for a `with` block; `env` keys as `task_timeout_s=4`."""
    cluster = Cluster(
        database_url=database_url,
        workdir=workdir,
        size=size,
        env={f"TASKYARD_{k.upper()}": str(v) for k, v in env.items()},
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# ---- reading a node's and a mock's view --------------------------------------------------


def nodes_of(node: Taskyard) -> list[dict[str, Any]]:
    """GET /api/nodes on `node`."""
    response = node.admin.get("/api/nodes")
    assert response.status_code == 200, response.text
    nodes: list[dict[str, Any]] = response.json()["nodes"]
    return nodes


def alive_ids(node: Taskyard) -> set[str]:
    return {n["id"] for n in nodes_of(node) if n["alive"]}


def lease_holders(node: Taskyard, lease: str = "chores") -> list[str]:
    """Ids of the nodes that `node` says hold `lease` (a correct cluster has one)."""
    return [n["id"] for n in nodes_of(node) if lease in n["leases"]]


def servers_of(node: Taskyard) -> dict[str, dict[str, Any]]:
    """GET /api/servers on `node`, by server id."""
    response = node.admin.get("/api/servers")
    assert response.status_code == 200, response.text
    return {s["id"]: s for s in response.json()["servers"]}


def health_checks(backend: MockBackend) -> list[dict[str, Any]]:
    """The health GETs `backend` received: node (X-Taskyard-Node), at (epoch s), path."""
    response = httpx.get(backend.url + "/health-checks", timeout=5)
    assert response.status_code == 200, response.text
    checks: list[dict[str, Any]] = response.json()["checks"]
    return checks


def callbacks(backend: MockBackend) -> list[dict[str, Any]]:
    """The outcome of every result callback `backend` delivered."""
    response = httpx.get(backend.url + "/callbacks", timeout=5)
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()["callbacks"]
    return records


def stored_result(backend: MockBackend, task_id: str) -> dict[str, Any] | None:
    """The TaskResult `backend` last produced for `task_id` (GET /result/{id})."""
    response = httpx.get(f"{backend.url}/result/{task_id}", timeout=5)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def wait_final(nodes: Sequence[Taskyard], task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Long-poll `task_id` until it is final, asking the given nodes in turn."""
    final = {"FINISHED", "FAILED", "CANCELLED"}
    turn = [0]

    def read() -> dict[str, Any] | None:
        node = nodes[turn[0] % len(nodes)]
        turn[0] += 1
        response = node.admin.get(f"/api/task/{task_id}", params={"wait": 5}, timeout=15)
        assert response.status_code == 200, response.text
        details: dict[str, Any] = response.json()["taskDetails"]
        return details if details["status"] in final else None

    task: dict[str, Any] = wait_for(read, timeout=timeout, interval=0.05, what=f"{task_id} final")
    return task
