"""Server registration rules: what a new or replaced registration looks like. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def new_server(reg: Registration, *, now: int, interval_s: float) -> Server:
    """A fresh registration. With a health URL it is offline until its first check passes;
    without one there is nothing to check, so heartbeats and dispatch results judge it."""
    return Server(
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


def heartbeat_values(server: Server, *, now: int, load: JSON | None) -> dict[str, Any]:
    values: dict[str, Any] = {"last_heartbeat": now}
    if load is not None:
        values["reported_load"] = load
    if not server.health_url and server.status is ServerStatus.OFFLINE:
        values |= {"status": ServerStatus.ONLINE, "offline_since": None, "dispatch_failures": 0}
    return values


def is_stale(server: Server, *, now: int, max_age_ms: int) -> bool:
    """No sign of life (heartbeat, passed check, registration) within `max_age_ms`."""
    return now - server.last_seen > max_age_ms


def offline_too_long(server: Server, *, now: int, limit_ms: int) -> bool:
    return (
        server.status is ServerStatus.OFFLINE
        and server.offline_since is not None
        and now - server.offline_since > limit_ms
    )
