"""In-process notice of task changes, so a client can wait for a result instead of polling.

Whoever commits a task's move to a final state on this node calls `changed(task_ids)`, which
also tells the other nodes (`publish`); their notices arrive as `changed_elsewhere(task_ids)`.
`watch(task_id)` gives a future that completes on the next change of that task. Notices can be
lost (a dropped connection), so waiters also re-read the database at a fallback interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator


class TaskEvents:
    def __init__(self, publish: Callable[[list[str]], None] | None = None) -> None:
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._publish = publish

    def changed(self, task_ids: Iterable[str]) -> None:
        """Tasks this node moved to a final state."""
        ids = list(task_ids)
        if ids and self._publish is not None:
            self._publish(ids)
        self.changed_elsewhere(ids)

    def changed_elsewhere(self, task_ids: Iterable[str]) -> None:
        """Tasks another node moved to a final state."""
        for task_id in task_ids:
            for future in self._waiters.pop(task_id, ()):
                if not future.done():
                    future.set_result(None)

    @contextlib.contextmanager
    def watch(self, task_id: str) -> Iterator[asyncio.Future[None]]:
        """A future that completes on the next change of `task_id` on this node.

        Subscribe before reading the task, so a change between the read and the wait is not
        missed.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(task_id, [])
        waiters.append(future)
        try:
            yield future
        finally:
            if future in waiters:
                waiters.remove(future)
            if not waiters and self._waiters.get(task_id) is waiters:
                del self._waiters[task_id]

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())
