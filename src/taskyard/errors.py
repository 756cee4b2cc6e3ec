"""Domain errors. The API maps them to HTTP statuses in one table (`api/errors.py`).

TaskyardError
 ├── NotFound
 │    ├── TaskNotFound
 │    └── ServerNotFound
 ├── Conflict
 │    ├── StaleReport          a report for an attempt that no longer holds the task
 │    └── TaskFinal            the task is already FINISHED, FAILED or CANCELLED
 ├── Forbidden                authenticated but not allowed
 ├── Unauthorized             no or invalid credentials
 └── InvalidInput
"""

from __future__ import annotations


class TaskyardError(Exception):
    """Something went wrong in taskyard."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__ or type(self).__name__)

    @property
    def message(self) -> str:
        return str(self.args[0])


class NotFound(TaskyardError):
    """Not found."""


class TaskNotFound(NotFound):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"Task {task_id} not found")


class ServerNotFound(NotFound):
    def __init__(self, server_id: str) -> None:
        super().__init__(f"Service {server_id} not found")


class Conflict(TaskyardError):
    """The request conflicts with the current state."""


class StaleReport(Conflict):
    """This report is for an attempt that no longer holds the task."""


class TaskFinal(Conflict):
    """The task has already reached a final state."""


class Forbidden(TaskyardError):
    """Not allowed."""


class Unauthorized(TaskyardError):
    """Missing or invalid credentials."""


class InvalidInput(TaskyardError):
    """Invalid input."""
