"""In-process notice of task changes, so a client can wait for a result instead of polling.

Whoever commits a task's move to a final state on this node calls `changed(task_id)`;
`watch(task_id)` gives a future that completes on the next such call. Changes made by another
coordinator are not seen here, so waiters also re-read the database at a fallback interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator


class TaskEvents:
    def __init__(self) -> None:
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    def changed(self, task_ids: Iterable[str]) -> None:
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
