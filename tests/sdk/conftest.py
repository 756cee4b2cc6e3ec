"""Fixtures of the SDK tests: one coordinator and one mock backend per module (SQLite: the
client's behaviour does not depend on the database), and clients of either kind."""

from __future__ import annotations

import inspect
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskyard.client import AsyncClient, Client
from tests.support import MockBackend, Proc, Taskyard, clean_env, free_port, running_taskyard, token

ADMIN = token(["admin"], "root")
USER = token(["user"], "alice")
STATUS_SERVER = Path(__file__).with_name("status_server.py")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taskyard]:
    with running_taskyard(tmp_path_factory.mktemp("node")) as yard:
        yield yard


@pytest.fixture(scope="module")
def model() -> str:
    """The model the module's mock backend serves."""
    return f"sdk-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def backend(
    node: Taskyard, model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MockBackend]:
    mock = MockBackend(f"mock-{model}", workdir=tmp_path_factory.mktemp("mock"))
    mock.start("/health")
    try:
        node.register_online(mock, models=[model])
        yield mock
    finally:
        mock.stop()


AnyClient = Client | AsyncClient


@pytest.fixture(params=["sync", "async"])
async def make_client(
    request: pytest.FixtureRequest, node: Taskyard
) -> AsyncIterator[Callable[..., AnyClient]]:
    """`make_client(token=ADMIN, url=node.url)`: a `Client` or an `AsyncClient` (the two runs
    of each test), closed afterwards."""
    made: list[AnyClient] = []

    def make(tok: str | None = ADMIN, *, url: str | None = None, **options: Any) -> AnyClient:
        kind = Client if request.param == "sync" else AsyncClient
        client = kind(url or node.url, tok, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        if isinstance(client, AsyncClient):
            await client.aclose()
        else:
            client.close()


async def run(value: Any) -> Any:
    """The result of a client call, sync or async."""
    return await value if inspect.isawaitable(value) else value


async def collect(items: Any) -> list[Any]:
    """The items of an iterator or an async iterator."""
    if hasattr(items, "__aiter__"):
        return [item async for item in items]
    return list(items)


@pytest.fixture
def status_server(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """`status_server(429, body, Retry-After="7")`: a real HTTP server process on 127.0.0.1
    that answers every request with that status, headers and body."""
    started: list[Proc] = []

    def start(
        status: int, body: str = "", *, content_type: str = "application/json", **headers: str
    ) -> Proc:
        port = free_port()
        args = [sys.executable, str(STATUS_SERVER), "--port", str(port), "--status", str(status)]
        args += ["--body", body, "--content-type", content_type]
        for name, value in headers.items():
            args += ["--header", f"{name.replace('_', '-')}={value}"]
        proc = Proc(args, port=port, env=clean_env(), log=tmp_path / f"status-{port}.log")
        started.append(proc)
        return proc.start("/__ready")

    yield start
    for proc in started:
        proc.stop()
