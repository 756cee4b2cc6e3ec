"""`POST /api/tasks/batch`: up to `MAX_BATCH` tasks in one call and one transaction.

The body is validated whole (a bad item is a 400 naming it, `tasks.3.request.model`, and
nothing is stored); each task is then created as a single create would create it — the
caller owns it, and the rate limit on creates and the cap on unfinished tasks count every
one of them — and the answer lists them in the request's order.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from taskyard.api.deps import ClientDep, CoordinatorDep
from taskyard.api.errors import documented
from taskyard.api.responses import JsonResponse
from taskyard.api.schemas import TaskBatchIn, TaskBatchOut
from taskyard.domain.coordinator import Coordinator
from taskyard.domain.models import TaskOptions
from taskyard.domain.principal import Principal
from taskyard.ratelimit import RateLimiter, limited

router = APIRouter(prefix="/api/tasks", tags=["tasks"])


@router.post(
    "/batch",
    response_model=TaskBatchOut,
    responses=documented(e403="The token lacks the needed role"),
)
async def create_tasks(
    body: TaskBatchIn, request: Request, coordinator: CoordinatorDep, principal: ClientDep
) -> JsonResponse:
    """Create many tasks (role user or admin) in one transaction; returns once all are
    durably stored as WAITING. All of them are stored, or none."""
    return await create_batch_and_answer(request.app.state, coordinator, principal, body)


async def create_batch_and_answer(
    state: Any, coordinator: Coordinator, principal: Principal, body: TaskBatchIn
) -> JsonResponse:
    """What `POST /api/tasks/batch` answers (this route and its fast path, `api/hot.py`)."""
    limiter: RateLimiter = state.rate_limiter
    await limiter.check_creates(principal, len(body.tasks))
    items = [
        (
            item.request.model_dump(),
            TaskOptions(
                priority=item.priority,
                timeout_s=item.timeout_s,
                max_attempts=item.max_attempts,
                queue_timeout_s=item.queue_timeout_s,
            ),
        )
        for item in body.tasks
    ]
    tasks = await coordinator.tasks.create_tasks(
        owner=principal.sub, items=items, capped=limited(principal)
    )
    warnings = coordinator.reads.model_warnings
    warned = {model: await warnings(model) for model in {t.model for t in tasks}}
    out = [{"taskId": t.id, "status": t.status.value, "warnings": warned[t.model]} for t in tasks]
    return JsonResponse({"tasks": out, "count": len(out)})
