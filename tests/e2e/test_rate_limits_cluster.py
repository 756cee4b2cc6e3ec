"""Rate limits and the unfinished-task cap with two nodes on one PostgreSQL database (issue
10, item 3): with `TASKYARD_RATE_LIMIT_STORAGE=redis://…` a user's rate holds across the
nodes; with the default `memory://` each node counts on its own, so the bound is the rate
times the nodes, as docs/deploy.md says. The cap on unfinished tasks is counted in the
database, so it holds exactly whichever node each create reaches, even when they race.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests import pg
from tests.cluster import Cluster, running_cluster
from tests.support import bearer, token, until_clear_of_window_edge

REDIS_URL = "redis://127.0.0.1:6379"
RATE = 10  # creates per minute and user
CAP = 25  # unfinished tasks per user, on the Redis cluster


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Cluster]]:
    """Two 2-node clusters, one per rate-limit storage, on databases of their own."""
    with (
        pg.fresh_database() as memory_db,
        pg.fresh_database() as redis_db,
        running_cluster(
            memory_db,
            tmp_path_factory.mktemp("memory"),
            size=2,
            rate_limit_creates=f"{RATE}/minute",
        ) as per_node,
        running_cluster(
            redis_db,
            tmp_path_factory.mktemp("redis"),
            size=2,
            rate_limit_creates=f"{RATE}/minute",
            rate_limit_storage=REDIS_URL,
            max_unfinished_tasks=CAP,
        ) as shared,
    ):
        yield {"memory": per_node, "redis": shared}


def creates(cluster: Cluster, sub: str, count: int) -> list[int]:
    """`count` creates by `sub`, spread over the nodes in turn, 8 at a time."""
    clients = [
        httpx.Client(base_url=node.url, headers=bearer(token(["user"], sub)), timeout=30)
        for node in cluster.nodes
    ]
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(
                pool.map(
                    lambda n: (
                        clients[n % len(clients)].post("/api/task", json={"model": "m"}).status_code
                    ),
                    range(count),
                )
            )
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize(("storage", "bound"), [("redis", RATE), ("memory", 2 * RATE)])
def test_a_users_rate_over_two_nodes(
    clusters: dict[str, Cluster], storage: str, bound: int
) -> None:
    sub = f"rate-{uuid.uuid4().hex[:8]}"  # a fresh bucket, also in a Redis that outlives us
    time.sleep(until_clear_of_window_edge())  # all creates in one window: counted exactly
    statuses = creates(clusters[storage], sub, 4 * RATE)
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) == bound, statuses


def test_the_unfinished_cap_holds_across_nodes(clusters: dict[str, Cluster]) -> None:
    """The user already has 20 unfinished tasks (made with an admin token of the same `sub`,
    which the cap does not stop); of 20 creates racing over both nodes, the shared rate admits
    10 and the cap of 25 exactly 5."""
    cluster = clusters["redis"]
    sub = f"cap-{uuid.uuid4().hex[:8]}"
    as_admin = httpx.Client(base_url=cluster.nodes[1].url, headers=bearer(token(["admin"], sub)))
    with as_admin:
        for _ in range(20):
            assert as_admin.post("/api/task", json={"model": "m"}).status_code == 200
    statuses = creates(cluster, sub, 20)
    assert statuses.count(200) == CAP - 20, statuses
    mine = cluster.nodes[0].admin.get("/api/tasks", params={"owner": sub, "limit": 100})
    assert mine.status_code == 200, mine.text
    assert len(mine.json()["tasks"]) == CAP
