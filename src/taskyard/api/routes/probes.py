"""Liveness and readiness probes (no auth)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from taskyard.api.deps import CoordinatorDep
from taskyard.api.responses import JsonResponse

router = APIRouter(tags=["probes"])


@router.get("/")
async def liveness() -> dict[str, Any]:
    """The process is up."""
    return {"status": "ok", "service": "taskyard"}


@router.get("/ready", responses={503: {"description": "The database is unreachable"}})
async def readiness(coordinator: CoordinatorDep) -> JsonResponse:
    """The process can reach its database."""
    try:
        await coordinator.store.ping()
    except Exception:
        return JsonResponse({"status": "unavailable", "database": "unreachable"}, 503)
    return JsonResponse({"status": "ready", "database": "ok", "node": coordinator.node_id})
