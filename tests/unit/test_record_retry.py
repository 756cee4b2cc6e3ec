"""A synchronous backend's result that fails to be recorded is retried, not dropped (issue 10,
item 7): the database refusing the first writes does not send the task again; its result is
stored once the database takes writes again."""

from __future__ import annotations

import pytest

from taskyard import errors
from taskyard.domain import dispatcher
from taskyard.domain.models import TaskStatus
from taskyard.domain.ports import TaskUpdate
from tests.unit.fakes import ScriptedBackend
from tests.unit.test_coordinator_memory import create, memory_yard, one_pass, read, register


async def test_a_result_the_database_refused_at_first_is_recorded_and_not_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatcher, "RECORD_RETRY_BASE_S", 0.001)
    backend = ScriptedBackend()
    yard = memory_yard(backend)
    await register(yard, "s1")
    task = await create(yard)
    real_update = yard.store.update_tasks
    refusals = 0

    async def update_tasks(updates: list[TaskUpdate]) -> list[bool]:
        nonlocal refusals
        if any(u.patch.status is TaskStatus.FINISHED for u in updates) and refusals < 3:
            refusals += 1
            raise errors.StorageUnavailable("database unavailable (ConnectionResetError)")
        return await real_update(updates)

    yard.store.update_tasks = update_tasks  # type: ignore[method-assign]
    await one_pass(yard)
    assert refusals == 3
    done = await read(yard, task)
    assert (done.status, done.result) == (TaskStatus.FINISHED, {"output": "done"})
    assert len(backend.sent) == 1
