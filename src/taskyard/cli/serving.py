"""uvicorn's HTTP protocol with two guards against slow and greedy clients (issue 10, item 6).

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) and answers 503 past
`limit_concurrency`, but only once a request head is complete: a client that sends its headers a
byte a second holds its connection, and its file descriptor, for ever. So:

- **head timeout**: a timer armed when a connection opens and when each request begins; if the
  request line and headers are not all in by then, the client gets `408` and the connection is
  closed. The timer stops at the end of the head: a slow *body* is the app's business (and
  bounded by the body limit).
- **connection cap**: past `max_connections` open connections on this node, a new one is closed
  at once, before it can send anything, so descriptors stay bounded whatever clients do.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HURRIED_EXIT_S = 2.0  # after a second stop signal, the process is gone within this
GC_THRESHOLDS = (20_000, 20, 100)  # the collector's, once started (`settle_gc`)

log = logging.getLogger(__name__)

_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 30\r\n"
    b"connection: close\r\n\r\n"
    b"Request headers took too long."
)


class GuardedHttpProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` (uvicorn's default with uvicorn[standard]) with the guards above.
    Build a configured subclass with `guarded_protocol()`, which sets the two limits
    (TASKYARD_HEAD_TIMEOUT_S, TASKYARD_MAX_CONNECTIONS)."""

    head_timeout_s: float  # seconds to send a request line and its headers
    max_connections: int  # open connections per node (keep well under `ulimit -n`)
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # `connections` already counts this one; closing it makes uvicorn forget it again.
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self._arm_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        # A 408 only when no response of an earlier (pipelined) request is on its way.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def guarded_protocol(*, head_timeout_s: float, max_connections: int) -> type[GuardedHttpProtocol]:
    """The protocol class to give `uvicorn.run(http=...)`, with these limits."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"head_timeout_s": head_timeout_s, "max_connections": max_connections},
    )


def settle_gc() -> None:
    """Once a node has started: what it loaded so far (the libraries, the app) leaves the
    garbage collector's view, and young collections run 20,000 allocations apart, not 700.

    Measured under the end-to-end load (5,000 tasks, one node): 1.34 s in the collector, seven
    full collections of up to 150 ms each walking every object the imports made; frozen and
    spaced out, 0.12 s, and the load's p99 242 → 104 ms. Memory stayed flat (the benchmark's
    growth row): cycles are still collected, only less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class GracefulServer(uvicorn.Server):
    """uvicorn's server, telling the app the moment a stop signal arrives.

    uvicorn itself runs the app's shutdown only after every open request has ended, so a
    long poll (`?wait=60`) held the whole stop for up to a minute. Here the first SIGTERM or
    SIGINT calls `on_signal(hurry=False)` at once (the node stops claiming and answers its long
    polls), and uvicorn then waits for requests, at most `timeout_graceful_shutdown`. A second
    signal calls `on_signal(hurry=True)` and exits without waiting for anything: accepted tasks
    are in the database, and attempts in flight are recovered as after a kill -9. Either way
    the exit status is 0.

    The app's own shutdown still runs after a second signal, hurried (it leaves the cluster in
    a moment): uvicorn skips it when forced, and then `asyncio.run` cancels every task at once,
    the app's clean-up among them, half-way through its database work, where it could hang.
    Should anything still hold the process `HURRIED_EXIT_S` after the second signal, a
    watchdog ends it (with a warning): the second signal is a promise to be gone.
    """

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[bool], None]) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        hurry = self.should_exit  # a signal has come before
        super().handle_exit(sig, frame)
        # uvicorn raises the signal again once it has stopped, so the process ends "killed by
        # SIGTERM"; a node that shut down cleanly exits 0 instead (supervisors read 0 as done).
        self._captured_signals.clear()
        if hurry:
            self.force_exit = True  # uvicorn does this for a second SIGINT only
            self._arm_watchdog()
        if self._loop is not None:
            # A signal handler runs between two bytecodes of whatever the loop was doing:
            # hand the work to the loop (and wake it) rather than doing it here.
            self._loop.call_soon_threadsafe(self._on_signal, hurry)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            settle_gc()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.force_exit:
            # Skipped by uvicorn when the second signal came before it began; when it ran
            # already this returns at once (its shutdown event is set).
            await self.lifespan.shutdown()

    def _arm_watchdog(self) -> None:
        def overdue() -> None:
            log.warning(
                "still running %.0f s after the second stop signal: exiting now (accepted"
                " tasks are stored; attempts in flight are recovered as after a crash)",
                HURRIED_EXIT_S,
            )
            logging.shutdown()
            os._exit(0)

        timer = threading.Timer(HURRIED_EXIT_S, overdue)
        timer.daemon = True  # it must not keep a process alive that is exiting anyway
        timer.start()
