"""Liveness and readiness probes (no auth)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from taskyard import __version__
from taskyard.api.deps import CoordinatorDep
from taskyard.api.responses import JsonResponse

router = APIRouter(tags=["probes"])


@router.get("/")
async def liveness() -> dict[str, Any]:
    """The process is up."""
    return {"status": "ok", "service": "taskyard"}


@router.get("/health")
async def health() -> dict[str, Any]:
    """The process is up, in the seed's newer shape: backends and load balancers guess this
    path. Like `/`, it does not touch the database (that is `/ready`)."""
    return {"status": "healthy", "timestamp": _iso_now(), "version": __version__}


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@router.get(
    "/ready",
    responses={503: {"description": "The database is unreachable, or a background loop fails"}},
)
async def readiness(coordinator: CoordinatorDep) -> JsonResponse:
    """The process can reach its database, and its background loops (dispatcher, health
    monitor, chores) do their work: a loop failing again and again is named with its error."""
    try:
        await coordinator.store.ping()
    except Exception:
        return JsonResponse({"status": "unavailable", "database": "unreachable"}, 503)
    failing = coordinator.failing_loops()
    if failing:
        body = {"status": "unavailable", "database": "ok", "failingLoops": failing}
        return JsonResponse(body, 503)
    return JsonResponse({"status": "ready", "database": "ok", "node": coordinator.node_id})
