"""Lazy writes (`GroupCommitter.run(lazy=True)`, health checks' outcomes) wait for the next
tick of a shared clock and share one commit; other writes do not wait for them."""

from __future__ import annotations

import asyncio
from typing import Any

from taskyard.storage.batcher import LAZY_TICK_S, GroupCommitter


class Transactions:
    def __init__(self) -> None:
        self.batches: list[int] = []

    async def __call__(self, ops: list[Any]) -> list[Any]:
        self.batches.append(len(ops))
        return [op(None) for op in ops]


async def test_lazy_writes_spread_over_a_tick_share_one_commit() -> None:
    transactions = Transactions()
    writes = GroupCommitter(transactions)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(LAZY_TICK_S - loop.time() % LAZY_TICK_S + 0.01)  # early in a tick

    async def lazy(k: int) -> int:
        await asyncio.sleep(k * 0.002)  # arriving one after another, as checks do
        return await writes.run(lambda _conn: k, lazy=True)

    results = await asyncio.gather(*(lazy(k) for k in range(20)))
    assert results == list(range(20))
    assert transactions.batches == [20]
    await writes.close()


async def test_a_plain_write_does_not_wait_for_the_tick() -> None:
    transactions = Transactions()
    writes = GroupCommitter(transactions)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(LAZY_TICK_S - loop.time() % LAZY_TICK_S + 0.01)
    lazy = asyncio.ensure_future(writes.run(lambda _conn: "lazy", lazy=True))
    assert await writes.run(lambda _conn: "plain") == "plain"
    assert not lazy.done()  # the plain write was committed first, alone
    assert await lazy == "lazy"
    assert transactions.batches == [1, 1]
    await writes.close()
