"""What the observability of issue 8 costs: search and stats latency with a small and a large
table, and end-to-end throughput with the statistics' bookkeeping versus without it.

Two parts, one run, one table:

* **(a) read latency.** For each table size (``--sizes``, 1,000 and 200,000 stored tasks) a
  child process running the measured code makes the tasks once, created over the last 24
  hours, each taken through its life by the domain's own state changes (``domain/lifecycle``:
  start, retry, finish, fail, cancel), and stores them, oldest first, into a fresh database
  of each kind (a SQLite file in the temp dir, a PostgreSQL database dropped afterwards),
  migrated first: ``--batch``-sized transactions through ``SqlStore.add_tasks`` (which tallies
  them as created), then the tallies of their lives, into the rollups as a node would have
  written them. The mix: 85 % FINISHED,
  9 % FAILED (with an ``errorCode``), 3 % CANCELLED, 3 % WAITING (the newest) and 32 PROCESSING
  (every slot of the two servers busy, so that nothing moves while it is measured); 4 models,
  20 owners, both skewed. Then the database is settled (PostgreSQL: VACUUM ANALYZE, as
  autovacuum would soon; SQLite: a WAL checkpoint), one ``taskyard serve`` starts on it, the
  two servers (mock backends) are registered, and each request below is made ``--requests``
  times, one at a time (after 20 unmeasured ones), or for ``--time-cap`` seconds, whichever
  ends first:

  - ``GET /api/tasks?limit=50``: the first page, no filter;
  - ``GET /api/tasks?status=FAILED&model=<commonest>&limit=50``: a filtered first page;
  - ``GET /api/tasks?limit=50&cursor=…``: a deep page, half the table newer than its cursor
    (made with the server's own ``encode_cursor``);
  - ``GET /api/tasks?owner=<an owner>&status=FAILED&limit=50``: one owner's failures;
  - ``GET /api/tasks?model=no-such-model&limit=50``: a filter nothing matches (a typo);
  - ``GET /api/stats`` and ``GET /api/stats/hourly``.

  The last column divides a request's p50 by its p50 with the smallest table.

* **(b) end to end.** ``run.py``'s taskyard row (``make bench``: ``--tasks`` tasks, ``--clients``
  concurrent clients submitting ``POST /api/task`` and long-polling ``?wait=30``, 4 mock
  backends x capacity 16, 10 ms of work, 100 warm-up tasks, one node on a fresh SQLite file),
  against the code without the bookkeeping (``--before``, 9a93166) and with it (``--after``),
  in ``--rounds`` rounds that alternate which goes first. It prints each side's median
  throughput and latency, and the ratio after/before of the throughput and of the node's CPU
  per task (the steadier of the two on a shared machine).

By default "after" is this checkout's ``src/`` as it is (uncommitted changes included, named
``+changes`` in the table), as for every other benchmark; part (a) runs it too. A commit given
to ``--before`` or ``--after`` (``--after b957f24``: exactly the bookkeeping) is extracted with
``git archive`` into the temp dir (nothing is checked out in the repository, no worktree is
left behind) and run with ``PYTHONPATH=<tree>/src`` on this venv's Python.

Run from the repository root::

    make bench-observe                                   # sqlite and postgresql, ~4 minutes
    make bench-observe ARGS="--databases sqlite --sizes 1000,1000000"
    make bench-observe ARGS="--rounds 4 --tasks 5000"
    .venv/bin/python benchmarks/observe.py --help

Processes, databases and tokens come from ``benchmarks/fleet.py``; the end-to-end clients
from ``benchmarks/load.py`` and ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import run as e2e
from benchmarks.fleet import (
    DEFAULT_POSTGRES_URL,
    Child,
    Children,
    admin_headers,
    clean_env,
    fresh_database,
    postgres_server_url,
    postgres_unreachable,
    register_backends,
    run_in_workdir,
    start_coordinator,
    wait_ready,
)
from benchmarks.load import Poller, Sample, percentile, taskyard_request
from benchmarks.observe_tasks import AN_OWNER, CAPACITY, COMMONEST_MODEL, SERVERS
from benchmarks.trees import Tree, describe_sqlite, extract, start_backend

DATABASES = ("sqlite", "postgresql")
BEFORE_BOOKKEEPING = "9a93166"  # the parent of b957f24, which added the tallies and rollups
WARMUP_REQUESTS = 20  # per request kind, unmeasured

# ---- options ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    databases: tuple[str, ...]
    sizes: tuple[int, ...]
    requests: int
    time_cap_s: float
    batch: int
    rounds: int
    e2e_args: tuple[str, ...]
    before: str
    after: str
    postgres_url: str
    keep: bool
    skip_e2e: bool
    skip_reads: bool


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Search and stats latency with a small and a large table; end-to-end"
        " throughput with the statistics' bookkeeping versus before it."
    )
    parser.add_argument(
        "--databases",
        default="sqlite,postgresql",
        help="for the read latencies, comma-separated (sqlite,postgresql)",
    )
    parser.add_argument(
        "--sizes", default="1000,200000", help="stored tasks, comma-separated (1000,200000)"
    )
    parser.add_argument("--requests", type=int, default=300, help="per request kind (300)")
    parser.add_argument(
        "--time-cap", type=float, default=5.0, help="at most this many seconds per kind (5)"
    )
    parser.add_argument("--batch", type=int, default=10_000, help="tasks per insert (10000)")
    parser.add_argument("--rounds", type=int, default=2, help="end-to-end rounds per side (2)")
    parser.add_argument("--tasks", type=int, default=2000, help="end-to-end tasks per row (2000)")
    parser.add_argument("--clients", type=int, default=64, help="end-to-end clients (64)")
    parser.add_argument(
        "--before",
        default=BEFORE_BOOKKEEPING,
        help=f"commit without the bookkeeping ({BEFORE_BOOKKEEPING})",
    )
    parser.add_argument(
        "--after",
        default=".",
        help="commit with it; '.' (the default) = this checkout's src/ as it is",
    )
    parser.add_argument(
        "--postgres-url",
        default=postgres_server_url(),
        help="PostgreSQL server for fresh databases (env TASKYARD_TEST_POSTGRES_URL,"
        f" else {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument("--no-e2e", action="store_true", help="skip part (b)")
    parser.add_argument("--no-reads", action="store_true", help="skip part (a)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, databases)")
    ns = parser.parse_args(argv)
    databases = tuple(d.strip() for d in ns.databases.split(",") if d.strip())
    if not databases or any(d not in DATABASES for d in databases):
        parser.error(f"--databases: choose from {', '.join(DATABASES)}")
    try:
        sizes = tuple(sorted({int(n) for n in ns.sizes.split(",") if n.strip()}))
    except ValueError:
        parser.error("--sizes: comma-separated task counts")
    if not sizes or sizes[0] < 100:
        parser.error("--sizes: at least 100 tasks each")
    if ns.requests < 1 or ns.rounds < 1 or ns.batch < 1 or ns.tasks < 1 or ns.clients < 1:
        parser.error("--requests, --rounds, --batch, --tasks and --clients must be at least 1")
    return Options(
        databases=databases,
        sizes=sizes,
        requests=ns.requests,
        time_cap_s=ns.time_cap,
        batch=ns.batch,
        rounds=ns.rounds,
        e2e_args=("--tasks", str(ns.tasks), "--clients", str(ns.clients)),
        before=ns.before,
        after=ns.after,
        postgres_url=ns.postgres_url,
        keep=ns.keep,
        skip_e2e=ns.no_e2e,
        skip_reads=ns.no_reads,
    )


# ---- (a) read latency -------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    name: str
    path: str
    params: dict[str, str]


def probes(deep_cursor: str) -> list[Probe]:
    page = {"limit": "50"}
    return [
        Probe("tasks: first page", "/api/tasks", page),
        Probe(
            f"tasks: status=FAILED&model={COMMONEST_MODEL}",
            "/api/tasks",
            page | {"status": "FAILED", "model": COMMONEST_MODEL},
        ),
        Probe("tasks: deep page (cursor at 1/2)", "/api/tasks", page | {"cursor": deep_cursor}),
        Probe(
            f"tasks: owner={AN_OWNER}&status=FAILED",
            "/api/tasks",
            page | {"owner": AN_OWNER, "status": "FAILED"},
        ),
        Probe("tasks: model=no-such-model (0 hits)", "/api/tasks", page | {"model": "no-such"}),
        Probe("stats", "/api/stats", {}),
        Probe("stats/hourly", "/api/stats/hourly", {}),
    ]


@dataclass
class Latency:
    database: str
    durability: str
    size: int
    probe: str
    samples_ms: list[float]
    hits: int  # tasks on the page (search), -1 for the stats

    def p(self, q: float) -> float:
        return percentile(self.samples_ms, q)


async def time_probe(
    session: aiohttp.ClientSession, base: str, probe: Probe, opts: Options
) -> tuple[list[float], int]:
    headers = admin_headers()
    url = base + probe.path
    hits = -1

    async def once() -> float:
        nonlocal hits
        started = time.perf_counter()
        async with session.get(url, params=probe.params, headers=headers) as resp:
            body = await resp.read()
            elapsed = time.perf_counter() - started
            if resp.status != 200:
                raise RuntimeError(f"{probe.name}: HTTP {resp.status}: {body[:300]!r}")
        if probe.path == "/api/tasks":
            hits = len(json.loads(body)["tasks"])
        return elapsed * 1000

    for _ in range(WARMUP_REQUESTS):
        await once()
    samples: list[float] = []
    deadline = time.perf_counter() + opts.time_cap_s
    while len(samples) < opts.requests and (not samples or time.perf_counter() < deadline):
        samples.append(await once())
    return samples, hits


async def fill_databases(
    tree: Tree, urls: Sequence[str], size: int, opts: Options
) -> dict[str, Any]:
    args = [sys.executable, str(Path(__file__).resolve().parent / "observe_tasks.py")]
    args += [str(size), str(opts.batch)]
    args += [str(size), *urls]  # the size seeds the tasks: the same ones in every database
    proc = await asyncio.create_subprocess_exec(
        *args, env=clean_env(**tree.env), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"filling {size:,} tasks failed (exit {proc.returncode})")
    described: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return described


async def read_latencies(
    session: aiohttp.ClientSession,
    children: Children,
    backends: Sequence[Child],
    tree: Tree,
    workdir: Path,
    opts: Options,
) -> list[Latency]:
    found: list[Latency] = []
    for size in opts.sizes:
        async with contextlib.AsyncExitStack() as stack:
            urls = {
                database: await stack.enter_async_context(
                    fresh_database(
                        database,
                        postgres_url=opts.postgres_url,
                        sqlite_path=workdir / f"reads-{database}-{size}.db",
                    )
                )
                for database in opts.databases
            }
            described = await fill_databases(tree, list(urls.values()), size, opts)
            print(f"{size:,} tasks made in {described['make_s']} s", file=sys.stderr)
            for database, url in urls.items():
                stored = described[url]
                print(
                    f"  {database}: stored in {stored['fill_s']} s; {stored['by_status']};"
                    f" {stored['rollup_rows']:,} rollup rows",
                    file=sys.stderr,
                )
            for database, url in urls.items():
                found += await measure_reads(
                    session,
                    children,
                    backends,
                    tree,
                    url=url,
                    name=f"reads-{database}-{size}",
                    database=database,
                    size=size,
                    durability=described[url]["durability"],
                    deep_cursor=described["deep_cursor"],
                    opts=opts,
                )
    found.sort(key=lambda r: opts.databases.index(r.database))  # stable: sizes stay in order
    return found


async def measure_reads(
    session: aiohttp.ClientSession,
    children: Children,
    backends: Sequence[Child],
    tree: Tree,
    *,
    url: str,
    name: str,
    database: str,
    size: int,
    durability: str,
    deep_cursor: str,
    opts: Options,
) -> list[Latency]:
    """Start a node on the filled database, register the servers, time every probe."""
    found = []
    node = start_coordinator(children, url, name=name, node_id=name, env=tree.env)
    try:
        await wait_ready(session, node, "/")
        await register_backends(
            session,
            node.url,
            admin_headers(),
            backends[: len(SERVERS)],
            capacity=CAPACITY,
            is_async=False,
        )
        for probe in probes(deep_cursor):
            samples, hits = await time_probe(session, node.url, probe, opts)
            found.append(Latency(database, durability, size, probe.name, samples, hits))
            print(
                f"  {name} {probe.name}: p50 {found[-1].p(50):.1f} ms over {len(samples)}",
                file=sys.stderr,
            )
    finally:
        children.stop(node)
    return found


# ---- (b) end to end ---------------------------------------------------------------------


@dataclass
class E2ERow:
    tree: Tree
    round: int
    row: e2e.Row

    @property
    def throughput(self) -> float:
        return self.row.result.throughput

    @property
    def cpu_ms_per_task(self) -> float:
        return (self.row.nodes_cpu_s or math.nan) / max(1, self.row.result.tasks) * 1000


async def e2e_row(
    session: aiohttp.ClientSession,
    children: Children,
    backends: Sequence[Child],
    tree: Tree,
    *,
    url: str,
    name: str,
    e2e_opts: e2e.Options,
) -> e2e.Row:
    """run.py's taskyard row, one node, on `tree`'s code."""
    node = start_coordinator(children, url, name=name, node_id=name, env=tree.env)
    try:
        await wait_ready(session, node, "/")
        headers = admin_headers()
        await register_backends(
            session, node.url, headers, backends, capacity=e2e_opts.capacity, is_async=False
        )
        poller = Poller(session, e2e_opts.poll_ms / 1000, e2e_opts.task_timeout_s, e2e_opts.wait_s)

        async def one(i: int) -> Sample:
            return await taskyard_request(poller, node.url, headers, i)

        row = await e2e.measure(name, e2e_opts, backends, one, [node])
    finally:
        children.stop(node)
    lines = node.log_tail(10**6).splitlines()
    row.node_logs += [f"{node.name}: {line}" for line in lines if e2e.PROBLEM.search(line)]
    return row


async def end_to_end(
    session: aiohttp.ClientSession,
    children: Children,
    backends: Sequence[Child],
    trees: Sequence[Tree],
    workdir: Path,
    opts: Options,
    e2e_opts: e2e.Options,
) -> list[E2ERow]:
    rows: list[E2ERow] = []
    for number in range(1, opts.rounds + 1):
        order = trees if number % 2 else list(reversed(trees))  # alternate who goes first
        for tree in order:
            name = f"e2e-{tree.label}-round{number}"
            async with fresh_database(
                "sqlite", postgres_url=opts.postgres_url, sqlite_path=workdir / f"{name}.db"
            ) as url:
                row = await e2e_row(
                    session, children, backends, tree, url=url, name=name, e2e_opts=e2e_opts
                )
            rows.append(E2ERow(tree, number, row))
            print(
                f"{name}: {row.result.throughput:.1f} tasks/s,"
                f" {rows[-1].cpu_ms_per_task:.2f} CPU ms/task,"
                f" {dict(row.result.statuses)}",
                file=sys.stderr,
            )
    return rows


# ---- the run ----------------------------------------------------------------------------


@dataclass
class Results:
    after: Tree
    before: Tree
    reads: list[Latency] = field(default_factory=list)
    e2e: list[E2ERow] = field(default_factory=list)
    e2e_durability: dict[str, str] = field(default_factory=dict)  # by tree label


async def bench(opts: Options, e2e_opts: e2e.Options, children: Children, workdir: Path) -> Results:
    after = extract("after", opts.after, workdir)
    before = extract("before", opts.before, workdir)
    results = Results(after, before)
    backends = [
        start_backend(children, after, f"b{i}", delay_ms=e2e_opts.delay_ms)
        for i in range(e2e_opts.backends)
    ]
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=e2e_opts.clients + 16)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for backend in backends:
            await wait_ready(session, backend, "/health")
        if not opts.skip_reads:
            results.reads = await read_latencies(session, children, backends, after, workdir, opts)
        if not opts.skip_e2e:
            for tree in (before, after):
                results.e2e_durability[tree.label] = await describe_sqlite(tree, workdir)
            results.e2e = await end_to_end(
                session, children, backends, [before, after], workdir, opts, e2e_opts
            )
    return results


def format_table(results: Results, opts: Options, e2e_opts: e2e.Options) -> str:
    header = ["part", "database (durability)", "code", "tasks", "measured", "n"]
    header += ["p50 ms", "p99 ms", "tasks/s", "CPU ms/task", "ratio"]
    lines = [header]
    smallest = opts.sizes[0]
    base = {(r.database, r.probe): r.p(50) for r in results.reads if r.size == smallest}
    for r in results.reads:
        hits = "" if r.hits < 0 else f" [{r.hits}]"
        lines.append(
            [
                "a",
                r.durability,
                results.after.name,
                f"{r.size:,}",
                r.probe + hits,
                str(len(r.samples_ms)),
                f"{r.p(50):.1f}",
                f"{r.p(99):.1f}",
                "-",
                "-",
                f"{r.p(50) / base[(r.database, r.probe)]:.2f}",
            ]
        )
    if results.e2e:
        before_rate = statistics.median(
            x.throughput for x in results.e2e if x.tree is results.before
        )
        for tree in (results.before, results.after):
            mine = [x for x in results.e2e if x.tree is tree]
            rate = statistics.median(x.throughput for x in mine)
            lines.append(
                [
                    "b",
                    results.e2e_durability[tree.label],
                    tree.name,
                    f"{e2e_opts.tasks:,}",
                    f"submit -> FINISHED, {e2e_opts.clients} clients",
                    str(len(mine)),
                    f"{statistics.median(x.row.result.latency_ms(50) for x in mine):.1f}",
                    f"{statistics.median(x.row.result.latency_ms(99) for x in mine):.1f}",
                    f"{rate:.1f}",
                    f"{statistics.median(x.cpu_ms_per_task for x in mine):.2f}",
                    f"{rate / before_rate:.3f}",
                ]
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = (0, 1, 2, 4)
    text = [
        "  ".join(
            cell.ljust(widths[i]) if i in left else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        )
        for line in lines
    ]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def print_report(results: Results, opts: Options, e2e_opts: e2e.Options) -> int:
    print(
        "\n(a) sequential requests, admin token, one node; p50/p99 over n requests (after"
        f" {WARMUP_REQUESTS} unmeasured), [tasks on the page]; ratio = p50 / p50 with"
        f" {opts.sizes[0]:,} tasks."
        f"\n(b) run.py's taskyard row: {e2e_opts.backends} mock backends x capacity"
        f" {e2e_opts.capacity}, delay {e2e_opts.delay_ms:g} ms, sync, long poll ?wait="
        f"{e2e_opts.wait_s:g}, {e2e_opts.warmup} warm-up tasks; medians of n rounds that"
        " alternate which side goes first; CPU = the node's, per task; ratio = throughput /"
        " before's.\n"
    )
    print(format_table(results, opts, e2e_opts))
    status = 0
    if results.e2e:
        print()
        for x in results.e2e:
            print(
                f"  round {x.round} {x.tree.name}: {x.throughput:.1f} tasks/s, p50"
                f" {x.row.result.latency_ms(50):.1f} ms, node CPU {x.cpu_ms_per_task:.2f} ms/task,"
                f" {', '.join(f'{s} {n}' for s, n in sorted(x.row.result.statuses.items()))}"
            )

        def med(tree: Tree, attr: str) -> float:
            return float(statistics.median(getattr(x, attr) for x in results.e2e if x.tree is tree))

        thr = med(results.after, "throughput") / med(results.before, "throughput")
        cpu = med(results.after, "cpu_ms_per_task") / med(results.before, "cpu_ms_per_task")
        print(
            f"\nbookkeeping cost ({results.after.name} vs {results.before.name}): throughput"
            f" x{thr:.3f} ({(thr - 1) * 100:+.1f} %), node CPU per task x{cpu:.3f}"
            f" ({(cpu - 1) * 100:+.1f} %)"
        )
        for x in results.e2e:
            if x.row.node_logs:
                print(f"\n{x.row.result.name}: {len(x.row.node_logs)} warnings/errors logged:")
                print("\n".join(x.row.node_logs[:10]))
        if not all(x.row.all_finished for x in results.e2e):
            print("FAILED: not every end-to-end task is FINISHED", file=sys.stderr)
            status = 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    e2e_opts = e2e.parse_args(list(opts.e2e_args))
    if not opts.skip_reads and "postgresql" in opts.databases:
        problem = asyncio.run(postgres_unreachable(opts.postgres_url))
        if problem:
            print(f"{problem}; give --postgres-url, or --databases sqlite", file=sys.stderr)
            return 2
    started = time.monotonic()
    results = run_in_workdir(
        "taskyard-observe-", keep=opts.keep, bench=lambda c, w: bench(opts, e2e_opts, c, w)
    )
    if results is None:
        return 130
    status = print_report(results, opts, e2e_opts)
    print(f"\n{time.monotonic() - started:.0f} s in all")
    return status


if __name__ == "__main__":
    sys.exit(main())
