"""`/ready` tells a load balancer the truth (issue 10, item 7): it fails while a background
loop keeps failing, naming the loop and its error's type (never its message: the probe is
public), and recovers with the loop. In-process (`taskyard.testing.Harness`)."""

from __future__ import annotations

import asyncio

import pytest

from taskyard.domain.coordinator import LOOP_FAILURES_NOT_READY
from taskyard.testing import Harness


async def test_ready_fails_while_a_loop_keeps_failing_and_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Harness() as yard, yard.client() as client:
        assert (await client.get("/ready")).status_code == 200
        coordinator = yard.coordinator
        chores, store = coordinator.chores, coordinator.store
        broken = asyncio.Event()

        async def failing_touch(**_: object) -> None:  # the chores' first step
            broken.set()
            raise RuntimeError("disk full at /secret/path")

        real_touch = store.touch_node
        monkeypatch.setattr(store, "touch_node", failing_touch)
        chores.failure_pause_s = 0.01
        chores.wake()
        await asyncio.wait_for(broken.wait(), timeout=10)
        for _ in range(500):
            if chores.failures_in_a_row >= LOOP_FAILURES_NOT_READY:
                break
            await asyncio.sleep(0.01)
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert "RuntimeError" in ready.json()["failingLoops"]["chores"]
        assert "/secret/path" not in ready.text
        metrics = await yard.admin.get("/metrics")
        assert "taskyard_loop_failures_total{" in metrics.text and 'loop="chores"' in metrics.text

        monkeypatch.setattr(store, "touch_node", real_touch)
        chores.wake()
        for _ in range(500):
            if chores.failures_in_a_row == 0:
                break
            await asyncio.sleep(0.01)
        assert (await client.get("/ready")).status_code == 200
