"""Task search: `GET /api/tasks`, newest first, with keyset paging through an opaque cursor;
and the bulk actions on what a search finds (`POST /api/tasks/retry`, `…/cancel`)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from taskyard.api import present
from taskyard.api.deps import AdminDep, ClientDep, CoordinatorDep
from taskyard.api.errors import documented
from taskyard.api.responses import JsonResponse
from taskyard.api.schemas import MAX_ID_LENGTH, BulkOut, TasksPage
from taskyard.domain.coordinator import Coordinator
from taskyard.domain.models import Task, TaskStatus
from taskyard.domain.ports import TaskQuery
from taskyard.domain.principal import Principal
from taskyard.domain.tasks import BulkAction

router = APIRouter(prefix="/api/tasks", tags=["tasks"])

MAX_LIMIT = 500
EPOCH_MS_MAX = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
# `<created_at>.<id>` of the last task of the page before. Opaque to clients: pass it as it came.
CURSOR_PATTERN = r"^(0|[1-9][0-9]{0,14})\.[A-Za-z0-9._:@-]{1,128}$"
StatusName = Literal["WAITING", "PROCESSING", "FINISHED", "FAILED", "CANCELLED"]
Name = Annotated[str | None, Query(min_length=1, max_length=256, pattern="^[^\\x00]*$")]
EpochMs = Annotated[int | None, Query(ge=0, le=EPOCH_MS_MAX, description="epoch ms, exclusive")]


ServerIdFilter = Annotated[
    str | None, Query(min_length=1, max_length=MAX_ID_LENGTH, pattern="^[^\\x00]*$")
]
ErrorCodeFilter = Annotated[str | None, Query(min_length=1, max_length=64, pattern="^[a-z_]+$")]


def task_filters(
    status: Annotated[list[StatusName] | None, Query(description="repeatable: any of")] = None,
    model: Name = None,
    server_id: ServerIdFilter = None,
    owner: Annotated[Name, Query(description="admin only: a user sees only its own")] = None,
    error_code: ErrorCodeFilter = None,
    created_after: EpochMs = None,
    created_before: EpochMs = None,
) -> TaskQuery:
    """The filters of a task search, shared by the search and the bulk actions (no limit)."""
    return TaskQuery(
        limit=0,
        statuses=tuple(TaskStatus(s) for s in status or ()),
        model=model,
        server_id=server_id,
        owner=owner,
        error_code=error_code,
        created_after=created_after,
        created_before=created_before,
    )


TaskFilters = Annotated[TaskQuery, Depends(task_filters)]


@router.get(
    "",
    response_model=TasksPage,
    responses=documented(e400="A bad filter or cursor", e403="Not a user or admin"),
)
async def search_tasks(
    coordinator: CoordinatorDep,
    principal: ClientDep,
    filters: TaskFilters,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="nextCursor of the page before")
    ] = None,
) -> JsonResponse:
    """Search tasks, newest first: a user's own, or anyone's for an admin. Each page is
    `limit` tasks at most, without request and result (read one task for those); follow
    `nextCursor` for the next. Tasks created while paging never shift a page: they are newer
    than the cursor."""
    query = dataclasses.replace(
        filters,
        limit=limit + 1,  # one more tells whether there is a next page
        before=decode_cursor(cursor) if cursor is not None else None,
    )
    found = await coordinator.reads.search_tasks(query, principal=principal)
    page = found[:limit]
    more = len(found) > limit
    return JsonResponse(
        {
            "tasks": [present.task_summary(task) for task in page],
            "nextCursor": encode_cursor(page[-1]) if more else None,
        }
    )


BULK_LIMIT = 1000


Limit = Annotated[int, Query(ge=1, le=BULK_LIMIT, description="tasks changed at most")]
_BULK_ERRORS = documented(e400="A bad filter", e403="Not an admin")


@router.post("/retry", response_model=BulkOut, responses=_BULK_ERRORS)
async def bulk_retry(
    coordinator: CoordinatorDep, principal: AdminDep, filters: TaskFilters, limit: Limit = 100
) -> JsonResponse:
    """Retry the FAILED or CANCELLED tasks that match the filters of `GET /api/tasks`, newest
    first, at most `limit` per call (admin), as `POST /api/task/{id}/retry` does each. `more`
    says whether matching tasks remain: call again to go on."""
    return await _bulk(BulkAction.RETRY, coordinator, principal, filters, limit)


@router.post("/cancel", response_model=BulkOut, responses=_BULK_ERRORS)
async def bulk_cancel(
    coordinator: CoordinatorDep, principal: AdminDep, filters: TaskFilters, limit: Limit = 100
) -> JsonResponse:
    """Cancel the WAITING or PROCESSING tasks that match the filters of `GET /api/tasks`,
    newest first, at most `limit` per call (admin), as `POST /api/task/{id}/cancel` does
    each. `more` says whether matching tasks remain: call again to go on."""
    return await _bulk(BulkAction.CANCEL, coordinator, principal, filters, limit)


async def _bulk(
    action: BulkAction,
    coordinator: Coordinator,
    principal: Principal,
    filters: TaskQuery,
    limit: int,
) -> JsonResponse:
    query = dataclasses.replace(filters, limit=limit)
    changed, more = await coordinator.tasks.bulk_change(action, query, principal=principal)
    return JsonResponse({"changed": changed, "count": len(changed), "more": more})


def encode_cursor(task: Task) -> str:
    """Where the next page starts: after this task in (created_at, id) descending order."""
    return f"{task.created_at}.{task.id}"


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The keyset of a cursor. Its pattern (CURSOR_PATTERN, published in the schema) is all
    it takes to be usable: any such pair is a place in the order, so a client cannot send a
    schema-valid cursor that fails."""
    created_at, _, task_id = cursor.partition(".")
    return int(created_at), task_id
