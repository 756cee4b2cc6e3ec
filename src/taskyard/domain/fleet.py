"""`Fleet`: the backend servers as the API and the loops change them. Registration (and the
tokens it hands out), heartbeats, maintenance, deletion and the removal of stale or long-offline
servers (whose running tasks go back to the queue), and the reads of servers."""

from __future__ import annotations

import logging
from collections.abc import Callable

from taskyard import errors
from taskyard.domain import registry
from taskyard.domain.changes import UNSET
from taskyard.domain.clock import Clock
from taskyard.domain.cluster import Membership
from taskyard.domain.dispatcher import Dispatcher
from taskyard.domain.health import HealthMonitor, HealthPolicy
from taskyard.domain.models import JSON, ErrorCode, Server
from taskyard.domain.ports import ClusterBus, Store, TokenIssuer
from taskyard.domain.principal import Principal
from taskyard.domain.reads import RecentServers

log = logging.getLogger(__name__)


class Fleet:
    def __init__(
        self,
        *,
        store: Store,
        tokens: TokenIssuer,
        health: HealthMonitor,
        dispatcher: Dispatcher,
        membership: Membership,
        bus: ClusterBus,
        servers: RecentServers,
        policy: HealthPolicy,
        clock: Clock,
        work_appeared: Callable[[], None],
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.health = health
        self.dispatcher = dispatcher
        self.membership = membership
        self.bus = bus
        self.servers = servers
        self.policy = policy
        self.clock = clock
        self._work_appeared = work_appeared  # wakes the dispatchers here and elsewhere

    async def register_server(self, reg: registry.Registration) -> tuple[Server, str]:
        """Register or replace a server; check its health at once. Returns it and its token."""
        server = registry.new_server(
            reg,
            now=self.clock.now_ms(),
            interval_s=self.policy.interval_min_s,
            replaces=await self.store.get_server(reg.id),
        )
        await self.store.put_server(server)
        self.servers.forget()
        log.info(
            "server %s registered: %s",
            server.id,
            "offline until its first health check passes"
            if server.health_url
            else "online (no health URL: judged by heartbeats and dispatch results)",
            extra={"server_id": server.id},
        )
        if server.health_url and self.membership.owns(server.id):
            self.health.schedule(server.id)
        else:
            self.health.forget(server.id)
        if not server.health_url:
            self._work_appeared()
        self.bus.servers()  # its owner (maybe another node) schedules its checks
        return server, self.tokens.server_token(server.id, registration=server.revision)

    async def check_registration(self, principal: Principal) -> None:
        """Refuse a token issued for a server registration that is gone: the server was
        deleted or registered again (its `revision` changed). One primary-key read."""
        if principal.server_id is None or principal.registration is None:
            return
        server = await self.store.get_server(principal.server_id)
        if server is None or server.revision != principal.registration:
            raise errors.Unauthorized(
                "Token revoked: its server was deleted or registered again since it was issued"
            )

    def renewed_server_token(self, server: Server, principal: Principal) -> str:
        """A fresh server token for a heartbeat's answer: of the caller's own registration
        when its token names one (a heartbeat racing a new registration must not hand the old
        holder a token of the new one), else of the server's current one."""
        registration = principal.registration or server.revision
        return self.tokens.server_token(server.id, registration=registration)

    async def list_servers(self) -> list[Server]:
        return await self.store.list_servers()

    async def get_server(self, server_id: str) -> Server:
        server = await self.store.get_server(server_id)
        if server is None:
            raise errors.ServerNotFound(server_id)
        return server

    async def heartbeat(self, server_id: str, *, principal: Principal, load: JSON | None) -> Server:
        if not principal.is_admin and principal.server_id != server_id:
            # Only the server's own token: an unbound one could keep any server looking alive.
            raise errors.Forbidden(f"This token may not send heartbeats for {server_id}")
        server = await self.get_server(server_id)
        values = registry.heartbeat_values(server, now=self.clock.now_ms(), load=load)
        if not await self.store.update_server(server_id, values):
            raise errors.ServerNotFound(server_id)
        if values.status is not UNSET:
            log.info("server %s online: heartbeat", server_id, extra={"server_id": server_id})
            self._work_appeared()
        return await self.get_server(server_id)

    async def set_maintenance(self, server_id: str, *, enabled: bool, reason: str | None) -> Server:
        """Take a server out of rotation (its running tasks finish; it shows `draining`, then
        `maintenance`) or bring it back after its next passing health check. Stored, so every
        node and a restart see it; a server in maintenance is never removed automatically."""
        server = await self.get_server(server_id)
        now = self.clock.now_ms()
        values = registry.maintenance_values(server, enabled=enabled, reason=reason, now=now)
        if not await self.store.update_server(server_id, values, revision=server.revision):
            raise errors.Conflict(f"Server {server_id} was re-registered meanwhile; try again")
        self.servers.forget()
        if enabled:
            log.info(
                "server %s in maintenance: no new tasks%s",
                server_id,
                f" ({reason})" if reason else "",
                extra={"server_id": server_id},
            )
        else:
            log.info(
                "server %s out of maintenance: back in rotation %s",
                server_id,
                "after its next passing health check" if server.health_url else "now",
                extra={"server_id": server_id},
            )
            if server.health_url and self.membership.owns(server_id):
                self.health.schedule(server_id)
            self._work_appeared()
        self.bus.servers()  # the node that checks it re-reads its schedule
        return await self.get_server(server_id)

    async def delete_server(self, server_id: str) -> None:
        removed = await self.remove_servers(
            [server_id], reason="deleted by an admin", level=logging.INFO
        )
        if not removed:
            raise errors.ServerNotFound(server_id)

    async def cleanup(self, *, max_age_s: float) -> list[str]:
        """Remove servers with no sign of life for `max_age_s`."""
        now = self.clock.now_ms()
        stale = [
            s.id
            for s in await self.store.list_servers()
            if registry.may_remove(s)
            and registry.is_stale(s, now=now, max_age_ms=int(max_age_s * 1000))
        ]
        return await self.remove_servers(stale, reason="stale: no heartbeat")

    async def remove_servers(
        self, server_ids: list[str], *, reason: str, level: int = logging.WARNING
    ) -> list[str]:
        """Delete servers, stop checking them and re-queue the tasks they were running.
        `level`: how the removal is logged (an admin's deletion is no cause for alarm)."""
        removed = await self.store.delete_servers(server_ids)
        self.servers.forget()
        for server_id in removed:
            self.health.forget(server_id)
            log.log(
                level, "server %s removed: %s", server_id, reason, extra={"server_id": server_id}
            )
        if removed:
            running = await self.store.processing_on(removed)
            await self.dispatcher.requeue(  # logs each task it re-queues
                running, error=f"server removed ({reason})", code=ErrorCode.SERVER_REMOVED
            )
            self.bus.servers()
        return removed

    async def remove_offline(self, server_ids: list[str]) -> None:
        """Remove servers offline for longer than the policy allows (`offline_removal_s`)."""
        await self.remove_servers(server_ids, reason=self.offline_too_long)

    @property
    def offline_too_long(self) -> str:
        """Why a long-offline server is removed, as the log and its tasks' errors say it."""
        return f"offline for over {self.policy.offline_removal_s:g} s"
