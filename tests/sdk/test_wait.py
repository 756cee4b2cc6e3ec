"""`wait` across long polls: past the API's 60 s cap, and out of time with the last-seen task."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest

from taskyard.client import MAX_WAIT_S, AsyncClient, Client, Task, TaskStatus, WaitTimeout
from tests.sdk.conftest import ADMIN
from tests.support import MockBackend, Taskyard, wait_for

HELD_S = MAX_WAIT_S + 1  # longer than one long poll may last


@pytest.mark.timeout(240)
async def test_wait_outlasts_the_long_poll_cap(node: Taskyard, tmp_path: Path) -> None:
    """A task held by its backend for 61 s: `wait` (sync and async at once) first times out
    with the task as last seen, then, given long enough, follows it over several long polls
    and returns it FINISHED."""
    model = f"held-{uuid.uuid4().hex[:8]}"
    mock = MockBackend(f"hang-{model}", workdir=tmp_path).start("/health")
    try:
        node.register_online(mock, models=[model])
        mock.control(hang=True)
        with Client(node.url, ADMIN) as client:
            async with AsyncClient(node.url, ADMIN) as aclient:
                # The attempt's own deadline (timeout_s) must outlast the hold.
                sync_id = client.submit(model, timeout_s=HELD_S + 60).id
                async_id = (await aclient.submit(model, timeout_s=HELD_S + 60)).id
                wait_for(lambda: len(mock.received()) == 2, what="both tasks at the backend")

                with pytest.raises(WaitTimeout) as caught:
                    client.wait(sync_id, timeout_s=0.5)
                assert caught.value.task.id == sync_id
                assert caught.value.task.status == TaskStatus.PROCESSING
                with pytest.raises(WaitTimeout) as acaught:
                    await aclient.wait(async_id, timeout_s=0)
                assert acaught.value.task.status == TaskStatus.PROCESSING

                started = time.monotonic()
                results: dict[str, Task | BaseException] = {}

                def wait_sync() -> None:
                    try:
                        results["sync"] = client.wait(sync_id, timeout_s=HELD_S + 60)
                    except BaseException as exc:
                        results["sync"] = exc

                waiter = threading.Thread(target=wait_sync)
                waiter.start()
                async_wait = asyncio.create_task(aclient.wait(async_id, timeout_s=HELD_S + 60))
                await asyncio.sleep(HELD_S)  # the hold under test: past one long poll
                assert not async_wait.done() and waiter.is_alive()
                mock.control(hang=False)
                done = await asyncio.wait_for(async_wait, 30)
                await asyncio.to_thread(waiter.join, 30)
                elapsed = time.monotonic() - started
        assert done.id == async_id and done.status == TaskStatus.FINISHED
        sync_done = results["sync"]
        assert isinstance(sync_done, Task), sync_done
        assert sync_done.status == TaskStatus.FINISHED
        assert elapsed >= HELD_S
    finally:
        mock.stop()
