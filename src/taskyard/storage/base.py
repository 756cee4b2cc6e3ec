"""What the domain needs from storage: conditional task updates and plain reads.

`SqlStore` (in `sql.py`) is the one implementation, for SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from taskyard.domain.models import Node, Server, Task, TaskStatus


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """Set `values` on a task only if it is still in the expected state.

    Every state change is such a compare-and-set, so two actors racing on one task (a callback
    and the deadline sweep, two coordinators) can never both win.
    """

    task_id: str
    values: Mapping[str, Any] = field(default_factory=dict)
    expect_status: Collection[TaskStatus] | None = None
    expect_attempt: int | None = None
    expect_server: str | None = None


WaitingReader = Callable[[int, Collection[str] | None], list[Task]]
"""(limit, models or None for any) → due WAITING tasks, by priority then FIFO."""

ClaimPlan = Callable[[list[Server], WaitingReader], list[TaskUpdate]]
"""Given every server (with exact in-flight counts) and a reader of due tasks, the updates
that start attempts. Runs inside the claim transaction: pure, quick, no I/O of its own."""


class Store(Protocol):
    """The storage the domain uses. Reads return domain values; writes are durable on return."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    # tasks
    async def add_task(self, task: Task) -> None: ...

    async def get_task(self, task_id: str) -> Task | None: ...

    async def claim_tasks(self, *, now: int, plan: ClaimPlan) -> list[bool]:
        """Run `plan` under the cluster-wide dispatch lock and apply the updates it returns;
        each reports whether it matched."""
        ...

    async def has_due_tasks(self, *, now: int) -> bool: ...

    async def next_due_at(self) -> int | None:
        """When the earliest WAITING task becomes due, if any."""
        ...

    async def expired_attempts(self, *, now: int, limit: int) -> list[Task]: ...

    async def expired_in_queue(self, *, now: int, limit: int) -> list[Task]: ...

    async def processing_on(self, server_ids: Iterable[str]) -> list[Task]: ...

    async def orphaned_attempts(self) -> list[Task]:
        """Unanswered attempts whose node is no longer recorded in `nodes`."""
        ...

    async def update_tasks(self, updates: list[TaskUpdate]) -> list[bool]:
        """Apply conditional updates together; each reports whether it matched."""
        ...

    async def update_task(self, change: TaskUpdate) -> bool: ...

    async def purge_tasks(self, *, finished_before: int) -> int: ...

    # servers
    async def put_server(self, server: Server) -> None: ...

    async def get_server(self, server_id: str) -> Server | None: ...

    async def list_servers(self) -> list[Server]:
        """Every server, with its in-flight count filled in."""
        ...

    async def update_server(self, server_id: str, values: Mapping[str, Any]) -> bool: ...

    async def delete_servers(self, server_ids: Collection[str]) -> list[str]: ...

    # coordinator nodes
    async def touch_node(self, *, node_id: str, host: str, now: int) -> None: ...

    async def list_nodes(self) -> list[Node]: ...

    async def delete_nodes(self, node_ids: Collection[str]) -> None: ...

    # leases: cluster duties held by one node at a time
    async def acquire_lease(self, name: str, *, holder: str, now: int, ttl_ms: int) -> bool:
        """Take or renew `name` for `holder` unless someone else holds it unexpired."""
        ...

    async def release_leases(self, *, holder: str) -> None: ...
