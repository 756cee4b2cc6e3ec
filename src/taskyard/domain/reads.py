"""`TaskReads`: what callers read about tasks and nodes. A task as its reader may see it, the
long poll that waits for it to end, searches, why a task still waits, the warnings a create
answers with, and the coordinator nodes. Writes nothing."""

from __future__ import annotations

import asyncio
import dataclasses

from taskyard import errors
from taskyard.domain import reports, waiting
from taskyard.domain.clock import Clock
from taskyard.domain.events import TaskEvents
from taskyard.domain.models import Node, Server, Task, TaskStatus
from taskyard.domain.ports import ClusterBus, Store, TaskQuery
from taskyard.domain.principal import Principal

WAIT_FALLBACK_S = 1.0  # a waiting GET re-reads the task at least this often...
WAIT_FALLBACK_LISTENING_S = 5.0  # ...or this often while other nodes' notices arrive
SERVED_MODELS_TTL_S = 1.0  # a create's "no server serves this model" check reuses a list


class RecentServers:
    """The server list as read at most `SERVED_MODELS_TTL_S` ago, so that creates do not each
    read every server. The fleet forgets it whenever it changes a server here."""

    def __init__(self, *, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._seen: tuple[float, list[Server]] | None = None  # (monotonic, servers)

    async def get(self) -> list[Server]:
        seen = self._seen
        if seen is None or self._clock.monotonic() - seen[0] > SERVED_MODELS_TTL_S:
            seen = (self._clock.monotonic(), await self._store.list_servers())
            self._seen = seen
        return seen[1]

    def forget(self) -> None:
        self._seen = None


class TaskReads:
    def __init__(
        self,
        *,
        store: Store,
        events: TaskEvents,
        bus: ClusterBus,
        servers: RecentServers,
        shutting_down: asyncio.Event,
        node_timeout_s: float,
        clock: Clock,
    ) -> None:
        self.store = store
        self.events = events
        self.bus = bus
        self.servers = servers
        self.shutting_down = shutting_down  # set at the first stop signal: long polls answer
        self.node_timeout_s = node_timeout_s
        self.clock = clock

    async def get_task(self, task_id: str, *, principal: Principal) -> Task:
        """A task as its owner or an admin (or its backend) may see it; others get 404."""
        task = await self.store.get_task(task_id)
        if task is None or not reports.may_read(principal, task):
            raise errors.TaskNotFound(task_id)
        return task

    async def wait_task(self, task_id: str, *, principal: Principal, wait_s: float) -> Task:
        """The task once it is final, or as it is after `wait_s` seconds (long polling)."""
        deadline = self.clock.monotonic() + wait_s
        while True:
            with self.events.watch(task_id) as changed:
                task = await self.get_task(task_id, principal=principal)
                left = deadline - self.clock.monotonic()
                if task.status.is_final or left <= 0 or self.shutting_down.is_set():
                    return task  # a node that is stopping answers with the task as it is
                # Woken by a change here or a notice from another node; the fallback re-read
                # covers notices lost while the bus was not listening.
                fallback = WAIT_FALLBACK_LISTENING_S if self.bus.listening else WAIT_FALLBACK_S
                stopping = asyncio.ensure_future(self.shutting_down.wait())
                try:
                    await asyncio.wait(
                        (changed, stopping),
                        timeout=min(left, fallback),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    stopping.cancel()

    async def search_tasks(self, query: TaskQuery, *, principal: Principal) -> list[Task]:
        """A page of tasks, newest first: a user's own only, anyone's for an admin."""
        if not principal.is_admin:
            if query.owner is not None and query.owner != principal.sub:
                raise errors.Forbidden("Only an admin may search another owner's tasks")
            query = dataclasses.replace(query, owner=principal.sub)
        return await self.store.search_tasks(query)

    async def why_waiting(self, task: Task) -> waiting.Waiting | None:
        """Why a WAITING task has not started yet (None for other states)."""
        if task.status is not TaskStatus.WAITING:
            return None
        servers = await self.store.list_servers()
        reason = waiting.why_waiting(task, servers, now=self.clock.now_ms())
        if waiting.needs_position(reason):
            position = await self.store.queue_position(task, limit=waiting.POSITION_LIMIT)
            reason = dataclasses.replace(reason, position=position)
        return reason

    async def create_warnings(self, task: Task) -> list[str]:
        """What the creator of `task` should know (see `model_warnings`)."""
        return await self.model_warnings(task.model)

    async def model_warnings(self, model: str) -> list[str]:
        """What the creator of a task for `model` should know: no registered server serves
        it (the task is kept: servers may register later). Judged from a list of servers at
        most `SERVED_MODELS_TTL_S` old (`RecentServers`)."""
        if waiting.unserved_models([model], await self.servers.get()):
            return [
                f"no registered server serves model {model!r}: the task waits until one"
                " registers (check the model name)"
            ]
        return []

    async def list_nodes(self) -> list[tuple[Node, bool]]:
        """Every recorded coordinator node, and whether it is alive."""
        now, timeout_ms = self.clock.now_ms(), int(self.node_timeout_s * 1000)
        return [(n, n.alive(now=now, timeout_ms=timeout_ms)) for n in await self.store.list_nodes()]
