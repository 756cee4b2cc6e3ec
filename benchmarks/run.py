"""End-to-end benchmark: tasks through taskyard versus the same predict calls made directly.

What it measures, on this machine, in one run:

* ``direct``: N predict calls (``POST /predict`` with taskyard's dispatch payload shape) sent
  straight to K mock backends, round-robin, by C concurrent clients. In ``--async`` mode the
  backends answer 202 and the client polls ``GET /result/{id}`` on the backend until it is there.
* ``taskyard <database> xN``: the same N requests submitted to ``taskyard serve`` (N nodes on a
  fresh database: a SQLite file, or a PostgreSQL database dropped at the end) by C concurrent
  clients, spread round-robin over the nodes. Each client submits (``POST /api/task``) and then
  polls ``GET /api/task/{id}?wait=30`` on the same node (a long poll that answers once the task
  is final; ``--wait-s 0`` polls every ``--poll-ms`` instead); latency is from the submit to the
  answer that first reads ``FINISHED``. Throughput is N divided by the time from the first
  submit to the last task read as final.

``--compare`` measures, in one run with the same mock backends and workload, the rows direct,
sqlite x1, postgresql x1 and postgresql x2.

It prints one table (throughput, latency p50/p99, ratios to direct, coordinator CPU per task,
whether every task finished), then the final task statuses (the exit status is 1 unless every
task is FINISHED), the CPU seconds used by the nodes, the backends and this load generator, and
what the nodes logged.

Run from the repository root::

    make bench
    make bench ARGS="--tasks 5000 --async"
    make bench ARGS="--database postgresql --nodes 2"
    make bench-scale                             # = make bench ARGS=--compare
    .venv/bin/python benchmarks/run.py --help
    .venv/bin/python benchmarks/run.py --profile /tmp/prof.out   # cProfile the coordinator

Process management, tokens and CPU accounting live in ``benchmarks/fleet.py``; the clients and
their latency samples in ``benchmarks/load.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from sqlalchemy.engine import make_url

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fleet import (
    DEFAULT_POSTGRES_URL,
    Child,
    Children,
    admin_headers,
    cpu_of,
    fresh_database,
    local_postgres_cpu,
    postgres_server_url,
    postgres_unreachable,
    register_backends,
    rss_of,
    run_in_workdir,
    start_coordinator,
    start_mock_backend,
    user_headers,
    wait_ready,
)
from benchmarks.load import (
    LoadResult,
    OneRequest,
    Poller,
    Sample,
    direct_request,
    run_load,
    taskyard_request,
)

# ---- the benchmark --------------------------------------------------------------------------

DATABASES = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Setup:
    """One taskyard row: its database and how many nodes share it."""

    database: str  # "sqlite" or "postgresql"
    nodes: int = 1
    database_url: str | None = None  # from --database-url: used as is, never emptied or dropped
    workers: int = 1  # processes per node (`taskyard serve --workers`)
    sqlite_synchronous: str = "full"  # TASKYARD_SQLITE_SYNCHRONOUS (SQLite rows only)

    @property
    def name(self) -> str:
        return f"taskyard {self.database} x{self.nodes}"


# Log lines worth showing: records at warning level and up (the nodes run with --log-level
# warning, so that is every record) and tracebacks; not the banner `serve` prints.
PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|^Traceback")

COMPARE: tuple[Setup, ...] = (Setup("sqlite"), Setup("postgresql"), Setup("postgresql", nodes=2))


@dataclass(frozen=True)
class Options:
    tasks: int
    backends: int
    capacity: int
    delay_ms: float
    clients: int
    is_async: bool
    setups: tuple[Setup, ...]
    postgres_url: str
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
    parser.add_argument("--tasks", type=int, default=2000, help="requests per row (2000)")
    parser.add_argument("--backends", type=int, default=4, help="mock backends (4)")
    parser.add_argument("--capacity", type=int, default=16, help="max_concurrency each (16)")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="backend work time (10)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    parser.add_argument(
        "--async", dest="is_async", action="store_true", help="backends answer 202, call back"
    )
    parser.add_argument(
        "--database",
        choices=DATABASES,
        default=None,
        help="sqlite: a fresh file in the temp dir (default); postgresql: a fresh database on"
        " --postgres-url, dropped at the end",
    )
    parser.add_argument(
        "--database-url", default=None, help="use this database as is (not emptied, not dropped)"
    )
    parser.add_argument(
        "--postgres-url",
        default=postgres_server_url(),
        help="PostgreSQL server for fresh databases (env TASKYARD_TEST_POSTGRES_URL,"
        f" else {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument(
        "--nodes", type=int, default=None, help="taskyard nodes on the one database (1)"
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="one run, rows: direct, sqlite x1, postgresql x1, postgresql x2",
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
        "--profile", type=Path, default=None, help="run node 1 under cProfile, writing to PATH"
    )
    ns = parser.parse_args(argv)
    for name in ("tasks", "backends", "capacity", "clients"):
        if getattr(ns, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if ns.compare:
        if ns.database or ns.database_url or ns.nodes is not None or ns.profile:
            parser.error(
                "--compare chooses the databases and nodes itself; it takes no"
                " --database, --database-url, --nodes or --profile"
            )
        setups = COMPARE
    else:
        setups = (chosen_setup(parser, ns),)
    return Options(
        tasks=ns.tasks,
        backends=ns.backends,
        capacity=ns.capacity,
        delay_ms=ns.delay_ms,
        clients=ns.clients,
        is_async=ns.is_async,
        setups=setups,
        postgres_url=ns.postgres_url,
        keep=ns.keep,
        poll_ms=ns.poll_ms,
        wait_s=max(0.0, ns.wait_s),
        warmup=max(0, ns.warmup),
        task_timeout_s=ns.task_timeout,
        profile=ns.profile.resolve() if ns.profile else None,
    )


def chosen_setup(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> Setup:
    nodes = 1 if ns.nodes is None else ns.nodes
    if nodes < 1:
        parser.error("--nodes must be at least 1")
    if ns.database_url and ns.database:
        parser.error("give --database or --database-url, not both")
    database = make_url(ns.database_url).get_backend_name() if ns.database_url else ns.database
    database = database or "sqlite"
    if nodes > 1 and database != "postgresql":
        parser.error(
            f"--nodes {nodes} needs PostgreSQL: several taskyard nodes can share only a"
            f" PostgreSQL database, not {database} (add --database postgresql)"
        )
    return Setup(database, nodes, database_url=ns.database_url)


@dataclass
class Row:
    """One row of the table: a measured phase, the CPU it cost and what the nodes logged."""

    result: LoadResult
    backends_cpu_s: float
    load_cpu_s: float
    nodes_cpu_s: float | None = None  # summed over the nodes; None for direct
    postgres_cpu_s: float = 0.0  # the local PostgreSQL server's processes
    # The nodes' resident memory after the warm-up and after the measured load (bytes).
    nodes_rss: tuple[int, int] = (0, 0)
    node_logs: list[str] = field(default_factory=list)  # PROBLEM lines the nodes logged

    @property
    def all_finished(self) -> bool:
        return set(self.result.statuses) == {"FINISHED"}


async def measure(
    name: str, opts: Options, backends: Sequence[Child], one: OneRequest, nodes: Sequence[Child]
) -> Row:
    """Warm up, then run the measured requests, counting the CPU everyone spent on them."""
    if opts.warmup:
        await run_load("warmup", opts.warmup, opts.clients, one)
    marks = (cpu_of(backends), time.process_time(), cpu_of(nodes), local_postgres_cpu())
    rss_warm = rss_of(nodes)
    result = await run_load(name, opts.tasks, opts.clients, one)
    return Row(
        result,
        nodes_rss=(rss_warm, rss_of(nodes)),
        backends_cpu_s=cpu_of(backends) - marks[0],
        load_cpu_s=time.process_time() - marks[1],
        nodes_cpu_s=cpu_of(nodes) - marks[2] if nodes else None,
        postgres_cpu_s=local_postgres_cpu() - marks[3],
    )


@asynccontextmanager
async def database_for(
    setup: Setup, index: int, opts: Options, workdir: Path
) -> AsyncIterator[str]:
    """The database URL for one row: given, or fresh (and a PostgreSQL one dropped after)."""
    if setup.database_url:
        yield setup.database_url
        return
    sqlite_path = workdir / f"taskyard-{index}.db"
    async with fresh_database(
        setup.database, postgres_url=opts.postgres_url, sqlite_path=sqlite_path
    ) as url:
        yield url


async def taskyard_row(
    session: aiohttp.ClientSession,
    poller: Poller,
    children: Children,
    backends: Sequence[Child],
    *,
    setup: Setup,
    index: int,
    database_url: str,
    opts: Options,
) -> Row:
    """Start the row's nodes on its database, measure, and stop them (also on failure).

    Node 1 starts alone and migrates the fresh database; the others start once it is ready
    (nodes that start together on an empty PostgreSQL database race in the migrations).
    """
    nodes: list[Child] = []
    try:
        for n in range(setup.nodes):
            node = start_coordinator(
                children,
                database_url,
                name=f"row{index}-bench-node-{n + 1}",
                node_id=f"bench-node-{n + 1}",
                profile=opts.profile if n == 0 else None,
                workers=setup.workers,
                env={"TASKYARD_SQLITE_SYNCHRONOUS": setup.sqlite_synchronous},
            )
            nodes.append(node)
            if n == 0:
                await wait_ready(session, node, "/")
        for node in nodes[1:]:
            await wait_ready(session, node, "/")
        headers = admin_headers()
        await register_backends(
            session,
            nodes[0].url,
            headers,
            backends,
            capacity=opts.capacity,
            is_async=opts.is_async,
        )

        user = user_headers()

        async def through_taskyard(i: int) -> Sample:
            return await taskyard_request(poller, nodes[i % len(nodes)].url, user, i)

        row = await measure(setup.name, opts, backends, through_taskyard, nodes)
    finally:
        for node in nodes:  # before the database is dropped
            children.stop(node)
    for node in nodes:
        lines = node.log_tail(10**6).splitlines()
        row.node_logs += [f"{node.name}: {line}" for line in lines if PROBLEM.search(line)]
    return row


async def bench(opts: Options, children: Children, workdir: Path) -> list[Row]:
    backends = [
        start_mock_backend(children, f"b{i}", delay_ms=opts.delay_ms, force_async=opts.is_async)
        for i in range(opts.backends)
    ]
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=opts.clients + 16)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for backend in backends:
            await wait_ready(session, backend, "/health")
        poller = Poller(session, opts.poll_ms / 1000, opts.task_timeout_s, opts.wait_s)
        urls = [b.url for b in backends]

        async def direct(i: int) -> Sample:
            return await direct_request(poller, urls, i, is_async=opts.is_async)

        rows = [await measure("direct", opts, backends, direct, nodes=())]
        for index, setup in enumerate(opts.setups, 1):
            async with database_for(setup, index, opts, workdir) as database_url:
                row = await taskyard_row(
                    session,
                    poller,
                    children,
                    backends,
                    setup=setup,
                    index=index,
                    database_url=database_url,
                    opts=opts,
                )
            rows.append(row)
    return rows


def format_table(rows: Sequence[Row]) -> str:
    header = ["", "tasks", "concurrency", "throughput/s", "p50 ms", "p99 ms"]
    header += ["thr/direct", "p50/direct", "nodes CPU ms/task", "all FINISHED"]
    direct = rows[0].result
    lines = [header]
    for row in rows:
        result = row.result
        cpu = (
            "-"
            if row.nodes_cpu_s is None
            else f"{row.nodes_cpu_s / max(1, result.tasks) * 1000:.2f}"
        )
        lines.append(
            [
                result.name,
                str(result.tasks),
                str(result.concurrency),
                f"{result.throughput:.1f}",
                f"{result.latency_ms(50):.1f}",
                f"{result.latency_ms(99):.1f}",
                f"{result.throughput / direct.throughput:.3f}",
                f"{result.latency_ms(50) / direct.latency_ms(50):.2f}",
                cpu,
                "yes" if row.all_finished else "NO",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        )
        for line in lines
    ]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def print_report(rows: Sequence[Row], opts: Options) -> None:
    mode = "async (202 + callback)" if opts.is_async else "sync (200 with the result)"
    wait = (
        f"long poll ?wait={opts.wait_s:g}" if opts.wait_s > 0 else f"poll every {opts.poll_ms:g} ms"
    )
    print(
        f"\n{opts.backends} mock backends x capacity {opts.capacity}, delay {opts.delay_ms:g} ms,"
        f" {mode}; {opts.clients} clients; {wait}\n"
    )
    print(format_table(rows))
    print()
    for row in rows:
        result = row.result
        counts = ", ".join(f"{status} {n}" for status, n in sorted(result.statuses.items()))
        cpu = f"backends {row.backends_cpu_s:.2f}, load generator {row.load_cpu_s:.2f}"
        if row.nodes_cpu_s is not None:
            cpu = f"nodes {row.nodes_cpu_s:.2f}, postgres {row.postgres_cpu_s:.2f}, {cpu}"
        print(f"{result.name}: {counts}; polls/task {result.polls_per_task:.2f}; CPU s: {cpu}")
    for row in rows[1:]:
        if row.node_logs:
            print(f"\n{row.result.name}: {len(row.node_logs)} warnings/errors in the node logs:")
            print("\n".join(row.node_logs[:10]))


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


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    fresh_postgres = any(s.database == "postgresql" and not s.database_url for s in opts.setups)
    if fresh_postgres and (problem := asyncio.run(postgres_unreachable(opts.postgres_url))):
        print(f"{problem}; give --postgres-url or TASKYARD_TEST_POSTGRES_URL", file=sys.stderr)
        return 2
    rows = run_in_workdir("taskyard-bench-", keep=opts.keep, bench=lambda c, w: bench(opts, c, w))
    if rows is None:
        return 130
    print_report(rows, opts)
    if opts.profile is not None:
        print_profile(opts.profile)
    if not all(row.all_finished for row in rows):
        print("FAILED: not every task is FINISHED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
