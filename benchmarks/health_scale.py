"""Health-monitor scale benchmark: what checking many servers costs the coordinator.

For each server count (default 10, then 1000) it starts a fresh ``taskyard serve`` (fresh SQLite
file) with ``TASKYARD_HEALTH_INTERVAL_MIN_S = _MAX_S = --interval`` (1 s: every server is checked
every second), registers that many servers ``s0000, s0001, ...`` whose health URLs point at a few
shared mock backends, waits until all are online, then for ``--window`` seconds touches nothing
and measures:

* health checks per second: every passing check adds one to the server's
  ``health.consecutiveSuccesses``, so the sum of its increase over all servers between two
  ``GET /api/servers`` snapshots (window start and end) is the exact number of checks;
* the mean check period per server (window x servers / checks; the ideal is ``--interval``);
* the coordinator's CPU (utime + stime from /proc) as % of one core and per check;

and afterwards, in a separate phase, the latency of ``GET /api/servers`` (sequential calls).

Run from the repository root::

    .venv/bin/python benchmarks/health_scale.py
    .venv/bin/python benchmarks/health_scale.py --servers 10,100,1000 --window 30
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fleet import (
    Child,
    Children,
    admin_headers,
    cpu_seconds,
    list_servers,
    register,
    run_in_workdir,
    server_body,
    start_coordinator,
    start_mock_backend,
    wait_online,
    wait_ready,
)
from benchmarks.load import percentile

REGISTER_CONCURRENCY = 16


@dataclass(frozen=True)
class Options:
    servers: list[int]
    backends: int
    interval_s: float
    window_s: float
    list_calls: int
    keep: bool


@dataclass(frozen=True)
class Row:
    servers: int
    register_s: float
    checks: int
    window_s: float
    cpu_s: float
    list_ms: list[float]

    @property
    def checks_per_s(self) -> float:
        return self.checks / self.window_s

    @property
    def period_s(self) -> float:
        return self.servers * self.window_s / self.checks if self.checks else float("inf")

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_s / self.window_s

    @property
    def cpu_ms_per_check(self) -> float:
        return 1000 * self.cpu_s / self.checks if self.checks else float("nan")


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description="Cost of health-checking many servers.")
    parser.add_argument("--servers", default="10,1000", help="server counts, one row each")
    parser.add_argument("--backends", type=int, default=4, help="mock backends shared (4)")
    parser.add_argument("--interval", type=float, default=1.0, help="check interval, s (1)")
    parser.add_argument("--window", type=float, default=15.0, help="measured seconds (15)")
    parser.add_argument("--list-calls", type=int, default=20, help="GET /api/servers calls (20)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    ns = parser.parse_args(argv)
    try:
        counts = [int(n) for n in ns.servers.split(",") if n.strip()]
    except ValueError:
        parser.error("--servers takes comma-separated integers, e.g. 10,1000")
    if not counts or min(counts) < 0 or ns.backends < 1 or ns.window <= 0:
        parser.error("--servers must be >= 0 (0: idle baseline); --backends, --window > 0")
    return Options(counts, ns.backends, ns.interval, ns.window, max(1, ns.list_calls), ns.keep)


async def register_all(
    session: aiohttp.ClientSession,
    base: str,
    headers: dict[str, str],
    count: int,
    backends: Sequence[Child],
) -> None:
    """Register servers s0000.. round-robin over the backends, a few requests at a time."""
    slots = asyncio.Semaphore(REGISTER_CONCURRENCY)

    async def one(i: int) -> None:
        backend = backends[i % len(backends)]
        body = server_body(f"s{i:04d}", backend.url, capacity=4, is_async=False)
        async with slots:
            await register(session, base, headers, body)

    await asyncio.gather(*(one(i) for i in range(count)))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def successes(servers: list[dict[str, Any]]) -> dict[str, int]:
    return {s["id"]: s["health"]["consecutiveSuccesses"] for s in servers}


def checks_between(before: dict[str, int], after: dict[str, int]) -> int:
    """Passing checks between two snapshots; a failed check would reset the count."""
    if any(after.get(sid, 0) < n for sid, n in before.items()):
        raise RuntimeError("a health check failed during the window; counts are not exact")
    return sum(after[sid] - n for sid, n in before.items())


async def time_list_calls(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], calls: int
) -> list[float]:
    """Milliseconds per GET /api/servers, one call at a time."""
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        await list_servers(session, base, headers)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


async def measure(
    session: aiohttp.ClientSession,
    children: Children,
    workdir: Path,
    backends: Sequence[Child],
    count: int,
    opts: Options,
) -> Row:
    """One row: a fresh coordinator with `count` servers."""
    env = {
        "TASKYARD_HEALTH_INTERVAL_MIN_S": str(opts.interval_s),
        "TASKYARD_HEALTH_INTERVAL_MAX_S": str(opts.interval_s),
    }
    coordinator = start_coordinator(
        children, f"sqlite:///{workdir / f'health-{count}.db'}", env=env
    )
    try:
        await wait_ready(session, coordinator, "/")
        headers = admin_headers()
        started = time.perf_counter()
        await register_all(session, coordinator.url, headers, count, backends)
        # Listing 1,000 servers is not free: do not poll it faster than once a second.
        await wait_online(session, coordinator.url, headers, count, timeout_s=300, poll_s=1.0)
        register_s = time.perf_counter() - started
        await asyncio.sleep(min(2 * opts.interval_s, 5.0))  # let the first-check burst settle
        progress(f"  {count} online after {register_s:.1f} s; measuring {opts.window_s:g} s")

        before = successes(await list_servers(session, coordinator.url, headers))
        cpu_before, t_before = cpu_seconds(coordinator.pid), time.perf_counter()
        await asyncio.sleep(opts.window_s)
        cpu_after, t_after = cpu_seconds(coordinator.pid), time.perf_counter()
        after = successes(await list_servers(session, coordinator.url, headers))

        list_ms = await time_list_calls(session, coordinator.url, headers, opts.list_calls)
    finally:
        children.stop(coordinator)
    return Row(
        servers=count,
        register_s=register_s,
        checks=checks_between(before, after),
        window_s=t_after - t_before,
        cpu_s=cpu_after - cpu_before,
        list_ms=list_ms,
    )


async def bench(opts: Options, children: Children, workdir: Path) -> list[Row]:
    backends = [
        start_mock_backend(children, f"h{i}", delay_ms=0, force_async=False)
        for i in range(opts.backends)
    ]
    rows = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for backend in backends:
            await wait_ready(session, backend, "/health")
        for count in opts.servers:
            progress(f"{count} servers: registering")
            rows.append(await measure(session, children, workdir, backends, count, opts))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    header = [
        "servers",
        "checks/s",
        "period s",
        "CPU % (1 core)",
        "CPU ms/check",
        "GET /api/servers p50 ms",
        "max ms",
        "register+online s",
    ]
    table = [header]
    for row in rows:
        table.append(
            [
                str(row.servers),
                f"{row.checks_per_s:.1f}",
                f"{row.period_s:.2f}" if row.checks else "-",
                f"{row.cpu_percent:.1f}",
                f"{row.cpu_ms_per_check:.2f}" if row.checks else "-",
                f"{percentile(row.list_ms, 50):.1f}",
                f"{max(row.list_ms):.1f}",
                f"{row.register_s:.1f}",
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(widths[i]) for i, cell in enumerate(line)) for line in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    rows = run_in_workdir("taskyard-health-", keep=opts.keep, bench=lambda c, w: bench(opts, c, w))
    if rows is None:
        return 130
    print(
        f"\nhealth interval {opts.interval_s:g} s (min = max), {opts.backends} shared mock"
        f" backends, {opts.window_s:g} s window with no API traffic\n"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
