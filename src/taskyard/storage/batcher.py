"""Group commit: many writers, one transaction.

Every state change is small, and committing each alone caps throughput at the disk's fsync
rate. Writers hand an operation to the `GroupCommitter` and await it; a single loop runs all
queued operations in one transaction and resolves each writer only after the commit, so
nothing is acknowledged before it is durable. If a batch fails, its operations are retried one
by one so that one bad operation fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Connection

T = TypeVar("T")
Operation = Callable[[Connection], Any]
Transaction = Callable[[list[Operation]], Awaitable[list[Any]]]

log = logging.getLogger(__name__)

MAX_BATCH = 500  # operations per transaction


class GroupCommitter:
    def __init__(self, transaction: Transaction, *, max_batch: int = MAX_BATCH) -> None:
        self._transaction = transaction
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Operation, asyncio.Future[Any]]] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None

    async def run(self, op: Callable[[Connection], T]) -> T:
        """Run `op` inside the next shared transaction; return its result once committed."""
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._loop())
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, future))
        return await future

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("storage closed before the write ran"))

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[Operation, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._transaction([op for op, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            log.warning("group commit of %d writes failed; retrying one by one", len(batch))
            for item in batch:
                await self._commit([item])
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
