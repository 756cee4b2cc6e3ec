"""Statistics routes (admin): the same answer from every node, read from the database."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from taskyard.api import present
from taskyard.api.deps import AdminDep, CoordinatorDep
from taskyard.api.errors import documented
from taskyard.api.responses import JsonResponse
from taskyard.api.schemas import ID_PATTERN
from taskyard.api.stats_schemas import HourlyOut, ServerStatsOut, StatsOut

router = APIRouter(prefix="/api/stats", tags=["stats"])

_ERRORS = documented(e403="Not an admin")


@router.get("", response_model=StatsOut, responses=_ERRORS)
async def overview(coordinator: CoordinatorDep, _admin: AdminDep) -> JsonResponse:
    """Counts by status, queue and capacity per model, throughput over the last 1 min, 15 min
    and 1 h, attempt outcomes over the last hour, queue wait and processing percentiles over
    the last 15 min, servers, and models that wait with no server."""
    overview = await coordinator.stats.overview(now=coordinator.clock.now_ms())
    return JsonResponse(present.stats_out(overview))


@router.get("/hourly", response_model=HourlyOut, responses=_ERRORS)
async def hourly(coordinator: CoordinatorDep, _admin: AdminDep) -> JsonResponse:
    """The last 24 hours, one entry per hour: created, finished, failed, mean processing."""
    hours = await coordinator.stats.hourly(now=coordinator.clock.now_ms())
    return JsonResponse(present.hourly_out(hours))


@router.get(
    "/servers/{server_id}",
    response_model=ServerStatsOut,
    responses=documented(e403="Not an admin", e404="No such server"),
)
async def server_stats(
    server_id: Annotated[str, Path(pattern=ID_PATTERN)],
    coordinator: CoordinatorDep,
    _admin: AdminDep,
    window_min: Annotated[int, Query(ge=1, le=24 * 60, description="minutes")] = 60,
) -> JsonResponse:
    """One server: attempts, successes and failures by errorCode over the window, latency
    percentiles of its results, in-flight, state and last error, and its recent attempts."""
    server = await coordinator.fleet.get_server(server_id)
    now = coordinator.clock.now_ms()
    stats = await coordinator.stats.server(server, now=now, window_min=window_min)
    recent = await coordinator.stats.recent_attempts(server_id)
    return JsonResponse(present.server_stats_out(stats, recent))
