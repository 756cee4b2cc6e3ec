"""End-to-end benchmark: tasks through taskyard versus the same predict calls made directly.

What it measures, on this machine, in one run:

* ``direct``: N predict calls (``POST /predict`` with taskyard's dispatch payload shape) sent
  straight to K mock backends, round-robin, by C concurrent clients. In ``--async`` mode the
  backends answer 202 and the client polls ``GET /result/{id}`` on the backend until it is there.
* ``taskyard``: the same N requests submitted to one ``taskyard serve`` coordinator (fresh SQLite
  file) by C concurrent clients. Each client submits (``POST /api/task``) and then polls
  ``GET /api/task/{id}?wait=30`` (a long poll that answers once the task is final; ``--wait-s 0``
  polls every ``--poll-ms`` instead); latency is from the submit to the answer that first reads
  ``FINISHED``. Throughput is N divided by the time from the first submit to the last
  task read as final.

It prints one table (throughput, latency p50/p99, taskyard/direct ratios), then the final task
statuses (the exit status is 1 unless every task is FINISHED) and the CPU seconds used by the
coordinator, the backends and this load generator.

Run from the repository root::

    make bench
    make bench ARGS="--tasks 5000 --async"
    .venv/bin/python benchmarks/run.py --help
    .venv/bin/python benchmarks/run.py --profile /tmp/prof.out   # cProfile the coordinator

Process management, tokens and CPU accounting live in ``benchmarks/fleet.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import pstats
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fleet import (
    FINAL_STATUSES,
    Child,
    Children,
    admin_headers,
    cpu_of,
    cpu_seconds,
    register,
    run_in_workdir,
    server_body,
    start_coordinator,
    start_mock_backend,
    wait_online,
    wait_ready,
)

# ---- load generation ------------------------------------------------------------------------


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


async def taskyard_request(
    poller: Poller, base: str, headers: dict[str, str], index: int
) -> Sample:
    """Submit one task, then read it until it is final (or the timeout passes).

    With `wait_s`, each read is a long poll (`GET /api/task/{id}?wait=…`) that returns as soon as
    the task is final; without it, the client sleeps `poll_s` between plain reads.
    """
    session = poller.session
    started = time.perf_counter()
    async with session.post(f"{base}/api/task", json=task_request(index), headers=headers) as resp:
        if resp.status != 200:
            return Sample(time.perf_counter() - started, f"HTTP {resp.status} on submit", 0)
        body = await resp.json()
    task_id, status = body["taskId"], body["taskDetails"]["status"]
    polls = 0
    params = {"wait": str(poller.wait_s)} if poller.wait_s > 0 else None
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


# ---- the benchmark --------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    tasks: int
    backends: int
    capacity: int
    delay_ms: float
    clients: int
    is_async: bool
    database_url: str | None
    keep: bool
    poll_ms: float
    wait_s: float
    warmup: int
    task_timeout_s: float
    profile: Path | None


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Tasks end to end through taskyard versus direct predict calls."
    )
    parser.add_argument("--tasks", type=int, default=2000, help="requests per path (2000)")
    parser.add_argument("--backends", type=int, default=4, help="mock backends (4)")
    parser.add_argument("--capacity", type=int, default=16, help="max_concurrency each (16)")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="backend work time (10)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    parser.add_argument(
        "--async", dest="is_async", action="store_true", help="backends answer 202, call back"
    )
    parser.add_argument(
        "--database-url", default=None, help="default: a fresh SQLite file in the temp dir"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="client poll interval (10)")
    parser.add_argument(
        "--wait-s",
        type=float,
        default=30.0,
        help="taskyard clients long-poll GET ?wait=S (30); 0 = plain polling every --poll-ms",
    )
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured requests first (100)")
    parser.add_argument("--task-timeout", type=float, default=60.0, help="give up a task (s)")
    parser.add_argument(
        "--profile", type=Path, default=None, help="run the coordinator under cProfile to PATH"
    )
    ns = parser.parse_args(argv)
    for name in ("tasks", "backends", "capacity", "clients"):
        if getattr(ns, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return Options(
        tasks=ns.tasks,
        backends=ns.backends,
        capacity=ns.capacity,
        delay_ms=ns.delay_ms,
        clients=ns.clients,
        is_async=ns.is_async,
        database_url=ns.database_url,
        keep=ns.keep,
        poll_ms=ns.poll_ms,
        wait_s=max(0.0, ns.wait_s),
        warmup=max(0, ns.warmup),
        task_timeout_s=ns.task_timeout,
        profile=ns.profile.resolve() if ns.profile else None,
    )


@dataclass
class Report:
    direct: LoadResult
    taskyard: LoadResult
    cpu: dict[str, float]  # what → CPU seconds during the taskyard phase (and the direct one)


def format_table(direct: LoadResult, taskyard: LoadResult) -> str:
    header = ["", "tasks", "concurrency", "throughput/s", "p50 ms", "p99 ms"]
    rows = [header]
    for result in (direct, taskyard):
        rows.append(
            [
                result.name,
                str(result.tasks),
                str(result.concurrency),
                f"{result.throughput:.1f}",
                f"{result.latency_ms(50):.1f}",
                f"{result.latency_ms(99):.1f}",
            ]
        )
    rows.append(
        [
            "ratio taskyard/direct",
            "",
            "",
            f"{taskyard.throughput / direct.throughput:.3f}",
            f"{taskyard.latency_ms(50) / direct.latency_ms(50):.2f}",
            f"{taskyard.latency_ms(99) / direct.latency_ms(99):.2f}",
        ]
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_statuses(result: LoadResult) -> str:
    counts = ", ".join(f"{status} {n}" for status, n in sorted(result.statuses.items()))
    return f"{result.name} final statuses: {counts}"


async def setup_servers(
    session: aiohttp.ClientSession, coordinator: Child, backends: Sequence[Child], opts: Options
) -> dict[str, str]:
    """Wait for every process, register the backends and wait until they are online."""
    for backend in backends:
        await wait_ready(session, backend, "/health")
    await wait_ready(session, coordinator, "/")
    headers = admin_headers()
    for i, backend in enumerate(backends):
        body = server_body(f"b{i}", backend.url, capacity=opts.capacity, is_async=opts.is_async)
        await register(session, coordinator.url, headers, body)
    await wait_online(session, coordinator.url, headers, len(backends))
    return headers


async def bench(opts: Options, children: Children, workdir: Path) -> Report:
    backends = [
        start_mock_backend(children, f"b{i}", delay_ms=opts.delay_ms, force_async=opts.is_async)
        for i in range(opts.backends)
    ]
    database_url = opts.database_url or f"sqlite:///{workdir / 'taskyard.db'}"
    coordinator = start_coordinator(children, database_url, profile=opts.profile)

    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=opts.clients + 16)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        headers = await setup_servers(session, coordinator, backends, opts)
        poller = Poller(session, opts.poll_ms / 1000, opts.task_timeout_s, opts.wait_s)
        urls = [b.url for b in backends]

        async def direct(i: int) -> Sample:
            return await direct_request(poller, urls, i, is_async=opts.is_async)

        async def through_taskyard(i: int) -> Sample:
            return await taskyard_request(poller, coordinator.url, headers, i)

        cpu: dict[str, float] = {}
        if opts.warmup:
            await run_load("warmup", opts.warmup, opts.clients, direct)
        mark = (cpu_of(backends), time.process_time())
        direct_result = await run_load("direct", opts.tasks, opts.clients, direct)
        cpu["backends (direct)"] = cpu_of(backends) - mark[0]
        cpu["load generator (direct)"] = time.process_time() - mark[1]

        if opts.warmup:
            await run_load("warmup", opts.warmup, opts.clients, through_taskyard)
        mark = (cpu_of(backends), time.process_time())
        coordinator_mark = cpu_seconds(coordinator.pid)
        taskyard_result = await run_load("taskyard", opts.tasks, opts.clients, through_taskyard)
        cpu["coordinator (taskyard)"] = cpu_seconds(coordinator.pid) - coordinator_mark
        cpu["backends (taskyard)"] = cpu_of(backends) - mark[0]
        cpu["load generator (taskyard)"] = time.process_time() - mark[1]
    return Report(direct_result, taskyard_result, cpu)


def print_report(report: Report, opts: Options) -> None:
    mode = "async (202 + callback)" if opts.is_async else "sync (200 with the result)"
    print(
        f"\n{opts.backends} mock backends x capacity {opts.capacity}, delay {opts.delay_ms:g} ms,"
        f" {mode}; {opts.clients} clients; "
        + (
            f"long poll ?wait={opts.wait_s:g}"
            if opts.wait_s > 0
            else f"poll every {opts.poll_ms:g} ms"
        )
        + "\n"
    )
    print(format_table(report.direct, report.taskyard))
    print()
    print(format_statuses(report.direct))
    print(format_statuses(report.taskyard))
    print(
        f"polls per task: direct {report.direct.polls_per_task:.2f},"
        f" taskyard {report.taskyard.polls_per_task:.2f}"
    )
    tasks = max(1, report.taskyard.tasks)
    for what, seconds in report.cpu.items():
        per_task = f" ({seconds / tasks * 1000:.2f} ms/task)" if "coordinator" in what else ""
        print(f"CPU seconds, {what}: {seconds:.2f}{per_task}")


def print_profile(path: Path, top: int = 25) -> None:
    """The profile's top functions by own time, then by cumulative time.

    Cumulative times of coroutines include the time they spent suspended (awaiting I/O or
    other tasks), so own time is the better guide to where the CPU goes.
    """
    if not path.exists():
        print(f"no profile written to {path}", file=sys.stderr)
        return
    for key in ("tottime", "cumulative"):
        print(f"\ncoordinator profile ({path}), top {top} by {key}:")
        pstats.Stats(str(path)).sort_stats(key).print_stats(top)


def all_finished(report: Report) -> bool:
    return all(set(r.statuses) == {"FINISHED"} for r in (report.direct, report.taskyard))


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    report = run_in_workdir("taskyard-bench-", keep=opts.keep, bench=lambda c, w: bench(opts, c, w))
    if report is None:
        return 130
    print_report(report, opts)
    if opts.profile is not None:
        print_profile(opts.profile)
    if not all_finished(report):
        print("FAILED: not every task is FINISHED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
