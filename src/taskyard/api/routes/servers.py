"""Server routes: every one is admin only, except a server's own heartbeat."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request

from taskyard import errors
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
    MaintenanceIn,
    OkOut,
    RegisterOut,
    ServerOut,
    ServerRegister,
    ServersOut,
)
from taskyard.domain.registry import Registration
from taskyard.netguard import NetworkGuard, RefusedAddress

router = APIRouter(prefix="/api/servers", tags=["servers"])

ServerId = Annotated[str, Path(pattern=ID_PATTERN)]
_ERRORS = documented(e403="Not an admin")
_URL_FIELDS = ("predict", "health", "cancel")
_NOT_FOUND = documented(e403="Not an admin", e404="No such server")


@router.post("", response_model=RegisterOut, responses=_ERRORS)
async def register_server(
    body: ServerRegister, request: Request, coordinator: CoordinatorDep, _admin: AdminDep
) -> dict[str, Any]:
    """Register or replace a server; its first health check runs at once. An endpoint whose
    host is or resolves to a loopback, private, link-local, metadata or other non-public
    address is refused (400, naming the rule) unless TASKYARD_ALLOWED_BACKEND_NETWORKS allows
    it; development allows loopback."""
    await _check_destinations(request.app.state.network_guard, body)
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
        cancel_url=body.endpoints.cancel,
        api_key=body.api_key,
        auto_remove=body.auto_remove,
    )
    server, token = await coordinator.fleet.register_server(registration)
    return {"id": server.id, "success": True, "token": token}


async def _check_destinations(guard: NetworkGuard, body: ServerRegister) -> None:
    """Refuse, before anything is stored or sent, an endpoint the SSRF guard would not call."""
    for field in _URL_FIELDS:
        url = getattr(body.endpoints, field)
        if url is None:
            continue
        try:
            await guard.check_url(url)
        except RefusedAddress as exc:
            raise errors.InvalidInput(
                f"endpoints.{field}: {exc.message}",
                details=[
                    {
                        "loc": ["body", "endpoints", field],
                        "msg": exc.message,
                        "type": "address_refused",
                    }
                ],
            ) from None


@router.get("", response_model=ServersOut, responses=_ERRORS)
async def list_servers(coordinator: CoordinatorDep, _admin: AdminDep) -> JsonResponse:
    """List every registered server with its status, load and health."""
    # Serialized directly: validating a thousand entries against ServerOut took ~100 ms.
    servers = [present.server_out(s) for s in await coordinator.fleet.list_servers()]
    return JsonResponse({"servers": servers})


@router.post("/cleanup", response_model=CleanupOut, responses=_ERRORS)
async def cleanup(
    coordinator: CoordinatorDep,
    _admin: AdminDep,
    body: Annotated[CleanupIn | None, Body()] = None,
) -> dict[str, Any]:
    """Remove servers with no sign of life for `maxAgeMins` (default 5)."""
    max_age_mins = (body or CleanupIn()).maxAgeMins
    removed = await coordinator.fleet.cleanup(max_age_s=max_age_mins * 60)
    return {"success": True, "removedServers": removed}


@router.get("/{server_id}", response_model=ServerOut, responses=_NOT_FOUND)
async def get_server(
    server_id: ServerId, coordinator: CoordinatorDep, _admin: AdminDep
) -> JsonResponse:
    """One server with its status, load and health."""
    # Serialized directly, as the list is: validation against ServerOut would drop the
    # registration's extra fields, which the list shows.
    return JsonResponse(present.server_out(await coordinator.fleet.get_server(server_id)))


@router.put(
    "/{server_id}/maintenance",
    response_model=ServerOut,
    responses=documented(
        e403="Not an admin",
        e404="No such server",
        e409="The server was re-registered while the change was made; send it again",
    ),
)
async def set_maintenance(
    server_id: ServerId, body: MaintenanceIn, coordinator: CoordinatorDep, _admin: AdminDep
) -> JsonResponse:
    """Put a server in maintenance (`enabled: true`): it gets no new tasks, those running on
    it finish (`state` shows `draining`, then `maintenance`), its health checks go on and it
    is never removed automatically. `enabled: false` returns it to rotation after its next
    passing health check."""
    maintenance = coordinator.fleet.set_maintenance
    server = await maintenance(server_id, enabled=body.enabled, reason=body.reason)
    return JsonResponse(present.server_out(server))


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
    server = await coordinator.fleet.heartbeat(server_id, principal=principal, load=load)
    return {
        "id": server.id,
        "success": True,
        "lastHeartbeat": present.iso(server.last_heartbeat),
        "token": coordinator.fleet.renewed_server_token(server, principal),
    }


@router.delete("/{server_id}", response_model=OkOut, responses=_NOT_FOUND)
async def delete_server(
    server_id: ServerId, coordinator: CoordinatorDep, _admin: AdminDep
) -> dict[str, Any]:
    """Remove a server; its running tasks go back to the queue."""
    await coordinator.fleet.delete_server(server_id)
    return {"id": server_id, "success": True}
