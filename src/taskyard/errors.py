"""Domain errors. The API maps them to HTTP statuses in one table (`api/errors.py`).

TaskyardError
 ├── NotFound
 │    ├── TaskNotFound
 │    └── ServerNotFound
 ├── Conflict
 │    ├── StaleReport          a report for an attempt that no longer holds the task
 │    ├── TaskFinal            the task is already FINISHED, FAILED or CANCELLED
 │    └── TaskExists           a new task's id is already taken
 ├── Forbidden                authenticated but not allowed
 ├── Unauthorized             no or invalid credentials
 ├── InvalidInput
 └── Unavailable              not now: try again after `retry_after_s`
      ├── StorageUnavailable   the database cannot be reached or used just now
      └── StorageBusy          too many writes are already waiting
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable


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


class TaskExists(Conflict):
    """A new task's id is already taken: nothing of its batch was stored."""

    def __init__(self, task_ids: Iterable[str]) -> None:
        self.task_ids = tuple(sorted(set(task_ids)))
        ids = ", ".join(self.task_ids)
        super().__init__(
            f"Task {ids} already exists"
            if len(self.task_ids) == 1
            else f"Tasks {ids} already exist"
        )

    @classmethod
    def among(cls, new_ids: Iterable[str], stored: Collection[str]) -> TaskExists | None:
        """The error for a batch of new ids, given those of them already `stored`: each id
        taken before, or twice in the batch; None when every id is free."""
        counts = Counter(new_ids)
        taken = [i for i, n in counts.items() if n > 1 or i in stored]
        return cls(taken) if taken else None


class Forbidden(TaskyardError):
    """Not allowed."""


class Unauthorized(TaskyardError):
    """Missing or invalid credentials."""


class InvalidInput(TaskyardError):
    """Invalid input."""

    def __init__(self, message: str | None = None, details: object = None) -> None:
        super().__init__(message)
        self.details = details  # the 400 body's `details`, as for a body that fails its schema


class RateLimited(TaskyardError):
    """Too many requests, or too much unfinished work, for this caller; try again later."""

    def __init__(
        self, message: str, *, limit: int, window_s: int | None, retry_after_s: int
    ) -> None:
        super().__init__(message)
        self.limit = limit  # the rate's amount, or the cap
        self.window_s = window_s  # the rate's window; None for a cap
        self.retry_after_s = retry_after_s


class QuotaExceeded(RateLimited):
    """The caller already has as many unfinished tasks as allowed."""

    RETRY_AFTER_S = 5  # tasks take a while to finish; a tighter loop would only add load

    @classmethod
    def unfinished(cls, owner: str, count: int, cap: int) -> QuotaExceeded:
        return cls(
            f"{owner!r} has {count} unfinished tasks (WAITING or PROCESSING) and the cap is"
            f" {cap} (TASKYARD_MAX_UNFINISHED_TASKS): nothing was stored; try again when some"
            " have finished",
            limit=cap,
            window_s=None,
            retry_after_s=cls.RETRY_AFTER_S,
        )


class Unavailable(TaskyardError):
    """Temporarily unavailable; try again."""

    retry_after_s = 1


class StorageUnavailable(Unavailable):
    """The database cannot be reached just now; try again."""


class StorageBusy(Unavailable):
    """Too many writes are waiting for the database; try again."""
