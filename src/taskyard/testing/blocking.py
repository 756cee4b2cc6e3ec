"""`BlockingHarness`: the `Harness` for synchronous tests (and the SDK's synchronous `Client`).

The app runs on an event loop in a background thread, as it would in a server: its loops go
on between requests. `client()` makes plain `httpx.Client`s whose requests are served on that
loop through the harness's ASGI transport, so a synchronous test reads like one against a real
node, without the node.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from taskyard.testing.harness import Harness

T = TypeVar("T")


class PortalTransport(httpx.BaseTransport):
    """A synchronous transport that hands each request to an async one on a portal's loop,
    honouring the client's read timeout as a real connection would."""

    def __init__(self, portal: BlockingPortal, transport: httpx.AsyncBaseTransport) -> None:
        self._portal = portal
        self._transport = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # a body given as an iterator is read here, in the caller's thread
        sent = self._portal.start_task_soon(self._send, request)
        timeout = request.extensions.get("timeout", {}).get("read")
        try:
            status, headers, raw = sent.result(timeout)
        except concurrent.futures.TimeoutError:
            sent.cancel()
            raise httpx.ReadTimeout("no answer within the read timeout", request=request) from None
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(raw))

    async def _send(self, request: httpx.Request) -> tuple[int, httpx.Headers, bytes]:
        response = await self._transport.handle_async_request(request)
        try:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        return response.status_code, response.headers, raw


class BlockingHarness:
    """A `Harness` (made from `options`, or given) run on a loop of its own; a context
    manager. `harness` is the async one, for what this class does not wrap."""

    def __init__(self, harness: Harness | None = None, /, **options: Any) -> None:
        self.harness = harness if harness is not None else Harness(**options)
        self.url = self.harness.url
        self._stack = contextlib.ExitStack()
        self._portal: BlockingPortal | None = None
        self._clients: list[httpx.Client] = []
        self._admin: httpx.Client | None = None

    def __enter__(self) -> Self:
        with contextlib.ExitStack() as stack:
            self._portal = stack.enter_context(start_blocking_portal("asyncio"))
            stack.enter_context(self._portal.wrap_async_context_manager(self.harness))
            stack.callback(self._close_clients)
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.close()

    def _close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    @property
    def portal(self) -> BlockingPortal:
        if self._portal is None:
            raise RuntimeError("BlockingHarness is not running: use it in a `with` block")
        return self._portal

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await function(*args)` on the harness's loop (e.g. a coordinator or store call)."""
        return self.portal.call(function, *args)

    @property
    def transport(self) -> httpx.BaseTransport:
        """A synchronous transport to the app (e.g. `taskyard.client.Client(url, token,
        transport=...)`)."""
        return PortalTransport(self.portal, self.harness.transport)

    def token(self, roles: Any = ("user",), sub: str = "alice", **claims: Any) -> str:
        """As `Harness.token`."""
        return self.harness.token(roles, sub, **claims)

    def client(self, token: str | None = None, **options: Any) -> httpx.Client:
        """An `httpx.Client` on the app, sending `token` as its bearer (none: anonymous);
        closed with the harness."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        headers |= options.pop("headers", {})
        client = httpx.Client(
            transport=self.transport, base_url=self.url, headers=headers, **options
        )
        self._clients.append(client)
        return client

    @property
    def admin(self) -> httpx.Client:
        """A client with an admin token (`sub` "root")."""
        if self._admin is None:
            self._admin = self.client(self.token(["admin"], "root"))
        return self._admin
