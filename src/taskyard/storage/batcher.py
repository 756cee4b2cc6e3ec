"""Group commit: many writers, one transaction.

Every state change is small, and committing each alone caps throughput at the disk's fsync
rate. Writers hand an operation to the `GroupCommitter` and await it; a single loop runs all
queued operations in one transaction and resolves each writer only after the commit, so
nothing is acknowledged before it is durable.

When a batch fails, what happens next depends on what is known about it:
- a statement failed: the transaction rolled back for sure, so each operation runs again
  alone, and only the bad one fails;
- the database was unreachable before COMMIT (`StorageUnavailable`): nothing was written, so
  the batch is retried a few times with a short backoff, then fails with that error (503);
- COMMIT got no answer (`CommitOutcomeUnknown`): the batch may be durable. Replaying it could
  store a task twice, so only operations that brought a `replay` (one that checks what is
  already there) run again; the others fail with `StorageUnavailable`.
The queue is bounded for writes that may be shed (creates): past `max_pending` they fail at
once with `StorageBusy` instead of piling up memory behind a slow or absent database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sqlalchemy import Connection

from taskyard import errors
from taskyard.storage.faults import CommitOutcomeUnknown

T = TypeVar("T")
Operation = Callable[[Connection], Any]
Transaction = Callable[[list[Operation]], Awaitable[list[Any]]]

log = logging.getLogger(__name__)

MAX_BATCH = 500  # operations per transaction
# Lazy writes wait for the next tick of this clock, so that those of one tick share a commit:
# a thousand servers' health checks, spread over their interval, were a commit each.
LAZY_TICK_S = 0.1
MAX_PENDING = 10_000  # sheddable writes waiting before StorageBusy
TRANSIENT_RETRIES = 3  # tries after the first when the database is unreachable
RETRY_BASE_S = 0.1  # doubled per try: 0.1 + 0.2 + 0.4 s before giving up


@dataclass(frozen=True, slots=True)
class _Write:
    op: Operation
    future: asyncio.Future[Any]
    replay: Operation | None = None  # safe to run again after an unknown commit
    tries: int = 0  # transient failures so far


class GroupCommitter:
    def __init__(
        self,
        transaction: Transaction,
        *,
        max_batch: int = MAX_BATCH,
        max_pending: int = MAX_PENDING,
        retry_base_s: float = RETRY_BASE_S,
    ) -> None:
        self._transaction = transaction
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._retry_base_s = retry_base_s
        self._queue: asyncio.Queue[_Write] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def run(
        self,
        op: Callable[[Connection], T],
        *,
        replay: Operation | None = None,
        shed: bool = False,
        lazy: bool = False,
    ) -> T:
        """Run `op` inside the next shared transaction; return its result once committed.

        `replay` is run instead of `op` if the commit's outcome is unknown (it must find out
        what the first run stored); `shed` lets this write fail fast with `StorageBusy`;
        `lazy` queues it at the next `LAZY_TICK_S` tick, with the other lazy writes until
        then (timers due at one instant run in one turn of the loop, before the committer)."""
        loop = asyncio.get_running_loop()
        if lazy:
            await asyncio.sleep(LAZY_TICK_S - loop.time() % LAZY_TICK_S)
        if shed and self._queue.qsize() >= self._max_pending:
            raise errors.StorageBusy(
                f"{self._queue.qsize()} writes are waiting for the database; try again"
            )
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._loop())
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put_nowait(_Write(op, future, replay))
        return await future

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        while not self._queue.empty():
            future = self._queue.get_nowait().future
            if not future.done():
                future.set_exception(RuntimeError("storage closed before the write ran"))

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[_Write]) -> None:
        try:
            results = await self._transaction([write.op for write in batch])
        except asyncio.CancelledError:  # closed mid-batch: its writers must not wait forever
            _fail(batch, RuntimeError("storage closed while the write ran"))
            raise
        except CommitOutcomeUnknown as exc:
            await self._after_unknown_commit(batch, exc)
        except errors.StorageUnavailable as exc:
            await self._after_unavailable(batch, exc)
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            log.warning("group commit of %d writes failed; retrying one by one", len(batch))
            for write in batch:
                await self._commit([write])
        else:
            for write, result in zip(batch, results, strict=True):
                if not write.future.done():
                    write.future.set_result(result)

    async def _after_unavailable(self, batch: list[_Write], exc: errors.StorageUnavailable) -> None:
        """Nothing of `batch` was written: try again a few times, then give up."""
        tries = batch[0].tries  # a batch is retried whole, so its writes share the count
        if tries >= TRANSIENT_RETRIES:
            log.warning("database unavailable; %d writes failed: %s", len(batch), exc.message)
            _fail(batch, exc)
            return
        await asyncio.sleep(self._retry_base_s * 2**tries)
        await self._commit([replace(write, tries=tries + 1) for write in batch])

    async def _after_unknown_commit(self, batch: list[_Write], exc: CommitOutcomeUnknown) -> None:
        replays = [
            replace(write, op=write.replay, tries=write.tries + 1)
            for write in batch
            if write.replay is not None and write.tries < TRANSIENT_RETRIES
        ]
        log.warning(
            "commit of %d writes got no answer (%s); replaying the %d that can tell what was"
            " stored",
            len(batch),
            exc,
            len(replays),
        )
        _fail(
            [write for write in batch if write.replay is None or write.tries >= TRANSIENT_RETRIES],
            errors.StorageUnavailable("the database did not confirm the write; try again"),
        )
        if replays:
            await asyncio.sleep(self._retry_base_s)
            await self._commit(replays)


def _fail(batch: list[_Write], exc: BaseException) -> None:
    for write in batch:
        if not write.future.done():
            write.future.set_exception(exc)
