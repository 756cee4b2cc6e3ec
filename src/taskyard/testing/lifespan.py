"""`lifespan(app)`: run an ASGI app's startup and shutdown as a server would, without a server.

A server sends `lifespan.startup` before the first request and `lifespan.shutdown` after the
last, to one long-lived call of the app; the app's own lifespan (for taskyard: the store, the
backend client and the background loops) runs inside that call. `httpx.ASGITransport` sends
only requests, so tests drive the lifespan with this (as `asgi-lifespan` does, in a few lines
rather than one more dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import ASGIApp, Message

STARTUP_TIMEOUT_S = 60.0  # a migration or a JWKS fetch runs in the startup
SHUTDOWN_TIMEOUT_S = 60.0  # the node's shutdown grace is 20 s by default


class LifespanFailed(RuntimeError):
    """The app answered `lifespan.startup.failed` (or `shutdown.failed`) with this message."""


@contextlib.asynccontextmanager
async def lifespan(
    app: ASGIApp,
    *,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
) -> AsyncIterator[None]:
    """Start `app` (its lifespan's startup has completed on entry) and shut it down on exit.

    An exception raised by the app's startup is raised here, as it was raised."""
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope: dict[str, Any] = {
        "type": "lifespan",
        "asgi": {"version": "3.0", "spec_version": "2.0"},
        "state": {},
    }
    running = asyncio.ensure_future(app(scope, to_app.get, from_app.put))
    try:
        await to_app.put({"type": "lifespan.startup"})
        await _answer(running, from_app, "lifespan.startup", startup_timeout_s)
    except BaseException:
        running.cancel()
        with contextlib.suppress(BaseException):
            await running
        raise
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await _answer(running, from_app, "lifespan.shutdown", shutdown_timeout_s)
        await asyncio.wait_for(running, shutdown_timeout_s)


async def _answer(
    running: asyncio.Future[None], from_app: asyncio.Queue[Message], step: str, timeout_s: float
) -> None:
    """Wait for the app's answer to `step`: `.complete` returns, `.failed` raises, and an app
    that ends (or raises) without answering raises what it raised."""
    answer = asyncio.ensure_future(from_app.get())
    either: set[asyncio.Future[Any]] = {answer, running}
    try:
        done, _ = await asyncio.wait(either, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not answer.done():
            answer.cancel()
    if answer in done:
        message = answer.result()
        if message["type"] == f"{step}.complete":
            return
        # An app raises its own error just after saying it failed: that error is raised here.
        await asyncio.wait_for(asyncio.shield(running), timeout_s)
        raise LifespanFailed(f"{message['type']}: {message.get('message', '')}")
    if running in done:
        running.result()  # raises the app's error, if it raised one
        raise LifespanFailed(f"the app returned without answering {step}")
    raise TimeoutError(f"no answer to {step} within {timeout_s:g} s")
