"""`InProcessYard`: a `Taskyard`'s interface on the in-process harness (`taskyard.testing`).

The real app over `MemoryStore`, its backends `FakeBackend`s, with the same secret, the same
short intervals (`FAST_ENV`) and the same calls (`YardCalls`) as a node started by
`tests.support`: a test written against a real node runs against it unchanged, in a fraction
of the time. Tests about a process, a crash, the HTTP server or a database keep real nodes.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import pytest

from taskyard.netguard import Address
from taskyard.testing import BlockingHarness, FakeBackend, Harness, harness_settings
from tests.support import (
    FAST_ENV,
    SECRET,
    BaseFleet,
    YardCalls,
    bearer,
    fresh_database,
    token,
)

# FAST_ENV as `Settings` fields: TASKYARD_HEALTH_TIMEOUT_S → health_timeout_s.
FAST_SETTINGS = {name.removeprefix("TASKYARD_").lower(): value for name, value in FAST_ENV.items()}


async def nothing_resolves(host: str, _port: int) -> list[Address]:
    """The registration check's resolver: no name resolves (a production node lets such a
    name through to the connection-time check), so no test asks a real DNS server."""
    raise socket.gaierror(socket.EAI_NONAME, f"{host}: not resolved in tests")


class InProcessYard(YardCalls):
    """The app in this process, with `settings` (field names: `max_body_bytes=2048`); use it
    in a `with` block. `url` is its base URL for this yard's clients only."""

    def __init__(self, *, database_url: str | None = None, **settings: Any) -> None:
        """With `database_url`, the node opens its production store there (for what a
        database does: what it can hold, its transactions), still in this process."""
        if database_url is not None:
            settings["database_url"] = database_url
        config = harness_settings(**{**FAST_SETTINGS, "jwt_secret": SECRET, **settings})
        self.harness = Harness(config, database=database_url is not None, resolve=nothing_resolves)
        self.blocking = BlockingHarness(self.harness)
        self.url = self.harness.url

    def __enter__(self) -> Self:
        self.blocking.__enter__()
        self.admin = self.client(["admin"], "root")
        self.http = self.blocking.client()  # anonymous: headers per request
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.blocking.__exit__(exc_type, exc, traceback)

    def client(self, roles: list[str], sub: str = "alice", **claims: Any) -> httpx.Client:
        """A client with a token as `tests.support.token` signs it."""
        return self.blocking.client(headers=bearer(token(roles, sub, **claims)))

    def register(self, backend: Any, **fields: Any) -> dict[str, Any]:
        """Mount `backend` (a `FakeBackend`) and register it, as `Taskyard.register` does."""
        assert isinstance(backend, FakeBackend), backend
        self.harness.backends.mount(backend.url, backend)
        return super().register(backend, **fields)

    def count_rows(self, table: str) -> int:
        """Tasks or servers stored (what `Taskyard.count_rows` reads from its database)."""
        store = self.harness.store
        if table == "tasks":
            return sum(self.blocking.call(store.count_tasks).values())
        if table == "servers":
            return len(self.blocking.call(store.list_servers))
        raise ValueError(f"no count of {table!r} in-process")


@contextlib.contextmanager
def shared_yard(kind: str, workdir: Path, **settings: Any) -> Iterator[InProcessYard]:
    """An in-process node on its own fresh database of `kind` (as `tests.support.shared_taskyard`
    starts a real one), for module-scoped fixtures with the `db_kind` fixture."""
    with fresh_database(kind, workdir) as url, InProcessYard(database_url=url, **settings) as yard:
        yield yard


def fake_backend(server_id: str, *extra: str) -> FakeBackend:
    """A `FakeBackend` for `mock_factory`'s arguments (a server id and mock-backend CLI
    arguments), those with an in-process meaning: `--async` (202; its callback never comes, so
    `--async --delay-ms N` too), and `--error-rate 1` (every predict a 500)."""
    backend = FakeBackend(server_id)
    args = list(extra)
    while args:
        arg = args.pop(0)
        if arg == "--async":
            backend.accept = True
        elif arg == "--delay-ms" and "--async" in extra and args:
            args.pop(0)  # the callback's delay: no callback comes in-process
        elif arg == "--error-rate" and args and float(args.pop(0)) == 1:
            backend.fail_status = 500
        else:
            raise ValueError(f"no in-process meaning for {arg!r} (of {extra})")
    return backend


@contextlib.contextmanager
def no_error_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail if the block logs an error or a traceback (what a node's log would show)."""
    with caplog.at_level(logging.INFO):
        start = len(caplog.records)
        yield
        bad = [r for r in caplog.records[start:] if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, "\n".join(caplog.text.splitlines()[-40:])


class InProcessFleet(BaseFleet[InProcessYard, FakeBackend]):
    """A `BaseFleet` of `FakeBackend`s (made by `fake_backend`) on an in-process node."""

    def __init__(self, yard: InProcessYard) -> None:
        super().__init__(yard, fake_backend)
