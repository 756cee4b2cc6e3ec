"""Change notices as both buses carry them: `Notices` merges what one event-loop tick published
into payloads (`"<sender> <kind>[ <ids>]"`), and `on_notice` acts on one that arrived. PgBus
(`notify.py`) sends them with `pg_notify`, SocketBus (`peerbus.py`) as datagrams."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from taskyard.domain.ports import ClusterHandlers

MAX_PAYLOAD = 7000  # bytes; PostgreSQL's limit is 8000


class Notices:
    """The publishing half of a bus: what one event-loop tick published, merged into
    payloads (`"<sender> <kind>[ <ids>]"`) handed to `_deliver` once, at the end of the tick."""

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self._final: set[str] = set()
        self._kinds: set[str] = set()
        self._flush_planned = False

    def tasks_final(self, task_ids: Iterable[str]) -> None:
        self._final.update(task_ids)
        self._plan_flush()

    def work(self) -> None:
        self._kinds.add("work")
        self._plan_flush()

    def servers(self) -> None:
        self._kinds.add("servers")
        self._plan_flush()

    def nodes(self) -> None:
        self._kinds.add("nodes")
        self._plan_flush()

    def _plan_flush(self) -> None:
        if not self._flush_planned:
            self._flush_planned = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_planned = False
        payloads = [f"{self._node_id} {kind}" for kind in sorted(self._kinds)]
        payloads += [f"{self._node_id} final {ids}" for ids in chunks(sorted(self._final))]
        self._final.clear()
        self._kinds.clear()
        if payloads:
            self._deliver(payloads)

    def _deliver(self, payloads: list[str]) -> None:
        raise NotImplementedError


def on_notice(payload: str, node_id: str, handlers: ClusterHandlers) -> None:
    """Act on one notice (`"<sender> <kind>[ <ids>]"`) unless this node sent it."""
    sender, _, rest = payload.partition(" ")
    kind, _, ids = rest.partition(" ")
    if sender == node_id:
        return
    if kind == "final":
        handlers.tasks_final(ids.split(","))
    elif kind == "work":
        handlers.work()
    elif kind == "servers":
        handlers.servers()
    elif kind == "nodes":
        handlers.nodes()


def chunks(ids: list[str]) -> Iterable[str]:
    """Comma-joined ids in payloads under PostgreSQL's size limit."""
    chunk: list[str] = []
    size = 0
    for task_id in ids:
        if chunk and size + len(task_id) + 1 > MAX_PAYLOAD:
            yield ",".join(chunk)
            chunk, size = [], 0
        chunk.append(task_id)
        size += len(task_id) + 1
    if chunk:
        yield ",".join(chunk)
