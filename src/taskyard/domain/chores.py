"""Periodic housekeeping. Every node records itself and re-reads who else is alive; the cluster
chores (recovering a dead node's attempts, removing long-offline servers, purging old results)
run only on the node holding the "chores" lease, so they happen once, not once per node."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from taskyard.domain import registry, stats
from taskyard.domain.clock import Clock
from taskyard.domain.cluster import Membership
from taskyard.domain.dispatcher import Dispatcher
from taskyard.domain.fleet import Fleet
from taskyard.domain.health import HealthMonitor
from taskyard.domain.loops import Wakeable
from taskyard.domain.models import ErrorCode
from taskyard.domain.policies import CoordinatorConfig
from taskyard.domain.ports import ClusterBus, Store

log = logging.getLogger(__name__)

CHORES_LEASE = "chores"
PURGE_CHUNK = 1_000  # tasks deleted per transaction
PURGE_CHUNKS_PER_ROUND = 50


class Chores(Wakeable):
    def __init__(
        self,
        *,
        store: Store,
        membership: Membership,
        health: HealthMonitor,
        dispatcher: Dispatcher,
        fleet: Fleet,
        bus: ClusterBus,
        config: CoordinatorConfig,
        clock: Clock,
        work_appeared: Callable[[], None],
    ) -> None:
        super().__init__(clock)
        self.store = store
        self.membership = membership
        self.health = health
        self.dispatcher = dispatcher
        self.fleet = fleet
        self.bus = bus
        self.config = config
        self._work_appeared = work_appeared  # wakes the dispatchers here and elsewhere
        self.node_id = membership.node_id
        self.host = socket.gethostname()
        self.holds_lease = False  # whether this node did the cluster chores last round

    async def run(self) -> None:
        await self.repeat("chores", self.step)

    async def step(self) -> float:
        now = self.clock.now_ms()
        await self.store.touch_node(node_id=self.node_id, host=self.host, now=now)
        nodes = await self.store.list_nodes()
        live = [n.id for n in nodes if n.alive(now=now, timeout_ms=self.node_timeout_ms)]
        if self.membership.update(live):
            self.health.resync_soon(spread=True)  # health checks are handed over
        # The lease lapses with its holder: a node unseen for node_timeout_s is dead.
        self.holds_lease = await self.store.acquire_lease(
            CHORES_LEASE, holder=self.node_id, now=now, ttl_ms=self.node_timeout_ms
        )
        if self.holds_lease:
            dead = [n.id for n in nodes if n.id not in live]
            await self.recover_lost_nodes(dead)
            await self.remove_offline_servers(now)
            await self.purge_old_results(now)
            await self.store.prune_tallies(before=now - stats.RETENTION_MS)
            if await self.store.prune_holds(now=now):  # slots whose grace is over are free
                self._work_appeared()
        return self.config.chores_interval_s

    @property
    def node_timeout_ms(self) -> int:
        return int(self.config.node_timeout_s * 1000)

    async def recover_lost_nodes(self, dead: list[str]) -> None:
        """Attempts sent by a node that died (or stopped) before any answer will never be
        answered: re-queue them now instead of waiting for their deadline.

        Dead nodes are forgotten first, then every unanswered attempt of a node that is not
        recorded is re-queued; a crash between the two steps is repaired by the next round.
        """
        if dead:
            for node in dead:
                log.warning(
                    "node %s lost: unseen for over %g s; its unanswered sends are re-queued",
                    node,
                    self.config.node_timeout_s,
                )
            await self.store.delete_nodes(dead)
            self.bus.nodes()
        # A page at a time: a dead node may have left thousands; the rest follow next round.
        lost = await self.store.orphaned_attempts(limit=self.dispatcher.policy.batch)
        if lost:
            await self.dispatcher.requeue(
                lost,
                error="coordinator lost before the backend answered",
                code=ErrorCode.NODE_LOST,
                hold=True,  # the backend may still be running them
            )

    async def purge_old_results(self, now: int) -> int:
        """Delete tasks past their retention, a chunk per transaction, at most
        `PURGE_CHUNKS_PER_ROUND` chunks a round (the rest follow next round)."""
        cutoff = now - int(self.config.result_retention_s * 1000)
        purged = 0
        for _ in range(PURGE_CHUNKS_PER_ROUND):
            deleted = await self.store.purge_tasks(finished_before=cutoff, limit=PURGE_CHUNK)
            purged += deleted
            if deleted < PURGE_CHUNK:
                break
            await asyncio.sleep(0)  # let the hot writes in between chunks
        return purged

    async def remove_offline_servers(self, now: int) -> None:
        """Servers the health monitor does not cover (no health URL) expire here too."""
        limit_ms = int(self.config.health.offline_removal_s * 1000)
        if not limit_ms:
            return  # never too long
        # Only the servers offline long enough (the few), not all of them every pass.
        expired = [
            s.id
            for s in await self.store.offline_servers(since_before=now - limit_ms)
            if registry.offline_too_long(s, now=now, limit_ms=limit_ms)
        ]
        if expired:
            await self.fleet.remove_offline(expired)
