"""State changes as typed values: which of a task's or a server's mutable fields a change writes.

The domain's rules build them (`lifecycle` for tasks; `health`, `registry`, `ejection` and
`accounting` for servers) and the stores apply them: `storage/rows.py` maps them to columns,
`MemoryStore` to its rows. A field left at `UNSET` is not written; `None` is a value (NULL).
mypy checks every field's name and type where a change is built; build them with keywords.

They are NamedTuples: immutable, and built in a quarter of the time a frozen dataclass takes
(whose `__init__` calls `object.__setattr__` once per field, 18 or 21 of them). A task's change
is built at every state change on the hot path: building one and mapping it to its statement
measured 17.5 us as a frozen dataclass, 15.1 us as a NamedTuple, 14.3 us as the untyped dict
it replaced (lifecycle.start_attempt + queries.apply, the database call left out).

What a change does not hold: a task's creation fields (id, owner, model, request, priority,
budget, timeout, creation time) never change, and a server's registration fields change only
with a new registration (`Store.put_server`), never field by field.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any, Final, Literal, NamedTuple

from taskyard.domain.models import JSON, AttemptRecord, Server, ServerStatus, Task, TaskStatus


class Unset(Enum):
    """The type of `UNSET`: a field the change leaves as it is."""

    UNSET = "unset"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET


class TaskPatch(NamedTuple):
    """The fields of a task a state change writes (see `TaskUpdate` for its conditions)."""

    status: TaskStatus | Unset = UNSET
    server_id: str | Unset | None = UNSET
    attempt: int | Unset = UNSET
    attempt_base: int | Unset = UNSET
    attempts: tuple[AttemptRecord, ...] | Unset = UNSET
    result: Any = UNSET  # any JSON value, None included
    progress: float | Unset | None = UNSET
    error: str | Unset | None = UNSET
    error_code: str | Unset | None = UNSET
    callback_url: str | Unset | None = UNSET
    started_at: int | Unset | None = UNSET
    finished_at: int | Unset | None = UNSET
    deadline_at: int | Unset | None = UNSET
    next_attempt_at: int | Unset = UNSET
    queue_deadline_at: int | Unset | None = UNSET
    updated_at: int | Unset = UNSET
    # Stored with the task, never read back into it (`ROW_ONLY`): which node sent the current
    # attempt, and whether its backend answered that send (orphaned attempts are the others).
    node_id: str | Unset | None = UNSET
    acked: bool | Unset = UNSET

    def changed(self) -> dict[str, Any]:
        """The fields this change writes, by name, in declaration order."""
        return _written(TASK_PATCH_FIELDS, self)


TASK_PATCH_FIELDS: Final = TaskPatch._fields
ROW_ONLY: Final = frozenset({"node_id", "acked"})  # a task row's fields that `Task` lacks


class ServerPatch(NamedTuple):
    """The fields of a server's state a change writes: health, heartbeats, dispatch counts,
    ejection and maintenance. As `update_server`'s `expect`, the values they must still have."""

    status: ServerStatus | Unset = UNSET
    last_heartbeat: int | Unset | None = UNSET
    reported_load: JSON | Unset | None = UNSET
    last_check_at: int | Unset | None = UNSET
    last_success_at: int | Unset | None = UNSET
    offline_since: int | Unset | None = UNSET
    consecutive_successes: int | Unset = UNSET
    consecutive_failures: int | Unset = UNSET
    check_interval_s: float | Unset = UNSET
    next_check_at: int | Unset = UNSET
    last_error: str | Unset | None = UNSET
    checked_by: str | Unset | None = UNSET
    dispatch_failures: int | Unset = UNSET
    consecutive_rejections: int | Unset = UNSET
    ejected: bool | Unset = UNSET
    ejected_until: int | Unset | None = UNSET
    ejections: int | Unset = UNSET
    ejection_reason: str | Unset | None = UNSET
    maintenance: bool | Unset = UNSET
    maintenance_reason: str | Unset | None = UNSET
    maintenance_since: int | Unset | None = UNSET

    def changed(self) -> dict[str, Any]:
        """The fields this change writes, by name, in declaration order."""
        return _written(SERVER_PATCH_FIELDS, self)

    def __or__(self, other: ServerPatch) -> ServerPatch:
        """Both changes in one; where both write a field, `other`'s value."""
        return ServerPatch(**(self.changed() | other.changed()))


SERVER_PATCH_FIELDS: Final = ServerPatch._fields


def _written(names: tuple[str, ...], values: tuple[Any, ...]) -> dict[str, Any]:
    return {name: value for name, value in zip(names, values, strict=True) if value is not UNSET}


ServerCounter = Literal["dispatch_failures", "consecutive_rejections"]
"""The server fields counted in the database (`Store.increment_server`), never read-modify-write."""


def evolve_task(task: Task, patch: TaskPatch) -> Task:
    """`task` as it is once `patch` is written."""
    changed = patch.changed()
    changed.pop("node_id", None)  # ROW_ONLY
    changed.pop("acked", None)
    return dataclasses.replace(task, **changed)


def evolve_server(server: Server, patch: ServerPatch) -> Server:
    """`server` as it is once `patch` is written."""
    return dataclasses.replace(server, **patch.changed())
