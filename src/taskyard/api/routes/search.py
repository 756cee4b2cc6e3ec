"""Task search: `GET /api/tasks`, newest first, with keyset paging through an opaque cursor."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from taskyard.api import present
from taskyard.api.deps import ClientDep, CoordinatorDep
from taskyard.api.errors import documented
from taskyard.api.responses import JsonResponse
from taskyard.api.schemas import MAX_ID_LENGTH, TasksPage
from taskyard.domain.models import Task, TaskStatus
from taskyard.domain.ports import TaskQuery

router = APIRouter(prefix="/api/tasks", tags=["tasks"])

MAX_LIMIT = 500
EPOCH_MS_MAX = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
# `<created_at>.<id>` of the last task of the page before. Opaque to clients: pass it as it came.
CURSOR_PATTERN = r"^(0|[1-9][0-9]{0,14})\.[A-Za-z0-9._:@-]{1,128}$"
StatusName = Literal["WAITING", "PROCESSING", "FINISHED", "FAILED", "CANCELLED"]
Name = Annotated[str | None, Query(min_length=1, max_length=256, pattern="^[^\\x00]*$")]
EpochMs = Annotated[int | None, Query(ge=0, le=EPOCH_MS_MAX, description="epoch ms, exclusive")]


@router.get(
    "",
    response_model=TasksPage,
    responses=documented(e400="A bad filter or cursor", e403="Not a user or admin"),
)
async def search_tasks(
    coordinator: CoordinatorDep,
    principal: ClientDep,
    status: Annotated[list[StatusName] | None, Query(description="repeatable: any of")] = None,
    model: Name = None,
    server_id: Annotated[
        str | None, Query(min_length=1, max_length=MAX_ID_LENGTH, pattern="^[^\\x00]*$")
    ] = None,
    owner: Annotated[Name, Query(description="admin only: a user sees only its own")] = None,
    error_code: Annotated[
        str | None, Query(min_length=1, max_length=64, pattern="^[a-z_]+$")
    ] = None,
    created_after: EpochMs = None,
    created_before: EpochMs = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="nextCursor of the page before")
    ] = None,
) -> JsonResponse:
    """Search tasks, newest first: a user's own, or anyone's for an admin. Each page is
    `limit` tasks at most, without request and result (read one task for those); follow
    `nextCursor` for the next. Tasks created while paging never shift a page: they are newer
    than the cursor."""
    query = TaskQuery(
        limit=limit + 1,  # one more tells whether there is a next page
        statuses=tuple(TaskStatus(s) for s in status or ()),
        model=model,
        server_id=server_id,
        owner=owner,
        error_code=error_code,
        created_after=created_after,
        created_before=created_before,
        before=decode_cursor(cursor) if cursor is not None else None,
    )
    found = await coordinator.search_tasks(query, principal=principal)
    page = found[:limit]
    more = len(found) > limit
    return JsonResponse(
        {
            "tasks": [present.task_summary(task) for task in page],
            "nextCursor": encode_cursor(page[-1]) if more else None,
        }
    )


def encode_cursor(task: Task) -> str:
    """Where the next page starts: after this task in (created_at, id) descending order."""
    return f"{task.created_at}.{task.id}"


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The keyset of a cursor. Its pattern (CURSOR_PATTERN, published in the schema) is all
    it takes to be usable: any such pair is a place in the order, so a client cannot send a
    schema-valid cursor that fails."""
    created_at, _, task_id = cursor.partition(".")
    return int(created_at), task_id
