"""`Harness`: the real taskyard app in this process, over `MemoryStore`, driven by httpx.

The app is the one `taskyard serve` runs (`taskyard.api.app.create_app`: every route,
middleware, the fast path, the background loops), started with its lifespan; only its edges are
replaced: the store is a `MemoryStore`, backends are ASGI apps in this process
(`InProcessBackends`), and the clock may be a `FakeClock`. Requests go through
`httpx.ASGITransport`: no socket, no process, no database::

    async with Harness() as yard:
        await yard.add_backend(FakeBackend("gpu-1"))
        alice = yard.client(yard.token(["user"], "alice"))
        created = await alice.post("/api/task", json={"model": "m"})
        task = await yard.wait_status(created.json()["taskId"], "FINISHED")

`Harness(database=True)` keeps the production store instead (on `settings.database_url`),
for tests about what a database does; synchronous tests use `BlockingHarness`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp

from taskyard import auth
from taskyard.api.app import create_app
from taskyard.config import Settings
from taskyard.domain.clock import Clock
from taskyard.domain.coordinator import Coordinator
from taskyard.domain.ports import Store
from taskyard.netguard import Resolve
from taskyard.testing.backends import FAKE_HOST, FakeBackend, InProcessBackends
from taskyard.testing.lifespan import lifespan
from taskyard.testing.memory import MemoryStore

HARNESS_SECRET = "taskyard-harness-secret-" + "x" * 24  # signs the harness's tokens
BASE_URL = "http://taskyard.test"  # the app's address for the harness's clients
POLL_S = 0.01  # how often `wait_until` looks again

T = TypeVar("T")


def harness_settings(**overrides: Any) -> Settings:
    """`Settings` for a harness: the defaults (and any `TASKYARD_*` variables set), a JWT
    secret of its own, and `overrides` (e.g. `rate_limit_creates="5/minute"`)."""
    return Settings(**{"jwt_secret": HARNESS_SECRET, **overrides})


class Harness:
    """The app over `MemoryStore` (or `store`), its backends in-process; an async context
    manager that runs the app's lifespan. `admin` is closed with it; close what `client()`
    makes (`async with`)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: Store | None = None,
        database: bool = False,
        backends: InProcessBackends | None = None,
        clock: Clock | None = None,
        resolve: Resolve | None = None,
    ) -> None:
        if database and store is not None:
            raise ValueError("pass a `store` or `database=True`, not both")
        self.settings = settings if settings is not None else harness_settings()
        injected = None if database else store if store is not None else MemoryStore()
        self.backends = (
            backends
            if backends is not None
            else InProcessBackends(max_response_bytes=self.settings.max_backend_response_bytes)
        )
        self.clock = clock  # None: the system's
        self.app: FastAPI = create_app(
            self.settings, resolve=resolve, store=injected, client=self.backends, clock=clock
        )
        self.url = BASE_URL
        self.transport = httpx.ASGITransport(self.app)
        self._running = contextlib.AsyncExitStack()  # what __aexit__ stops
        self._admin: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.backends.aclose)  # last: the shutdown may cancel
            await stack.enter_async_context(lifespan(self.app))
            self._running = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._admin is not None:
            await self._admin.aclose()
            self._admin = None
        await self._running.aclose()

    # ---- the app and its parts -----------------------------------------------------------

    @property
    def coordinator(self) -> Coordinator:
        """The node's coordinator (the domain's facade), once started."""
        coordinator: Coordinator = self.app.state.coordinator
        return coordinator

    @property
    def store(self) -> Store:
        """The store the node runs on, once started."""
        return self.coordinator.store

    # ---- clients ---------------------------------------------------------------------------

    def token(
        self,
        roles: Iterable[str] = ("user",),
        sub: str = "alice",
        *,
        ttl_s: float = 3600.0,
        server_id: str | None = None,
        task_id: str | None = None,
        attempt: int | None = None,
    ) -> str:
        """A token the app accepts, signed with its signing key (claims as `taskyard token`
        mints them; `server_id`, `task_id` and `attempt` bind a `service` token)."""
        return auth.mint(
            self.app.state.token_verifier.keys.signing,
            sub=sub,
            roles=list(roles),
            ttl_s=ttl_s,
            server_id=server_id,
            task_id=task_id,
            attempt=attempt,
            policy=auth.policy_from(self.settings),
        )

    def client(self, token: str | None = None, **options: Any) -> httpx.AsyncClient:
        """An `httpx.AsyncClient` on the app, sending `token` as its bearer (none: anonymous);
        `options` go to `httpx.AsyncClient`. Close it, or use it in `async with`."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        headers |= options.pop("headers", {})
        return httpx.AsyncClient(
            transport=self.transport, base_url=self.url, headers=headers, **options
        )

    @property
    def admin(self) -> httpx.AsyncClient:
        """A client with an admin token (`sub` "root"), closed with the harness."""
        if self._admin is None:
            self._admin = self.client(self.token(["admin"], "root"))
        return self._admin

    # ---- steps most tests take -------------------------------------------------------------

    async def add_backend(
        self,
        backend: FakeBackend | ASGIApp,
        *,
        server_id: str | None = None,
        wait_online: bool = True,
        **fields: Any,
    ) -> dict[str, Any]:
        """Mount `backend` (a `FakeBackend`, or any ASGI app, then named by `server_id`) and
        register it (`POST /api/servers` with `fields`, e.g. `models=["m"]`); with
        `wait_online`, return once its first health check has put it online. Returns the
        registration's answer (its `token` is the server's own)."""
        if isinstance(backend, FakeBackend):
            server_id, url = backend.server_id, backend.url
        elif server_id is None:
            raise ValueError("an ASGI app needs a server_id")
        else:
            url = f"{FAKE_HOST}/{server_id}"
        self.backends.mount(url, backend)
        endpoints = {name: f"{url}/{name}" for name in ("predict", "health", "cancel")}
        body = {"id": server_id, "endpoints": endpoints, "provider": "test", "name": server_id}
        response = await self.admin.post("/api/servers", json=body | fields)
        if response.status_code != 200:
            raise AssertionError(f"registration refused: {response.status_code} {response.text}")
        if wait_online:
            await self.wait_until(lambda: self._status_of(server_id), what=f"{server_id} online")
        answer: dict[str, Any] = response.json()
        return answer

    async def _status_of(self, server_id: str) -> bool:
        server = await self.admin.get(f"/api/servers/{server_id}")
        return server.status_code == 200 and server.json()["status"] == "online"

    async def submit(self, request: dict[str, Any] | None = None, **params: Any) -> str:
        """Create a task as the admin (`params`: `priority`, `timeout_s`, ...); its id."""
        response = await self.admin.post("/api/task", json=request or {"model": "m"}, params=params)
        if response.status_code != 200:
            raise AssertionError(f"create refused: {response.status_code} {response.text}")
        task_id: str = response.json()["taskId"]
        return task_id

    async def task(self, task_id: str) -> dict[str, Any]:
        """`taskDetails` of the task, as the admin reads it."""
        response = await self.admin.get(f"/api/task/{task_id}")
        if response.status_code != 200:
            raise AssertionError(f"task {task_id}: {response.status_code} {response.text}")
        details: dict[str, Any] = response.json()["taskDetails"]
        return details

    async def wait_status(
        self, task_id: str, *statuses: str, timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """The task once its status is one of `statuses`."""

        async def reached() -> dict[str, Any] | None:
            details = await self.task(task_id)
            return details if details["status"] in statuses else None

        return await self.wait_until(reached, timeout_s=timeout_s, what=f"{task_id} {statuses}")

    async def wait_until(
        self,
        check: Callable[[], Awaitable[T | None]],
        *,
        timeout_s: float = 10.0,
        what: str = "",
    ) -> T:
        """`check()`'s first truthy result; AssertionError after `timeout_s` (real seconds,
        whatever the harness's clock says)."""
        deadline = time.monotonic() + timeout_s
        while True:
            last = await check()
            if last:
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check}")
            await asyncio.sleep(POLL_S)
