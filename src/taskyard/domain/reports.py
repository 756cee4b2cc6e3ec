"""A task's readers and reporters: who may read a task, who may report on it (and for which
server and attempt), and what a report (`PUT /api/task/{id}`, the seed's TaskResult) does to it.
Pure: `TaskReads.get_task` and `TaskService.report` apply them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from taskyard import errors
from taskyard.domain import lifecycle
from taskyard.domain.models import JSON, ErrorCode, Task, TaskStatus
from taskyard.domain.ports import TaskUpdate
from taskyard.domain.principal import Principal


@dataclass(frozen=True, slots=True)
class Report:
    """A backend's (or an admin's) report on a task: the seed's TaskResult."""

    status: TaskStatus
    body: JSON
    server_id: str | None = None
    progress: float | None = None
    message: str | None = None


def may_read(principal: Principal, task: Task) -> bool:
    if principal.is_admin or task.owner == principal.sub:
        return True
    # A backend may read the task it is running.
    return (
        principal.is_service
        and principal.server_id is not None
        and (principal.server_id == task.server_id)
    )


def reporter_claim(
    principal: Principal, task_id: str, report: Report, *, allow_unbound: bool
) -> tuple[str | None, int | None]:
    """Which server (and attempt) this caller speaks for; raise if it may not report at all."""
    if principal.is_admin:
        return None, None
    if not principal.is_service:
        raise errors.Forbidden("Only an admin or the task's backend may report on a task")
    if principal.task_id is not None:  # a callback token: bound to one attempt
        if principal.task_id != task_id:
            raise errors.Forbidden("This callback token belongs to another task")
        return principal.server_id, principal.attempt
    if principal.server_id is not None:  # a server token from registration
        return principal.server_id, None
    # A seed-style service token: the body names the server.
    if not allow_unbound:
        raise errors.Forbidden(
            "Service tokens bound to no server are refused; use the token from registration"
            " or the callback token (TASKYARD_ALLOW_UNBOUND_SERVICE_TOKENS=true allows them)"
        )
    if not report.server_id:
        raise errors.Forbidden("A service token without a server needs metadata.server_id")
    return report.server_id, None


def apply_report(task: Task, report: Report, *, now: int) -> tuple[TaskUpdate, Task]:
    if report.status is TaskStatus.FINISHED:
        update, updated = lifecycle.finish(task, result=report.body, now=now)
    elif report.status is TaskStatus.FAILED:
        error = (report.message or "backend reported FAILED")[:500]
        update, updated = lifecycle.fail(
            task, error=error, code=ErrorCode.BACKEND_FAILED, now=now, result=report.body
        )
    else:
        update, updated = lifecycle.acknowledge(task, progress=report.progress, now=now)
    if task.status is TaskStatus.WAITING:
        # Only an admin gets here: it may settle a task that is not running.
        update = dataclasses.replace(
            update, expect_status=(TaskStatus.WAITING,), expect_server=None
        )
    return update, updated
