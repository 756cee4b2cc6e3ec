"""What the rate limits and the unfinished-task cap cost on the create path.

One node on a fresh SQLite file per row, no backends (the tasks stay WAITING, so every capped
create counts its owner's unfinished tasks). `--clients` concurrent clients, each a user of
its own (role `user`, so limited), send `POST /api/task` as fast as they are answered. Rows,
each run `--rounds` times in turn so that the machine's noise spreads over all of them:

| row | limits |
|---|---|
| `off` | no rates, no cap (`TASKYARD_RATE_LIMIT_*=""`, `TASKYARD_MAX_UNFINISHED_TASKS=0`) |
| `rates` | the default rates (100 creates/s, 200 requests/s per user, in memory), no cap |
| `cap` | no rates; the default cap of 10,000 unfinished tasks per user |
| `memory` | the defaults: both of the above |
| `redis` | the same with the counters in Redis (`--redis`), as a cluster would share them |

No client reaches a limit (each makes far fewer creates a second than its rate), so the rows
measure the bookkeeping, not refusals; a 429 would be counted and reported.

    .venv/bin/python benchmarks/ratelimit.py [--creates 3000] [--clients 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import jwt

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fleet import SECRET, Children, run_in_workdir, start_coordinator, wait_ready
from benchmarks.load import percentile

OFF = {
    "TASKYARD_RATE_LIMIT_CREATES": "",
    "TASKYARD_RATE_LIMIT_REQUESTS": "",
    "TASKYARD_MAX_UNFINISHED_TASKS": "0",
}
RATES_ONLY = {"TASKYARD_MAX_UNFINISHED_TASKS": "0"}
CAP_ONLY = {"TASKYARD_RATE_LIMIT_CREATES": "", "TASKYARD_RATE_LIMIT_REQUESTS": ""}
MEMORY: dict[str, str] = {}  # the defaults
ROWS = {"off": OFF, "rates": RATES_ONLY, "cap": CAP_ONLY, "memory": MEMORY}


@dataclass
class Row:
    name: str
    rates: list[float] = field(default_factory=list)  # creates/s, one per round
    latencies_ms: list[float] = field(default_factory=list)
    refused: int = 0


def user_headers(sub: str) -> dict[str, str]:
    payload = {"sub": sub, "roles": ["user"], "exp": int(time.time() + 3600)}
    return {"Authorization": "Bearer " + jwt.encode(payload, SECRET, algorithm="HS256")}


async def one_row(
    children: Children,
    workdir: Path,
    row: Row,
    env: dict[str, str],
    args: argparse.Namespace,
    round_no: int,
) -> None:
    node = start_coordinator(
        children,
        f"sqlite:///{workdir / f'{row.name}-{round_no}.db'}",
        name=f"{row.name}-{round_no}",
        env=env,
    )
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, node, "/")
            per_client = args.creates // args.clients
            latencies: list[float] = []
            refused = 0

            async def client(n: int) -> None:
                nonlocal refused
                headers = user_headers(f"bench-user-{round_no}-{n}")
                for _ in range(per_client):
                    started = time.perf_counter()
                    async with session.post(
                        node.url + "/api/task", json={"model": "m"}, headers=headers
                    ) as response:
                        await response.read()
                        if response.status == 429:
                            refused += 1
                        elif response.status != 200:
                            raise RuntimeError(f"create answered {response.status}")
                    latencies.append((time.perf_counter() - started) * 1000)

            await asyncio.gather(*(client(n) for n in range(min(4, args.clients))))  # warm up
            latencies.clear()
            started = time.perf_counter()
            await asyncio.gather(*(client(n) for n in range(args.clients)))
            elapsed = time.perf_counter() - started
            row.rates.append(per_client * args.clients / elapsed)
            row.latencies_ms += latencies
            row.refused += refused
    finally:
        children.stop(node)


async def bench(children: Children, workdir: Path, args: argparse.Namespace) -> list[Row]:
    rows_env = dict(ROWS)
    if args.redis:
        rows_env["redis"] = {"TASKYARD_RATE_LIMIT_STORAGE": args.redis}
    rows = {name: Row(name) for name in rows_env}
    for round_no in range(args.rounds):
        for name, env in rows_env.items():
            await one_row(children, workdir, rows[name], env, args, round_no)
    return list(rows.values())


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    base = statistics.median(rows[0].rates)
    print(
        f"\n{args.creates} creates per row and round, {args.clients} clients (one user each),"
        f" {args.rounds} rounds, SQLite, one node\n"
    )
    print(f"{'row':<8} {'creates/s':>10} {'vs off':>7} {'p50 ms':>7} {'p99 ms':>7} {'429s':>5}")
    for row in rows:
        rate = statistics.median(row.rates)
        p50 = percentile(row.latencies_ms, 50)
        p99 = percentile(row.latencies_ms, 99)
        print(
            f"{row.name:<8} {rate:>10.0f} {rate / base:>7.2f} {p50:>7.1f} {p99:>7.1f}"
            f" {row.refused:>5}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=3000, help="per row and round")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379", help="'' to leave the redis row out"
    )
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    rows = run_in_workdir(
        "taskyard-ratelimit-", keep=args.keep, bench=lambda c, w: bench(c, w, args)
    )
    if rows:
        print_table(rows, args)


if __name__ == "__main__":
    main()
