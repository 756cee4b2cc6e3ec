"""What the domain needs from storage: conditional task updates and plain reads.

`SqlStore` (in `sql.py`) is the one implementation, for SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from taskyard.domain.models import TaskStatus


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
