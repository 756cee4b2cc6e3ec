"""Server registration rules: what a new or replaced registration looks like. Pure."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from taskyard.domain import ejection
from taskyard.domain.changes import UNSET, ServerPatch
from taskyard.domain.models import JSON, Server, ServerStatus


@dataclass(frozen=True, slots=True)
class Registration:
    id: str
    name: str
    provider: str
    predict_url: str
    health_url: str | None
    is_async: bool = False
    callback: bool = False
    max_concurrency: int = 1
    models: tuple[str, ...] = ()
    weight: float = 1.0
    extra: JSON | None = None
    cancel_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    auto_remove: bool = True


def new_server(
    reg: Registration, *, now: int, interval_s: float, replaces: Server | None = None
) -> Server:
    """A fresh registration. With a health URL it is offline until its first check passes;
    without one there is nothing to check, so heartbeats and dispatch results judge it.

    Replacing a registration starts its health and ejection state over, but keeps it in
    maintenance: a backend restarted during its maintenance re-registers on its own."""
    kept: dict[str, Any] = {}
    if replaces is not None and replaces.maintenance:
        kept = {
            "maintenance": True,
            "maintenance_reason": replaces.maintenance_reason,
            "maintenance_since": replaces.maintenance_since,
        }
    return Server(
        **kept,
        revision=uuid.uuid4().hex,
        cancel_url=reg.cancel_url,
        api_key=reg.api_key,
        auto_remove=reg.auto_remove,
        id=reg.id,
        name=reg.name,
        provider=reg.provider,
        predict_url=reg.predict_url,
        health_url=reg.health_url,
        is_async=reg.is_async,
        callback=reg.callback,
        max_concurrency=reg.max_concurrency,
        models=reg.models,
        weight=reg.weight,
        extra=reg.extra or {},
        status=ServerStatus.OFFLINE if reg.health_url else ServerStatus.ONLINE,
        registered_at=now,
        last_heartbeat=now,
        offline_since=now if reg.health_url else None,
        check_interval_s=interval_s,
        next_check_at=now,
    )


def heartbeat_values(server: Server, *, now: int, load: JSON | None) -> ServerPatch:
    values = ServerPatch(last_heartbeat=now, reported_load=UNSET if load is None else load)
    if not server.health_url and server.status is ServerStatus.OFFLINE:
        values |= ServerPatch(status=ServerStatus.ONLINE, offline_since=None, dispatch_failures=0)
    if not server.health_url and ejection.may_readmit(server, now=now):
        values |= ejection.READMITTED  # its heartbeat stands in for a passing check
    return values


def maintenance_values(
    server: Server, *, enabled: bool, reason: str | None, now: int
) -> ServerPatch:
    """Into maintenance (no new tasks; those running finish), or out of it: back in rotation
    after its next passing health check (at once without a health URL)."""
    if enabled:
        return ServerPatch(
            maintenance=True,
            maintenance_reason=reason,
            maintenance_since=server.maintenance_since if server.maintenance else now,
        )
    values = ServerPatch(maintenance=False, maintenance_reason=None, maintenance_since=None)
    if server.maintenance and server.health_url:
        values |= ServerPatch(
            status=ServerStatus.OFFLINE,
            offline_since=now,
            last_error="back from maintenance: waiting for a passing health check",
            next_check_at=now,
        )
    return values


def may_remove(server: Server) -> bool:
    """Whether automatic removal (offline too long, stale) may take this server."""
    return server.auto_remove and not server.maintenance


def is_stale(server: Server, *, now: int, max_age_ms: int) -> bool:
    """No sign of life (heartbeat, passed check, registration) within `max_age_ms`."""
    return now - server.last_seen > max_age_ms


def offline_too_long(server: Server, *, now: int, limit_ms: int) -> bool:
    """Offline for over `limit_ms` (0: never too long) and removable."""
    return (
        limit_ms > 0
        and may_remove(server)
        and server.status is ServerStatus.OFFLINE
        and server.offline_since is not None
        and now - server.offline_since > limit_ms
    )
