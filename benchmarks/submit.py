"""Submit rates: `POST /api/task` vs `POST /api/tasks/batch` (`make bench-submit`).

One node on a fresh SQLite file per row, no backends (tasks stay WAITING: this measures
storing them, not running them), an admin token (no rate limit or cap applies: the rows
measure the create path itself). Rows, each `--rounds` times in turn:

| row | what |
|---|---|
| `single` | `--clients` concurrent clients, each sending `POST /api/task` as fast as answered |
| `batch` | `--batch-clients` clients, each sending `POST /api/tasks/batch` of `--batch` tasks |

Throughput is tasks stored per second (each answer means durably stored); latency is per call.
Issue 11's targets: single ≥ 3,000/s, batch ≥ 20,000 tasks/s.

    .venv/bin/python benchmarks/submit.py [--creates 5000] [--clients 64] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fleet import Children, run_in_workdir, start_coordinator, user_headers, wait_ready
from benchmarks.load import percentile

TARGETS = {"single": 3_000.0, "batch": 20_000.0}


@dataclass
class Row:
    name: str
    rates: list[float] = field(default_factory=list)  # tasks/s, one per round
    latencies_ms: list[float] = field(default_factory=list)  # per call


async def post_all(
    session: aiohttp.ClientSession, url: str, bodies: list[Any], clients: int
) -> tuple[float, list[float]]:
    """Send `bodies` over `clients` concurrent clients; (elapsed s, latency per call ms)."""
    headers = user_headers()
    queue = list(reversed(bodies))
    latencies: list[float] = []

    async def client() -> None:
        while queue:
            body = queue.pop()
            started = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started, latencies


async def one_round(
    children: Children, workdir: Path, rows: dict[str, Row], args: argparse.Namespace, n: int
) -> None:
    for name in rows:
        node = start_coordinator(children, f"sqlite:///{workdir / f'{name}-{n}.db'}", name=name)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                await wait_ready(session, node, "/")
                bodies: list[Any]
                if name == "single":
                    url, bodies = node.url + "/api/task", [{"model": "m"}] * args.creates
                    clients, tasks, warm_up = args.clients, args.creates, 64
                else:
                    calls = max(1, args.batch_creates // args.batch)
                    batch = {"tasks": [{"request": {"model": "m"}}] * args.batch}
                    url, bodies = node.url + "/api/tasks/batch", [batch] * calls
                    clients, tasks, warm_up = args.batch_clients, calls * args.batch, 2
                await post_all(session, url, bodies[:warm_up], min(clients, warm_up))
                elapsed, latencies = await post_all(session, url, bodies, clients)
                rows[name].rates.append(tasks / elapsed)
                rows[name].latencies_ms += latencies
        finally:
            children.stop(node)


async def bench(children: Children, workdir: Path, args: argparse.Namespace) -> list[Row]:
    rows = {"single": Row("single"), "batch": Row("batch")}
    for n in range(args.rounds):
        await one_round(children, workdir, rows, args, n)
    return list(rows.values())


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"\nSQLite, one node, admin token; single: {args.creates} creates by {args.clients}"
        f" clients; batch: {args.batch} tasks per call by {args.batch_clients} clients;"
        f" {args.rounds} rounds (median)\n"
    )
    print(f"{'row':<7} {'tasks/s':>9} {'target':>8} {'ratio':>6} {'call p50 ms':>12} {'p99':>7}")
    for row in rows:
        rate = statistics.median(row.rates)
        target = TARGETS[row.name]
        p50, p99 = percentile(row.latencies_ms, 50), percentile(row.latencies_ms, 99)
        print(
            f"{row.name:<7} {rate:>9.0f} {target:>8.0f} {rate / target:>6.2f}"
            f" {p50:>12.1f} {p99:>7.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=5000, help="single creates per round")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1000, help="tasks per batch call")
    parser.add_argument("--batch-creates", type=int, default=50_000, help="per round")
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    rows = run_in_workdir("taskyard-submit-", keep=args.keep, bench=lambda c, w: bench(c, w, args))
    if rows:
        print_table(rows, args)


if __name__ == "__main__":
    main()
