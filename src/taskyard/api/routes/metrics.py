"""`GET /metrics`: Prometheus' text format, for an admin token or the metrics token."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response

from taskyard import errors
from taskyard.api.deps import CoordinatorDep
from taskyard.metrics import CONTENT_TYPE, PrometheusObserver

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, coordinator: CoordinatorDep) -> Response:
    """Scraped with `Authorization: Bearer <TASKYARD_METRICS_TOKEN>` (a Prometheus
    `authorization` block) or an admin JWT; 401 without either, 403 for other roles."""
    _authorize(request)
    observer: PrometheusObserver = request.app.state.metrics
    observer.long_polls.labels(coordinator.node_id).set(coordinator.events.waiting)
    body = await observer.render(
        coordinator.store, exports_cluster_gauges=coordinator.chores.holds_lease
    )
    return Response(body, media_type=CONTENT_TYPE)


def _authorize(request: Request) -> None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        raise errors.Unauthorized("Missing bearer token (the metrics token or an admin JWT)")
    metrics_token: str = request.app.state.metrics_token
    if metrics_token and hmac.compare_digest(credentials.encode(), metrics_token.encode()):
        return
    principal = request.app.state.token_verifier.verify(credentials)  # 401 if invalid
    if not principal.is_admin:
        raise errors.Forbidden("/metrics needs role `admin` or the metrics token")
