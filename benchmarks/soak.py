"""Soak: `--minutes` of steady load with failures on purpose, then an audit (`make soak`).

Two nodes on a fresh PostgreSQL database and `--backends` mock backends. First a short
closed-loop probe measures what this machine sustains; then tasks are submitted at
`--load` (half) of that rate, open loop, alternately to each node. Meanwhile:
- every `--kill-every-s` one backend is killed with SIGKILL and started again on the same
  port `--backend-down-s` later (its tasks in flight fail over to the others);
- half-way, node 2 is stopped with SIGTERM (staged shutdown) and started again; while it is
  away its submits go to node 1, as a load balancer would send them.
At the end the load stops, the queue drains, and every accepted task id is looked up in the
database: each must be there and final. Reported: accepted, lost (0 is the only good answer),
by final status, 5xx answers inside and outside the restart window, and each node's resident
memory at the start, the middle and the end (node 1 runs throughout).

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--load 0.5] [--rate N]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fleet import (
    Child,
    Children,
    admin_headers,
    fresh_postgres_database,
    postgres_server_url,
    register_backends,
    run_in_workdir,
    start_coordinator,
    start_mock_backend,
    wait_ready,
)

NODE_ENV = {"TASKYARD_NODE_TIMEOUT_S": "10", "TASKYARD_SHUTDOWN_GRACE_S": "10"}
RESTART_MARGIN_S = 5.0  # after node 2 is back, answers still count as the restart's
DRAIN_TIMEOUT_S = 180.0


@dataclass
class Tally:
    accepted: list[str] = field(default_factory=list)
    errors_5xx: list[tuple[float, int]] = field(default_factory=list)  # (time, status)
    rerouted: int = 0  # submits that found node 2 away and went to node 1
    refused: collections.Counter[int] = field(default_factory=collections.Counter)
    restart_window: tuple[float, float] | None = None
    memory: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


def rss_kib(child: Child) -> int:
    with open(f"/proc/{child.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Soak:
    def __init__(self, children: Children, args: argparse.Namespace, database_url: str) -> None:
        self.children = children
        self.args = args
        self.database_url = database_url
        self.headers = admin_headers()
        self.backends: list[Child] = []
        self.nodes: list[Child] = []
        self.node2_away = False
        self.tally = Tally()

    # ---- processes ---------------------------------------------------------------------

    def start_backend(self, index: int, port: int | None = None) -> Child:
        return start_mock_backend(
            self.children,
            f"b{index}",
            delay_ms=self.args.delay_ms,
            force_async=False,
            port=port,
        )

    def start_node(self, index: int, port: int | None = None) -> Child:
        return start_coordinator(
            self.children,
            self.database_url,
            name=f"node-{index + 1}-{time.monotonic_ns()}",
            node_id=f"soak-node-{index + 1}",
            env=NODE_ENV,
            port=port,
        )

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.backends = [self.start_backend(i) for i in range(self.args.backends)]
        for backend in self.backends:
            await wait_ready(session, backend, "/health")
        self.nodes = [self.start_node(0)]
        await wait_ready(session, self.nodes[0], "/")  # it migrates the empty database
        self.nodes.append(self.start_node(1))
        await wait_ready(session, self.nodes[1], "/")
        await register_backends(
            session,
            self.nodes[0].url,
            self.headers,
            self.backends,
            capacity=self.args.capacity,
            is_async=False,
        )

    # ---- load --------------------------------------------------------------------------

    async def submit(self, session: aiohttp.ClientSession, n: int) -> None:
        node = self.nodes[n % 2]
        if n % 2 == 1 and self.node2_away:
            node = self.nodes[0]
            self.tally.rerouted += 1
        try:
            async with session.post(
                node.url + "/api/task", json={"model": "m", "n": n}, headers=self.headers
            ) as response:
                body = await response.json(content_type=None)
                if response.status == 200:
                    self.tally.accepted.append(body["taskId"])
                elif response.status >= 500:
                    self.tally.errors_5xx.append((time.monotonic(), response.status))
                else:
                    self.tally.refused[response.status] += 1
        except aiohttp.ClientConnectionError:
            if node is self.nodes[1]:  # node 2 went away between the check and the send
                self.tally.rerouted += 1
                self.node2_away = True
                await self.submit(session, n - 1)  # n - 1 is even: node 1
            else:
                raise

    async def probe(self, session: aiohttp.ClientSession) -> float:
        """Closed loop for `--probe-s`: tasks/s finished end to end (submit + long poll)."""
        finished = 0
        deadline = time.monotonic() + self.args.probe_s

        async def client(c: int) -> None:
            nonlocal finished
            node = self.nodes[c % 2]
            while time.monotonic() < deadline:
                async with session.post(
                    node.url + "/api/task", json={"model": "m"}, headers=self.headers
                ) as response:
                    task_id = (await response.json())["taskId"]
                async with session.get(
                    f"{node.url}/api/task/{task_id}", params={"wait": "30"}, headers=self.headers
                ) as response:
                    await response.read()
                finished += 1

        started = time.monotonic()
        await asyncio.gather(*(client(c) for c in range(self.args.probe_clients)))
        return finished / (time.monotonic() - started)

    async def load(self, session: aiohttp.ClientSession, rate: float, until: float) -> None:
        """Submit at `rate` a second, open loop, in 10 ms ticks, until `until`."""
        in_flight: set[asyncio.Task[None]] = set()
        sent = 0
        started = time.monotonic()
        while time.monotonic() < until:
            due = int((time.monotonic() - started) * rate)
            while sent < due:
                job = asyncio.create_task(self.submit(session, sent))
                in_flight.add(job)
                job.add_done_callback(in_flight.discard)
                sent += 1
            await asyncio.sleep(0.01)
        await asyncio.gather(*in_flight)

    # ---- failures on purpose -------------------------------------------------------------

    async def kill_backends(self, until: float) -> None:
        victim = 0
        while time.monotonic() + self.args.kill_every_s < until:
            await asyncio.sleep(self.args.kill_every_s)
            index = victim % len(self.backends)
            backend = self.backends[index]
            await asyncio.to_thread(self.children.stop, backend, signal.SIGKILL)
            await asyncio.sleep(self.args.backend_down_s)
            self.backends[index] = self.start_backend(index, port=backend.port)
            victim += 1

    async def restart_node2(self, session: aiohttp.ClientSession, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        self.sample_memory("middle")
        node = self.nodes[1]
        began = time.monotonic()
        self.node2_away = True
        # In a thread: the load goes on meanwhile (to node 1).
        await asyncio.to_thread(self.children.stop, node, signal.SIGTERM, 30)
        self.nodes[1] = self.start_node(1, port=node.port)
        await wait_ready(session, self.nodes[1], "/")
        self.node2_away = False
        self.tally.restart_window = (began, time.monotonic() + RESTART_MARGIN_S)

    def sample_memory(self, when: str) -> None:
        for index, node in enumerate(self.nodes):
            self.tally.memory.setdefault(f"node {index + 1}", []).append((when, rss_kib(node)))

    # ---- audit ---------------------------------------------------------------------------

    async def drain_and_audit(self) -> dict[str, int]:
        dsn = self.database_url.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn)
        try:
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while time.monotonic() < deadline:
                open_ = await conn.fetchval(
                    "SELECT count(*) FROM tasks WHERE status IN ('WAITING', 'PROCESSING')"
                )
                if open_ == 0:
                    break
                await asyncio.sleep(1)
            rows = await conn.fetch("SELECT id, status FROM tasks")
        finally:
            await conn.close()
        stored = {row["id"]: row["status"] for row in rows}
        statuses: collections.Counter[str] = collections.Counter()
        lost = 0
        for task_id in self.tally.accepted:
            status = stored.get(task_id)
            if status is None:
                lost += 1
            else:
                statuses[status] += 1
        return {"lost": lost, **statuses}


async def soak(children: Children, args: argparse.Namespace) -> tuple[Soak, float, dict[str, int]]:
    async with fresh_postgres_database(postgres_server_url()) as database_url:
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=512)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            run = Soak(children, args, database_url)
            await run.start(session)
            rate = args.rate or args.load * await run.probe(session)
            print(f"soak: {rate:.0f} tasks/s for {args.minutes:g} min", flush=True)
            started = time.monotonic()
            until = started + args.minutes * 60
            await asyncio.sleep(0)
            run.sample_memory("start")
            await asyncio.gather(
                run.load(session, rate, until),
                run.kill_backends(until),
                run.restart_node2(session, started + args.minutes * 30),
            )
            run.sample_memory("end")
            audit = await run.drain_and_audit()
            return run, rate, audit


def inside(window: tuple[float, float] | None) -> Callable[[float], bool]:
    return lambda t: window is not None and window[0] <= t <= window[1]


def print_report(run: Soak, rate: float, audit: dict[str, int], args: argparse.Namespace) -> None:
    tally = run.tally
    in_window = inside(tally.restart_window)
    during = sum(1 for t, _ in tally.errors_5xx if in_window(t))
    print(
        f"\nsoak: {args.minutes:g} min at {rate:.0f} tasks/s, 2 nodes on PostgreSQL,"
        f" {args.backends} backends x {args.capacity} ({args.delay_ms:g} ms), a backend"
        f" killed every {args.kill_every_s:g} s, node 2 restarted half-way\n"
    )
    finals = ", ".join(f"{k} {v}" for k, v in sorted(audit.items()) if k != "lost")
    print(f"accepted            {len(tally.accepted)}")
    print(f"lost                {audit['lost']}")
    print(f"final statuses      {finals}")
    print(f"5xx outside restart {len(tally.errors_5xx) - during}")
    print(f"5xx during restart  {during}")
    print(f"rerouted to node 1  {tally.rerouted}")
    print(f"other refusals      {dict(tally.refused) or 0}")
    print("\nresident memory (MiB)   start  middle     end")
    for node, samples in tally.memory.items():
        values = "  ".join(f"{kib / 1024:6.1f}" for _, kib in samples)
        print(f"{node:<22} {values}")
    print("(node 2's middle is just before its restart; its end is the new process)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--load", type=float, default=0.5, help="share of the probed rate")
    parser.add_argument("--rate", type=float, default=0, help="tasks/s; skips the probe")
    parser.add_argument("--probe-s", type=float, default=15)
    parser.add_argument("--probe-clients", type=int, default=64)
    parser.add_argument("--backends", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--delay-ms", type=float, default=20)
    parser.add_argument("--kill-every-s", type=float, default=60)
    parser.add_argument("--backend-down-s", type=float, default=5)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    result = run_in_workdir("taskyard-soak-", keep=args.keep, bench=lambda c, _w: soak(c, args))
    if result is not None:
        print_report(*result, args)


if __name__ == "__main__":
    main()
