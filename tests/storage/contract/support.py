"""What the contract's tests share: the `Store` methods, `covers`, and task and hold builders."""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from taskyard.domain import lifecycle
from taskyard.domain.changes import TaskPatch
from taskyard.domain.models import SlotHold, Task
from taskyard.domain.ports import Store, TaskUpdate
from tests.unit.factories import make_task

STORE_METHODS = frozenset(
    name
    for name, member in vars(Store).items()
    if not name.startswith("_") and inspect.iscoroutinefunction(member)
)

COVERS = "store_methods_covered"  # the attribute `covers` sets on a test

Test = TypeVar("Test", bound=Callable[..., Awaitable[None]])


def covers(*methods: str) -> Callable[[Test], Test]:
    """Declare the `Store` methods a contract test is about; the `store` fixture checks that
    the test calls each of them, and test_coverage.py that every method has such a test."""
    unknown = set(methods) - STORE_METHODS
    if unknown:
        raise AssertionError(f"not methods of Store: {sorted(unknown)}")

    def declare(test: Test) -> Test:
        setattr(test, COVERS, frozenset(methods))
        return test

    return declare


_inside = contextvars.ContextVar("inside_a_store_call", default=False)


def record_calls(store: Store, called: set[str]) -> None:
    """Note in `called` each `Store` method the test calls on `store` itself; the store's
    calls to its own methods (`add_task` runs `add_tasks`) do not count."""
    for name in STORE_METHODS:
        setattr(store, name, _recorded(name, getattr(store, name), called))


def _recorded(
    name: str, method: Callable[..., Awaitable[Any]], called: set[str]
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        if _inside.get():
            return await method(*args, **kwargs)
        called.add(name)
        token = _inside.set(True)
        try:
            return await method(*args, **kwargs)
        finally:
            _inside.reset(token)

    return call


async def start(
    store: Store, task: Task, *, server: str = "gpu", node: str = "n1", now: int = 2_000
) -> Task:
    """Store `task` and start its first attempt (PROCESSING on `server`, sent by `node`)."""
    await store.add_task(task)
    update, running = lifecycle.start_attempt(
        task, server_id=server, node_id=node, callback_url="http://cb", now=now
    )
    assert await store.update_task(update)
    return running


async def hold(
    store: Store,
    task_id: str,
    *,
    attempt: int = 1,
    server: str = "gpu",
    until: int = 10_000,
    cancel_at: int | None = None,
) -> SlotHold:
    """Store a held slot, as the change that ends an attempt stores it (the task is added
    first if it is not stored yet)."""
    if await store.get_task(task_id) is None:
        await store.add_task(make_task(id=task_id))
    slot = SlotHold(task_id, attempt, server, held_until=until, cancel_due_at=cancel_at)
    assert await store.update_task(TaskUpdate(task_id, TaskPatch(updated_at=1_500), hold=slot))
    return slot
