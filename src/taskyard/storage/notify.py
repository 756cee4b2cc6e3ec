"""Change notices between nodes: PostgreSQL LISTEN/NOTIFY; on SQLite, datagrams between the
workers of one machine (`peerbus.py`), or nothing for a single process.

A node publishes what it changed (tasks that reached a final state, new work, server or node
changes); notices published in one event-loop tick are merged and sent with `pg_notify` inside
the next group-commit transaction, so they go out only once that commit is durable. Every node
LISTENs on one dedicated connection, reconnecting after a loss, and on (re)connecting treats
everything as changed, since notices sent meanwhile are lost. Notices only save waiting: each
loop still polls the database, so a lost notice delays work, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from taskyard.domain.ports import ClusterBus, ClusterHandlers, LocalBus
from taskyard.storage.notices import Notices, on_notice
from taskyard.storage.peerbus import SocketBus

log = logging.getLogger(__name__)

CHANNEL = "taskyard"
RECONNECT_S = 2.0
KEEPALIVE_S = 15.0  # a silent network loss shows up as a failed ping within this

Send = Callable[[str, list[str]], Awaitable[None]]


class PgBus(Notices):
    def __init__(self, url: str, *, node_id: str, send: Send) -> None:
        super().__init__(node_id)
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
        self._send = send
        self._handlers: ClusterHandlers | None = None
        self._conn: asyncpg.Connection | None = None
        self._listener: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self, handlers: ClusterHandlers) -> None:
        self._handlers = handlers
        connected = asyncio.Event()
        self._listener = asyncio.get_running_loop().create_task(self._listen(connected))
        with contextlib.suppress(TimeoutError):  # the loop keeps trying in the background
            await asyncio.wait_for(connected.wait(), timeout=5)

    async def close(self) -> None:
        self._flush()
        await asyncio.gather(*self._sending, return_exceptions=True)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    def _deliver(self, payloads: list[str]) -> None:
        job = asyncio.get_running_loop().create_task(self._publish(payloads))
        self._sending.add(job)
        job.add_done_callback(self._sending.discard)

    async def _publish(self, payloads: list[str]) -> None:
        try:
            await self._send(CHANNEL, payloads)
        except Exception as exc:  # a lost notice only delays other nodes until they poll
            log.warning("could not publish %d change notices: %r", len(payloads), exc)

    # ---- listening --------------------------------------------------------------------

    async def _listen(self, connected: asyncio.Event) -> None:
        while True:
            try:
                await self._listen_once(connected)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change notices unavailable (%r); polling until reconnected", exc)
            await asyncio.sleep(RECONNECT_S)

    async def _listen_once(self, connected: asyncio.Event) -> None:
        """Listen on one connection until it is lost."""
        conn = await asyncpg.connect(self._dsn, timeout=10)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._on_notice)
            self._conn = conn
            connected.set()
            self._catch_up()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), KEEPALIVE_S)
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=5)
        finally:
            self._conn = None
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close(timeout=2))

    def _catch_up(self) -> None:
        """Notices sent while this node was not listening are gone: assume all changed."""
        if self._handlers is not None:
            self._handlers.work()
            self._handlers.servers()
            self._handlers.nodes()

    def _on_notice(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if self._handlers is not None:
            on_notice(payload, self._node_id, self._handlers)


def open_bus(url: str, *, node_id: str, send: Send, peer_dir: str = "") -> ClusterBus:
    """PostgreSQL: LISTEN/NOTIFY. SQLite: datagrams between the workers of `serve --workers`
    (`peer_dir`, made by their supervisor), or nothing for a process alone."""
    if make_url(url).get_backend_name() == "postgresql":
        return PgBus(url, node_id=node_id, send=send)
    if peer_dir:
        return SocketBus(peer_dir, node_id=node_id)
    return LocalBus()
