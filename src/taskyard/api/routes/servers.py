"""Server routes: every one is admin only, except a server's own heartbeat."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path

from taskyard.api import present
from taskyard.api.deps import AdminDep, AdminOrServiceDep, CoordinatorDep
from taskyard.api.errors import documented
from taskyard.api.responses import JsonResponse
from taskyard.api.schemas import (
    ID_PATTERN,
    CleanupIn,
    CleanupOut,
    HeartbeatIn,
    HeartbeatOut,
    OkOut,
    RegisterOut,
    ServerOut,
    ServerRegister,
    ServersOut,
)
from taskyard.domain.registry import Registration

router = APIRouter(prefix="/api/servers", tags=["servers"])

ServerId = Annotated[str, Path(pattern=ID_PATTERN)]
_ERRORS = documented(e403="Not an admin")
_NOT_FOUND = documented(e403="Not an admin", e404="No such server")


@router.post("", response_model=RegisterOut, responses=_ERRORS)
async def register_server(
    body: ServerRegister, coordinator: CoordinatorDep, _admin: AdminDep
) -> dict[str, Any]:
    """Register or replace a server; its first health check runs at once."""
    extra = body.model_extra or {}
    registration = Registration(
        id=body.id,
        name=body.name,
        provider=body.provider,
        predict_url=body.endpoints.predict,
        health_url=body.endpoints.health,
        is_async=body.is_async,
        callback=body.callback,
        max_concurrency=body.max_concurrency,
        models=tuple(body.models),
        weight=body.weight,
        extra=dict(extra),
    )
    server, token = await coordinator.register_server(registration)
    return {"id": server.id, "success": True, "token": token}


@router.get("", response_model=ServersOut, responses=_ERRORS)
async def list_servers(coordinator: CoordinatorDep, _admin: AdminDep) -> JsonResponse:
    """List every registered server with its status, load and health."""
    # Serialized directly: validating a thousand entries against ServerOut took ~100 ms.
    servers = [present.server_out(s) for s in await coordinator.list_servers()]
    return JsonResponse({"servers": servers})


@router.post("/cleanup", response_model=CleanupOut, responses=_ERRORS)
async def cleanup(
    coordinator: CoordinatorDep,
    _admin: AdminDep,
    body: Annotated[CleanupIn | None, Body()] = None,
) -> dict[str, Any]:
    """Remove servers with no sign of life for `maxAgeMins` (default 5)."""
    max_age_mins = (body or CleanupIn()).maxAgeMins
    removed = await coordinator.cleanup(max_age_s=max_age_mins * 60)
    return {"success": True, "removedServers": removed}


@router.get("/{server_id}", response_model=ServerOut, responses=_NOT_FOUND)
async def get_server(
    server_id: ServerId, coordinator: CoordinatorDep, _admin: AdminDep
) -> dict[str, Any]:
    """One server with its status, load and health."""
    return present.server_out(await coordinator.get_server(server_id))


@router.post(
    "/{server_id}/heartbeat",
    response_model=HeartbeatOut,
    responses=_NOT_FOUND | documented(e403="Neither an admin nor this server's token"),
)
async def heartbeat(
    server_id: ServerId,
    coordinator: CoordinatorDep,
    principal: AdminOrServiceDep,
    body: Annotated[HeartbeatIn | None, Body()] = None,
) -> dict[str, Any]:
    """Record a heartbeat (the server's own `service` token, or an admin); may carry load."""
    load = body.model_dump() if body is not None and body.model_extra else None
    server = await coordinator.heartbeat(server_id, principal=principal, load=load)
    return {"id": server.id, "success": True, "lastHeartbeat": present.iso(server.last_heartbeat)}


@router.delete("/{server_id}", response_model=OkOut, responses=_NOT_FOUND)
async def delete_server(
    server_id: ServerId, coordinator: CoordinatorDep, _admin: AdminDep
) -> dict[str, Any]:
    """Remove a server; its running tasks go back to the queue."""
    await coordinator.delete_server(server_id)
    return {"id": server_id, "success": True}
