"""Task search: `GET /api/tasks`, newest first, with keyset paging through an opaque cursor."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query

from taskyard import errors
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
    cursor: Annotated[str | None, Query(max_length=512, description="from nextCursor")] = None,
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
    raw = orjson.dumps([task.created_at, task.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, task_id = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise errors.InvalidInput("Invalid cursor: pass nextCursor as it was returned") from exc
    if (
        not isinstance(created_at, int)
        or isinstance(created_at, bool)
        or not 0 <= created_at <= EPOCH_MS_MAX
        or not isinstance(task_id, str)
        or not 0 < len(task_id) <= MAX_ID_LENGTH
        or "\x00" in task_id
    ):
        raise errors.InvalidInput("Invalid cursor: pass nextCursor as it was returned")
    return created_at, task_id
