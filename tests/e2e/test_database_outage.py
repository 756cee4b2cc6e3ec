"""The database going away (issue 10, item 7): while PostgreSQL cannot be reached, the API
answers 503 with `Retry-After` (never 500, never a stall), `/ready` says why, and once it is
back the node recovers by itself with no accepted task lost.

The node reaches PostgreSQL through a TCP forwarder in its own process (`tests.tcp_proxy`);
killing it drops the node's connections and refuses new ones, as a server restart does,
without restarting the server that the other tests share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests import pg
from tests.support import MockBackend, Taskyard, free_port, wait_for
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[TcpProxy, str]]:
    """A fresh PostgreSQL database, and its URL through a forwarder that can be killed."""
    pg.require_postgres()
    with pg.fresh_database() as url:
        direct = make_url(url)
        proxy = TcpProxy(free_port(), direct.port or 5432, tmp_path / "proxy.log").start()
        through = direct.set(host="127.0.0.1", port=proxy.port)
        try:
            yield proxy, through.render_as_string(hide_password=False)
        finally:
            proxy.kill()


def create(node: Taskyard) -> httpx.Response:
    return node.client(["user"]).post("/api/task", json={"model": "m"}, timeout=20)


def test_a_lost_database_gives_503s_and_the_node_recovers_by_itself(
    proxied: tuple[TcpProxy, str],
    tmp_path: Path,
    mock_factory: Callable[..., MockBackend],
) -> None:
    proxy, url = proxied
    node = Taskyard(database_url=url, workdir=tmp_path, env={}).start()
    try:
        accepted = [create(node).json()["taskId"] for _ in range(5)]
        proxy.kill()  # every pooled connection dies; new ones are refused

        refused = create(node)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"].isdigit()
        assert "database" in refused.json()["error"]
        assert url not in refused.text and "postgres" not in refused.json()["error"].lower()
        read = node.admin.get(f"/api/task/{accepted[0]}", timeout=20)
        assert read.status_code == 503, read.text
        ready = httpx.get(node.url + "/ready", timeout=20)
        assert ready.status_code == 503 and ready.json()["database"] == "unreachable"

        proxy.start()  # the database is back: nothing is restarted on the node's side
        wait_for(lambda: create(node).status_code == 200, timeout=30, what="creates")
        # Ready again once its loops have succeeded again (a moment after the first create).
        wait_for(
            lambda: httpx.get(node.url + "/ready", timeout=5).status_code == 200,
            timeout=30,
            what="/ready 200",
        )
        # Every task accepted before the outage is there, and the loops work again: a
        # backend registered now runs them all.
        backend = mock_factory("after-outage")
        node.register_online(backend, models=["m"])
        for task_id in accepted:
            assert node.wait_status(task_id, "FINISHED", timeout=30)["status"] == "FINISHED"
        assert "unhandled error" not in node.log_tail(1_000_000)  # no 500 on the way
    finally:
        node.stop()
        node.admin.close()
