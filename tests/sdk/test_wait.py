"""`wait` across long polls: past the node's long-poll cap (TASKYARD_LONG_POLL_MAX_S, lowered to
1 s here so no test waits a minute), and out of time with the last-seen task."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taskyard.client import AsyncClient, Client, Task, TaskStatus, WaitTimeout
from tests.sdk.conftest import ADMIN
from tests.support import MockBackend, Taskyard, running_taskyard, wait_for

LONG_POLL_MAX_S = 1.0  # the node's cap on one long poll
HOLD_TIMEOUT_S = 120  # the attempts' deadline: far past the test, so only the hold matters


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taskyard]:
    with running_taskyard(tmp_path_factory.mktemp("node"), long_poll_max_s=LONG_POLL_MAX_S) as yard:
        yield yard


def is_long_poll(request: httpx.Request) -> bool:
    return request.method == "GET" and "wait" in request.url.params


class CountingTransport(httpx.HTTPTransport):
    """Counts the long polls (`GET ...?wait=`) answered to a synchronous client."""

    def __init__(self) -> None:
        super().__init__()
        self.polls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.polls += is_long_poll(request)
        return response


class AsyncCountingTransport(httpx.AsyncHTTPTransport):
    """Counts the long polls answered to an asynchronous client."""

    def __init__(self) -> None:
        super().__init__()
        self.polls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.polls += is_long_poll(request)
        return response


@pytest.mark.timeout(240)
async def test_wait_outlasts_the_long_poll_cap(node: Taskyard, tmp_path: Path) -> None:
    """A task held by its backend past the node's long-poll cap: `wait` (sync and async at
    once) first times out with the task as last seen, then, given long enough, follows it over
    several long polls and returns it FINISHED."""
    model = f"held-{uuid.uuid4().hex[:8]}"
    mock = MockBackend(f"hang-{model}", workdir=tmp_path).start("/health")
    sync_polls, async_polls = CountingTransport(), AsyncCountingTransport()
    try:
        node.register_online(mock, models=[model])
        mock.control(hang=True)
        with Client(node.url, ADMIN, transport=sync_polls) as client:
            async with AsyncClient(node.url, ADMIN, transport=async_polls) as aclient:
                # The attempt's own deadline (timeout_s) must outlast the hold.
                sync_id = client.submit(model, timeout_s=HOLD_TIMEOUT_S).id
                async_id = (await aclient.submit(model, timeout_s=HOLD_TIMEOUT_S)).id
                wait_for(lambda: len(mock.received()) == 2, what="both tasks at the backend")

                with pytest.raises(WaitTimeout) as caught:
                    client.wait(sync_id, timeout_s=0.5)
                assert caught.value.task.id == sync_id
                assert caught.value.task.status == TaskStatus.PROCESSING
                with pytest.raises(WaitTimeout) as acaught:
                    await aclient.wait(async_id, timeout_s=0)
                assert acaught.value.task.status == TaskStatus.PROCESSING

                results: dict[str, Task | BaseException] = {}

                def wait_sync() -> None:
                    try:
                        results["sync"] = client.wait(sync_id, timeout_s=HOLD_TIMEOUT_S)
                    except BaseException as exc:
                        results["sync"] = exc

                before = sync_polls.polls, async_polls.polls
                waiter = threading.Thread(target=wait_sync)
                waiter.start()
                async_wait = asyncio.create_task(aclient.wait(async_id, timeout_s=HOLD_TIMEOUT_S))

                def past_the_cap() -> bool:  # each wait has had two long polls answered
                    done = sync_polls.polls - before[0], async_polls.polls - before[1]
                    return min(done) >= 2

                await asyncio.to_thread(wait_for, past_the_cap, what="two long polls each")
                assert not async_wait.done() and waiter.is_alive()  # still waiting, held
                mock.control(hang=False)
                done = await asyncio.wait_for(async_wait, 30)
                await asyncio.to_thread(waiter.join, 30)
        assert done.id == async_id and done.status == TaskStatus.FINISHED
        sync_done = results["sync"]
        assert isinstance(sync_done, Task), sync_done
        assert sync_done.status == TaskStatus.FINISHED
    finally:
        mock.stop()
