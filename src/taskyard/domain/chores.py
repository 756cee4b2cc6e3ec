"""Periodic housekeeping: node liveness, offline-server removal, lost attempts, result purge."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from taskyard.domain import registry
from taskyard.domain.loops import Wakeable
from taskyard.domain.models import ErrorCode, now_ms

if TYPE_CHECKING:
    from taskyard.domain.service import Coordinator


class Chores(Wakeable):
    def __init__(self, coordinator: Coordinator) -> None:
        super().__init__()
        self.c = coordinator
        self.host = socket.gethostname()

    async def run(self) -> None:
        await self.repeat("chores", self.step)

    async def step(self) -> float:
        c, now = self.c, now_ms()
        await c.store.touch_node(node_id=c.node_id, host=self.host, now=now)
        await self.recover_lost_nodes(now)
        await self.remove_offline_servers(now)
        await c.store.purge_tasks(finished_before=now - int(c.config.result_retention_s * 1000))
        return c.config.chores_interval_s

    async def recover_lost_nodes(self, now: int) -> None:
        """Attempts sent by a coordinator that died before any answer will never be answered:
        re-queue them now instead of waiting for their deadline."""
        c = self.c
        dead = [
            n
            for n in await c.store.dead_nodes(seen_before=now - int(c.config.node_timeout_s * 1000))
            if n != c.node_id
        ]
        if not dead:
            return
        lost = await c.store.unacked_attempts(node_ids=dead)
        await c.dispatcher.requeue(
            lost, error="coordinator lost before the backend answered", code=ErrorCode.NODE_LOST
        )
        await c.store.delete_nodes(dead)

    async def remove_offline_servers(self, now: int) -> None:
        """Servers the health monitor does not cover (no health URL) expire here too."""
        c = self.c
        limit_ms = int(c.config.health.offline_removal_s * 1000)
        expired = [
            s.id
            for s in await c.store.list_servers()
            if registry.offline_too_long(s, now=now, limit_ms=limit_ms)
        ]
        if expired:
            await c.remove_servers(expired, reason="offline too long")
