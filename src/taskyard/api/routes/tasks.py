"""Task routes: create, read, report on, cancel, retry."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from taskyard import auth
from taskyard.api import present
from taskyard.api.deps import AdminOrServiceDep, ClientDep, CoordinatorDep, PrincipalDep
from taskyard.api.errors import documented
from taskyard.api.responses import JsonResponse
from taskyard.api.schemas import (
    MAX_ATTEMPTS,
    MAX_ID_LENGTH,
    MAX_PRIORITY,
    MAX_QUEUE_TIMEOUT_S,
    MAX_TIMEOUT_S,
    TaskCreate,
    TaskOut,
    TaskResultIn,
)
from taskyard.config import MAX_LONG_POLL_S
from taskyard.domain.models import JSON, TaskOptions, TaskStatus
from taskyard.domain.service import Coordinator, Report
from taskyard.ratelimit import limited

router = APIRouter(prefix="/api/task", tags=["tasks"])

# The API's bound on `?wait=`; proxies commonly cut idle requests not much later. A node holds
# a long poll at most TASKYARD_LONG_POLL_MAX_S of it (`held_s`).
MAX_WAIT_S = MAX_LONG_POLL_S

TaskId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)]
_FORBIDDEN = "The token lacks the needed role"
_ERRORS = documented(e403=_FORBIDDEN)
_NOT_FOUND = documented(e403=_FORBIDDEN, e404="No such task (or not yours)")


@router.post("", response_model=TaskOut, responses=_ERRORS)
async def create_task(
    body: TaskCreate,
    request: Request,
    coordinator: CoordinatorDep,
    principal: ClientDep,
    priority: Annotated[
        int, Query(ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="higher runs first")
    ] = 0,
    timeout_s: Annotated[
        float | None, Query(gt=0, le=MAX_TIMEOUT_S, description="processing deadline per attempt")
    ] = None,
    max_attempts: Annotated[int | None, Query(ge=1, le=MAX_ATTEMPTS)] = None,
    queue_timeout_s: Annotated[
        float | None, Query(gt=0, le=MAX_QUEUE_TIMEOUT_S, description="fail if not started by then")
    ] = None,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="seconds to wait for the new task to become final before answering",
        ),
    ] = 0,
) -> JsonResponse:
    """Create a task (role user or admin); returns once it is durably stored as WAITING, or
    with `wait`, once it is final (at most `wait` seconds later: one request instead of a
    create and a long poll)."""
    options = TaskOptions(
        priority=priority,
        timeout_s=timeout_s,
        max_attempts=max_attempts,
        queue_timeout_s=queue_timeout_s,
    )
    return await create_and_answer(
        request.app.state, coordinator, principal, body.model_dump(), options, wait_s=wait
    )


def held_s(state: Any, wait_s: float) -> float:
    """How long a long poll is held: the `?wait=` asked, at most TASKYARD_LONG_POLL_MAX_S
    (`create_app` keeps it in the app's state). Past it the task is answered as it is then, as
    when the wait runs out; clients ask again."""
    cap: float = state.long_poll_max_s
    return min(wait_s, cap)


async def create_and_answer(
    state: Any,
    coordinator: Coordinator,
    principal: auth.Principal,
    body: JSON,
    options: TaskOptions,
    *,
    wait_s: float,
) -> JsonResponse:
    """What `POST /api/task` answers (this route and its fast path, `api/hot.py`). A wait is
    counted among the user's open long polls from before the create: over the limit, the
    create is refused and nothing is stored."""
    wait_s = held_s(state, wait_s)
    with state.open_waits.hold(principal) if wait_s > 0 else contextlib.nullcontext():
        task = await coordinator.create_task(
            owner=principal.sub, request=body, options=options, capped=limited(principal)
        )
        warnings = await coordinator.create_warnings(task)
        if wait_s <= 0:
            return JsonResponse(present.task_out(task, warnings=warnings))
        task = await coordinator.wait_task(task.id, principal=principal, wait_s=wait_s)
    waiting = await coordinator.why_waiting(task)
    return JsonResponse(present.task_out(task, waiting=waiting, warnings=warnings))


@router.get("/{task_id}", response_model=TaskOut, responses=_NOT_FOUND)
async def get_task(
    task_id: TaskId,
    request: Request,
    coordinator: CoordinatorDep,
    principal: PrincipalDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="seconds to wait for the task to become final before answering",
        ),
    ] = 0,
) -> JsonResponse:
    """Read a task (its owner or an admin); with `wait`, answer once it is final (long poll).
    A WAITING task says why it waits (`taskDetails.waiting`)."""
    wait = held_s(request.app.state, wait)
    if wait > 0:
        with request.app.state.open_waits.hold(principal):
            task = await coordinator.wait_task(task_id, principal=principal, wait_s=wait)
    else:
        task = await coordinator.get_task(task_id, principal=principal)
    return JsonResponse(present.task_out(task, waiting=await coordinator.why_waiting(task)))


@router.put(
    "/{task_id}",
    response_model=TaskOut,
    responses=_NOT_FOUND | documented(e409="Superseded attempt or final task"),
)
async def report_task(
    task_id: TaskId, body: TaskResultIn, coordinator: CoordinatorDep, principal: AdminOrServiceDep
) -> JsonResponse:
    """Report progress or the result (admin, or the backend holding the current attempt)."""
    report = Report(
        status=TaskStatus(body.metadata.status),
        body=body.model_dump(mode="json"),
        server_id=body.metadata.server_id,
        progress=body.metadata.progress,
        message=body.metadata.message,
    )
    task = await coordinator.report(task_id, report, principal=principal)
    return JsonResponse(present.task_out(task))


@router.post(
    "/{task_id}/cancel",
    response_model=TaskOut,
    responses=_NOT_FOUND | documented(e409="The task is already final"),
)
async def cancel_task(
    task_id: TaskId, coordinator: CoordinatorDep, principal: ClientDep
) -> JsonResponse:
    """Cancel a waiting or running task (its owner or an admin)."""
    task = await coordinator.cancel_task(task_id, principal=principal)
    return JsonResponse(present.task_out(task))


@router.delete(
    "/{task_id}",
    response_model=TaskOut,
    responses=_NOT_FOUND | documented(e409="The task is already final"),
)
async def delete_task(
    task_id: TaskId, coordinator: CoordinatorDep, principal: ClientDep
) -> JsonResponse:
    """Cancel a waiting or running task, as `POST …/cancel` does (the seed's newer version
    cancels with DELETE). The task is kept, CANCELLED, with its history."""
    return await cancel_task(task_id, coordinator, principal)


@router.post(
    "/{task_id}/retry",
    response_model=TaskOut,
    responses=_NOT_FOUND | documented(e409="The task is not FAILED or CANCELLED"),
)
async def retry_task(
    task_id: TaskId, coordinator: CoordinatorDep, principal: ClientDep
) -> JsonResponse:
    """Send a FAILED or CANCELLED task back to the queue (its owner or an admin): the same id,
    a fresh attempt budget (and queue timeout), its earlier attempts kept in the history."""
    task = await coordinator.retry_task(task_id, principal=principal)
    return JsonResponse(present.task_out(task, waiting=await coordinator.why_waiting(task)))
