"""`Coordinator`: one node's wiring. It builds the services the API and CLI call (`tasks`,
`fleet`, `reads`) and the background loops (dispatcher, health monitor, chores), and starts and
stops them.

Reads and writes go to the database (the only source of truth); the loops keep no state that a
restart would lose.
"""

from __future__ import annotations

import asyncio
import random
import socket
import uuid

from taskyard.domain.chores import Chores
from taskyard.domain.clock import Clock
from taskyard.domain.cluster import Membership
from taskyard.domain.dispatcher import Dispatcher
from taskyard.domain.events import TaskEvents
from taskyard.domain.fleet import Fleet
from taskyard.domain.health import HealthMonitor
from taskyard.domain.policies import CoordinatorConfig
from taskyard.domain.ports import (
    BackendClient,
    ClusterBus,
    ClusterHandlers,
    LocalBus,
    NullObserver,
    Observer,
    Store,
    TokenIssuer,
)
from taskyard.domain.reads import RecentServers, TaskReads
from taskyard.domain.stats import Stats
from taskyard.domain.tasks import TaskService

# A loop failing this many iterations in a row makes /ready fail: one failure is a blip (a
# lost connection, retried a second later), three mean the node is not doing its work.
LOOP_FAILURES_NOT_READY = 3
STOP_RESERVE_S = 0.5  # of the shutdown grace, kept for the steps after the sends in flight


class Coordinator:
    def __init__(
        self,
        *,
        store: Store,
        client: BackendClient,
        tokens: TokenIssuer,
        config: CoordinatorConfig,
        clock: Clock,
        bus: ClusterBus | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.observer: Observer = observer or NullObserver()
        self.bus: ClusterBus = bus or LocalBus()
        self.config = config
        self.clock = clock
        self.node_id = config.node_id
        # Set at the first stop signal (`begin_shutdown`): no new claims, long polls answer.
        self.shutting_down = asyncio.Event()
        self._stop_by: float | None = None  # monotonic time the shutdown must be done by
        self.membership = Membership(self.node_id)
        self.events = TaskEvents(publish=self.bus.tasks_final)
        self.dispatcher = Dispatcher(
            store=store,
            client=client,
            tokens=tokens,
            policy=config.dispatch,
            clock=clock,
            events=self.events,
            rng=random.Random(),
        )
        self.health = HealthMonitor(
            store=store,
            client=client,
            policy=config.health,
            on_online=lambda _id: self.work_appeared(),
            on_expired=lambda server_id: self.fleet.remove_offline([server_id]),
            membership=self.membership,
            clock=clock,
        )
        servers = RecentServers(store=store, clock=clock)
        self.reads = TaskReads(
            store=store,
            events=self.events,
            bus=self.bus,
            servers=servers,
            shutting_down=self.shutting_down,
            node_timeout_s=config.node_timeout_s,
            clock=clock,
        )
        self.tasks = TaskService(
            store=store,
            dispatcher=self.dispatcher,
            reads=self.reads,
            bus=self.bus,
            observer=self.observer,
            config=config,
            clock=clock,
            work_appeared=self.work_appeared,
        )
        self.fleet = Fleet(
            store=store,
            tokens=tokens,
            health=self.health,
            dispatcher=self.dispatcher,
            membership=self.membership,
            bus=self.bus,
            servers=servers,
            policy=config.health,
            clock=clock,
            work_appeared=self.work_appeared,
        )
        self.chores = Chores(
            store=store,
            membership=self.membership,
            health=self.health,
            dispatcher=self.dispatcher,
            fleet=self.fleet,
            bus=self.bus,
            config=config,
            clock=clock,
            work_appeared=self.work_appeared,
        )
        for loop in (self.dispatcher, self.health, self.chores):
            loop.observer = self.observer
        self.stats = Stats(store)
        self._loops: list[asyncio.Task[None]] = []

    def work_appeared(self) -> None:
        """Tasks may be dispatched now (a slot freed, a server came online): wake the
        dispatcher here and tell the other nodes."""
        self.dispatcher.wake()
        self.bus.work()

    def failing_loops(self) -> dict[str, str]:
        """The background loops that failed their last `LOOP_FAILURES_NOT_READY` iterations
        or more, each with its failures and the last error's type (for `/ready`)."""
        loops = {"dispatcher": self.dispatcher, "health": self.health, "chores": self.chores}
        return {
            name: f"{loop.failures_in_a_row} failures in a row, last: {loop.last_error}"
            for name, loop in loops.items()
            if loop.failures_in_a_row >= LOOP_FAILURES_NOT_READY
        }

    @staticmethod
    def new_node_id() -> str:
        """A fresh identity for this coordinator process (host name + random suffix)."""
        return f"{socket.gethostname()[:40]}-{uuid.uuid4().hex[:12]}"

    async def start(self) -> None:
        """Register this node and start the dispatcher, health monitor and chores."""
        host, now = socket.gethostname(), self.clock.now_ms()
        await self.store.touch_node(node_id=self.node_id, host=host, now=now)
        await self.bus.start(
            ClusterHandlers(
                tasks_final=self.events.changed_elsewhere,
                work=self.dispatcher.wake,
                servers=self.health.resync_soon,
                nodes=self.chores.wake,
            )
        )
        self.bus.nodes()  # the others re-read who is alive and hand servers over
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self.dispatcher.run(), name="dispatcher"),
            loop.create_task(self.health.run(), name="health"),
            loop.create_task(self.chores.run(), name="chores"),
        ]

    def begin_shutdown(self, *, hurry: bool = False) -> None:
        """The first stage of a stop, at the signal itself (before the HTTP server waits for
        open requests): claim no more tasks, and answer every long poll now with the task as
        it is. Sends in flight go on; `stop` gives them what is left of the grace. `hurry`
        (a second signal) leaves them no time at all."""
        now = self.clock.monotonic()
        if self._stop_by is None:
            # The last moments of the grace are kept for what follows the sends (leases, the
            # node record, closing): the process must be gone within the grace plus a second.
            grace = self.config.shutdown_grace_s
            self._stop_by = now + max(0.0, grace - min(STOP_RESERVE_S, grace / 4))
        if hurry:
            self._stop_by = now
            self.dispatcher.hurry()  # also when `stop` already gives the sends their grace
        self.dispatcher.stop()
        self.shutting_down.set()

    async def stop(self) -> None:
        """Stop the loops in stages: no new work, then in-flight sends (within what is left of
        the shutdown grace), then the rest."""
        self.begin_shutdown()
        assert self._stop_by is not None
        self.chores.stop()
        await self.dispatcher.close(grace_s=max(0.0, self._stop_by - self.clock.monotonic()))
        await self.health.close()
        for loop_task in self._loops:
            loop_task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        # Leave at once rather than by timing out: the others take over the duties now.
        await self.store.release_leases(holder=self.node_id)
        await self.store.delete_nodes([self.node_id])
        self.bus.nodes()
        await self.bus.close()
