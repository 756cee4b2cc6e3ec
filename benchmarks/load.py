"""Load generation for `run.py`: concurrent clients, one task (or one direct predict) each
request, and the latency samples they collect."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from benchmarks.fleet import FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class Sample:
    """One request's outcome: seconds from send to result readable, final status, polls made."""

    latency_s: float
    status: str
    polls: int


@dataclass
class LoadResult:
    name: str
    concurrency: int
    elapsed_s: float
    samples: list[Sample] = field(default_factory=list)

    @property
    def tasks(self) -> int:
        return len(self.samples)

    @property
    def throughput(self) -> float:
        return self.tasks / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def latency_ms(self, q: float) -> float:
        return percentile([s.latency_s * 1000 for s in self.samples], q)

    @property
    def statuses(self) -> Counter[str]:
        return Counter(s.status for s in self.samples)

    @property
    def polls_per_task(self) -> float:
        return sum(s.polls for s in self.samples) / max(1, self.tasks)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


OneRequest = Callable[[int], Awaitable[Sample]]


async def run_load(name: str, count: int, clients: int, one: OneRequest) -> LoadResult:
    """Make `count` requests with `clients` concurrent workers; time first send to last result."""
    next_index = iter(range(count))
    samples: list[Sample] = []

    async def worker() -> None:
        for index in next_index:
            samples.append(await one(index))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(clients, count))))
    return LoadResult(name, clients, time.perf_counter() - started, samples)


def task_request(index: int) -> dict[str, Any]:
    """The task body; the direct calls wrap the same object in a dispatch payload."""
    return {"model": "bench", "prompt": f"request {index}", "params": {"steps": 4, "seed": index}}


@dataclass(frozen=True)
class Poller:
    session: aiohttp.ClientSession
    poll_s: float
    timeout_s: float
    wait_s: float = 0.0  # > 0: taskyard clients long-poll with GET ?wait= instead of sleeping
    submit_waits: bool = False  # with wait_s: the create itself waits (POST ?wait=), one request


async def taskyard_request(
    poller: Poller, base: str, headers: dict[str, str], index: int
) -> Sample:
    """Submit one task, then read it until it is final (or the timeout passes).

    With `wait_s`, each read is a long poll (`GET /api/task/{id}?wait=…`) that returns as soon as
    the task is final; without it, the client sleeps `poll_s` between plain reads. With
    `submit_waits` too, the create is the first long poll (`POST /api/task?wait=…`).
    """
    session = poller.session
    started = time.perf_counter()
    polls = 0
    params = {"wait": str(poller.wait_s)} if poller.wait_s > 0 else None
    try:
        async with session.post(
            f"{base}/api/task",
            json=task_request(index),
            headers=headers,
            params=params if poller.submit_waits else None,
        ) as resp:
            if resp.status != 200:
                return Sample(time.perf_counter() - started, f"HTTP {resp.status} on submit", 0)
            body = await resp.json()
        task_id, status = body["taskId"], body["taskDetails"]["status"]
        while status not in FINAL_STATUSES and time.perf_counter() - started < poller.timeout_s:
            if params is None:
                await asyncio.sleep(poller.poll_s)
            url = f"{base}/api/task/{task_id}"
            async with session.get(url, headers=headers, params=params) as resp:
                polls += 1
                if resp.status != 200:
                    status = f"HTTP {resp.status} on poll"
                    break
                status = (await resp.json())["taskDetails"]["status"]
    except (aiohttp.ClientError, TimeoutError) as exc:  # a node died or hung: count, go on
        status = type(exc).__name__
    return Sample(time.perf_counter() - started, status, polls)


async def direct_request(
    poller: Poller, backends: Sequence[str], index: int, *, is_async: bool
) -> Sample:
    """One predict call to a backend, round-robin; a 202 is followed by polling its result."""
    session = poller.session
    backend = backends[index % len(backends)]
    task_id = str(uuid.uuid4())
    payload = {
        "task_id": task_id,
        "request": task_request(index),
        "async": is_async,  # as taskyard would send it; there is no callback URL to call
        "callback_url": None,
        "callback_token": None,
        "attempt": 1,
    }
    started = time.perf_counter()
    async with session.post(f"{backend}/predict", json=payload) as resp:
        await resp.read()
        if resp.status == 200:
            return Sample(time.perf_counter() - started, "FINISHED", 0)
        if resp.status != 202:
            return Sample(time.perf_counter() - started, f"HTTP {resp.status}", 0)
    polls = 0
    while time.perf_counter() - started < poller.timeout_s:
        await asyncio.sleep(poller.poll_s)
        async with session.get(f"{backend}/result/{task_id}") as resp:
            await resp.read()
            polls += 1
            if resp.status == 200:
                return Sample(time.perf_counter() - started, "FINISHED", polls)
    return Sample(time.perf_counter() - started, "TIMEOUT", polls)
