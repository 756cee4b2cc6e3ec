"""Issue 11's targets in one run and one table (`make bench-compare`).

With the same mock backends (no delay), the same task body, task count and client
concurrency, in turn:

- `direct`: the clients call the backends themselves (aiohttp): the ceiling;
- `celery`: Celery + Redis, prefork with one process per core, Redis result backend; each
  client thread sends a task and waits for its result; the task makes taskyard's predict call;
- `taskyard xN`: `taskyard serve` on a fresh SQLite file (N worker processes); clients submit
  and long-poll `?wait=`;
- `taskyard pg xN`: the same on a fresh PostgreSQL database;
- `direct c1`, `taskyard c1`: the same with one client; the latency taskyard adds is the
  difference of the two. The client waits for each result with a create and a long poll
  (`POST`, then `GET ?wait=`), or in the create itself (`POST ?wait=`: the `1 call` rows);
- the submit rates of `benchmarks/submit.py`, the health monitor at 1,000 servers checked
  every 10 s (`benchmarks/health_scale.py`) and the dispatch rate with 50,000 vs 1,000 tasks
  waiting on each database (`benchmarks/backlog.py`, one round).

Then the targets, each as a ratio of what was measured in this run (ratio ≥ 1 = met):
end to end ≥ 2 x Celery; PostgreSQL ≥ 0.8 x SQLite; node memory after the load ≤ 1.1 x after
the warm-up; added latency ≤ 2 ms p50 and ≤ 10 ms p99; submit single ≥ 3,000/s, batch ≥
20,000 tasks/s; health monitor < 5 % of a core; 50,000 waiting ≥ 0.8 x 1,000 waiting.
`--parts` picks some of them (e2e, pg, latency, submit, health, backlog).

Celery runs from its own venv (`.venv-bench`, the `bench` dependency group; `make
bench-compare` syncs it) and Redis database 9 of the local server (`CELERY_BENCH_REDIS`).

    make bench-compare [ARGS="--tasks 5000 --clients 64"]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import backlog, health_scale, run, submit
from benchmarks.fleet import (
    Child,
    Children,
    clean_env,
    postgres_server_url,
    run_in_workdir,
    start_mock_backend,
    wait_ready,
)
from benchmarks.load import LoadResult, Poller, Sample, direct_request, run_load

ROOT = Path(__file__).resolve().parent.parent
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
SQLITE_MODES = ("full", "normal")  # TASKYARD_SQLITE_SYNCHRONOUS of the one-client rows
CELERY_REDIS = os.environ.get("CELERY_BENCH_REDIS", "redis://127.0.0.1:6379/9")
PARTS = "e2e,pg,latency,submit,health,backlog"
# How a one-client row waits for each result: a create then a long poll, or the create waiting.
LATENCY_STYLES = {"POST + GET ?wait": False, "POST ?wait": True}
MEMORY_GROWTH_MAX = 1.10  # node memory after the measured load / after the warm-up
HEALTH = health_scale.Options(
    servers=[1000], backends=4, interval_s=10.0, window_s=30.0, list_calls=5, keep=False
)


@dataclass(frozen=True)
class Target:
    name: str
    measured: float
    goal: float
    unit: str
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.measured / self.goal
        return self.goal / self.measured if self.measured > 0 else float("inf")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per row (5000)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--backends", type=int, default=4)
    parser.add_argument("--capacity", type=int, default=16, help="max_concurrency each")
    parser.add_argument("--latency-tasks", type=int, default=1000, help="for the c1 rows")
    parser.add_argument("--celery-processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="taskyard rows")
    parser.add_argument(
        "--parts",
        default=PARTS,
        help=f"which parts to run (comma-separated, default all: {PARTS})",
    )
    parser.add_argument("--keep", action="store_true")
    return parser.parse_args(argv)


def run_options(args: argparse.Namespace, *, tasks: int, clients: int) -> run.Options:
    return run.Options(
        tasks=tasks,
        backends=args.backends,
        capacity=args.capacity,
        delay_ms=0.0,
        clients=clients,
        is_async=False,
        setups=(run.Setup("sqlite"),),
        postgres_url=postgres_server_url(),
        keep=args.keep,
        poll_ms=10.0,
        wait_s=30.0,
        warmup=min(200, tasks // 10),
        task_timeout_s=60.0,
        profile=None,
    )


def celery_row(
    children: Children, backends: Sequence[Child], args: argparse.Namespace
) -> LoadResult:
    """Start a Celery worker on the backends, run the Celery load side, stop the worker."""
    if not BENCH_PYTHON.exists():
        raise SystemExit(f"{BENCH_PYTHON} is missing: run `make bench-compare` (it syncs it)")
    env = clean_env(
        CELERY_BENCH_REDIS=CELERY_REDIS,
        CELERY_BENCH_BACKENDS=",".join(b.url for b in backends),
        PYTHONPATH=str(ROOT),
    )
    side = [str(BENCH_PYTHON), str(ROOT / "benchmarks" / "celery_side.py")]
    subprocess.run([*side, "flush"], env=env, check=True, timeout=30)
    worker = children.spawn(
        "celery-worker",
        [
            str(BENCH_PYTHON), "-m", "celery", "-A", "benchmarks.celery_side", "worker",
            "--pool", "prefork", "--concurrency", str(args.celery_processes),
            "--loglevel", "warning", "--without-gossip", "--without-mingle",
        ],
        port=0,
        env=env,
    )  # fmt: skip
    try:
        done = subprocess.run(
            [*side, "load", "--tasks", str(args.tasks), "--clients", str(args.clients)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        children.stop(worker, grace_s=20)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    result = LoadResult("celery", args.clients, measured["elapsed_s"])
    result.samples = [Sample(latency, outcome, 0) for latency, outcome in measured["samples"]]
    return result


async def direct_row(
    backends: Sequence[Child], *, tasks: int, clients: int, name: str
) -> LoadResult:
    urls = [b.url for b in backends]
    connector = aiohttp.TCPConnector(limit=clients + 16)
    async with aiohttp.ClientSession(connector=connector) as session:
        poller = Poller(session, 0.01, 60.0)

        async def one(i: int) -> Sample:
            return await direct_request(poller, urls, i, is_async=False)

        await run_load("warmup", min(200, tasks // 10), clients, one)
        return await run_load(name, tasks, clients, one)


async def taskyard_row(
    children: Children,
    backends: Sequence[Child],
    workdir: Path,
    args: argparse.Namespace,
    *,
    workers: int,
    tasks: int,
    clients: int,
    name: str,
    index: int,
    synchronous: str = "full",
    database: str = "sqlite",
    submit_waits: bool = False,
) -> run.Row:
    opts = run_options(args, tasks=tasks, clients=clients)
    setup = run.Setup(database, nodes=1, workers=workers, sqlite_synchronous=synchronous)
    connector = aiohttp.TCPConnector(limit=clients + 16)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        run.database_for(setup, index, opts, workdir) as database_url,
    ):
        poller = Poller(
            session, opts.poll_ms / 1000, opts.task_timeout_s, opts.wait_s, submit_waits
        )
        row = await run.taskyard_row(
            session,
            poller,
            children,
            backends,
            setup=setup,
            index=index,
            database_url=database_url,
            opts=opts,
        )
    row.result.name = name
    return row


async def submit_rates(children: Children, workdir: Path) -> dict[str, float]:
    args = argparse.Namespace(creates=5000, clients=64, batch=1000, batch_creates=50_000)
    args.batch_clients = 4
    rows = {"single": submit.Row("single"), "batch": submit.Row("batch")}
    await submit.one_round(children, workdir, rows, args, 0)
    return {name: statistics.median(row.rates) for name, row in rows.items()}


@dataclass
class Results:
    loads: list[LoadResult]
    taskyard: dict[int, run.Row]  # by worker count
    postgres: dict[int, run.Row]  # the same on PostgreSQL
    latency: dict[str, tuple[LoadResult, LoadResult]]  # by SQLite mode: direct c1, taskyard c1
    submits: dict[str, float]
    health: health_scale.Row | None
    backlog: list[tuple[str, float]]  # per database: dispatch rate, 50,000 vs 1,000 waiting


async def bench(children: Children, workdir: Path, args: argparse.Namespace) -> Results:
    backends = [
        start_mock_backend(children, f"b{i}", delay_ms=0.0, force_async=False)
        for i in range(args.backends)
    ]
    async with aiohttp.ClientSession() as session:
        for backend in backends:
            await wait_ready(session, backend, "/health")
    parts = set(args.parts.split(","))
    loads: list[LoadResult] = []
    if "e2e" in parts:
        loads.append(
            await direct_row(backends, tasks=args.tasks, clients=args.clients, name="direct")
        )
        loads.append(celery_row(children, backends, args))
    rows: dict[int, run.Row] = {}
    for n, workers in enumerate(args.workers if "e2e" in parts else [], 1):
        rows[workers] = await taskyard_row(
            children, backends, workdir, args,
            workers=workers, tasks=args.tasks, clients=args.clients,
            name=f"taskyard x{workers}", index=n,
        )  # fmt: skip
        loads.append(rows[workers].result)
    postgres: dict[int, run.Row] = {}
    for n, workers in enumerate(args.workers if "pg" in parts else [], 50):
        postgres[workers] = await taskyard_row(
            children, backends, workdir, args,
            workers=workers, tasks=args.tasks, clients=args.clients,
            name=f"taskyard pg x{workers}", index=n, database="postgresql",
        )  # fmt: skip
        loads.append(postgres[workers].result)
    latency: dict[str, tuple[LoadResult, LoadResult]] = {}
    for n, mode in enumerate(SQLITE_MODES if "latency" in parts else (), 100):
        direct_c1 = await direct_row(
            backends, tasks=args.latency_tasks, clients=1, name=f"direct c1 ({mode})"
        )
        loads.append(direct_c1)
        for style, submit_waits in LATENCY_STYLES.items():
            taskyard_c1 = await taskyard_row(
                children, backends, workdir, args, workers=1, tasks=args.latency_tasks,
                clients=1, name=f"taskyard c1 ({mode}{', 1 call' if submit_waits else ''})",
                index=n * 2 + submit_waits, synchronous=mode, submit_waits=submit_waits,
            )  # fmt: skip
            loads.append(taskyard_c1.result)
            latency[f"SQLite {mode}, {style}"] = (direct_c1, taskyard_c1.result)
    submits = await submit_rates(children, workdir) if "submit" in parts else {}
    health = (await health_scale.bench(HEALTH, children, workdir))[0] if "health" in parts else None
    depths: list[tuple[str, float]] = []
    if "backlog" in parts:
        options = backlog.parse_args(["--rounds", "1"])
        rounds = await backlog.bench(options, children, workdir)
        depths = [(database, ratio) for database, ratio, _ in backlog.verdicts(rounds, options)]
    return Results(loads, rows, postgres, latency, submits, health, depths)


def targets(results: Results) -> list[Target]:
    found = []
    if results.taskyard:
        celery = next(r for r in results.loads if r.name == "celery")
        best = max(results.taskyard.values(), key=lambda row: row.result.throughput).result
        ratio = best.throughput / celery.throughput
        found.append(Target(f"end to end vs Celery ({best.name})", ratio, 2.0, "x"))
    sqlite_x1, postgres_x1 = results.taskyard.get(1), results.postgres.get(1)
    if sqlite_x1 and postgres_x1:
        ratio = postgres_x1.result.throughput / sqlite_x1.result.throughput
        found.append(Target("PostgreSQL x1 vs SQLite x1", ratio, 0.8, "x"))
    for workers, row in results.taskyard.items():
        warm, end = row.nodes_rss
        if warm:
            name = f"memory growth over the load (x{workers})"
            found.append(Target(name, end / warm, MEMORY_GROWTH_MAX, "x", higher_is_better=False))
    for how, (direct_c1, taskyard_c1) in results.latency.items():
        for q, goal in ((50, 2.0), (99, 10.0)):
            added = taskyard_c1.latency_ms(q) - direct_c1.latency_ms(q)
            name = f"added latency p{q}, {how}"
            found.append(Target(name, added, goal, "ms", higher_is_better=False))
    for name, goal in submit.TARGETS.items():
        if name in results.submits:
            found.append(Target(f"submit {name}", results.submits[name], goal, "tasks/s"))
    if results.health is not None:
        name = f"health, {results.health.servers} servers / {HEALTH.interval_s:g} s"
        cpu = results.health.cpu_percent
        found.append(Target(name, cpu, 5.0, "% of a core", higher_is_better=False))
    for database, ratio in results.backlog:
        found.append(Target(f"dispatch, 50,000 vs 1,000 waiting ({database})", ratio, 0.8, "x"))
    return found


def print_loads(loads: list[LoadResult]) -> None:
    direct = loads[0]  # with the e2e part; else the one-client direct row
    print(f"{'row':<14} {'tasks/s':>9} {'vs direct':>9} {'p50 ms':>8} {'p99 ms':>8}  outcomes")
    for load in loads:
        outcomes = ", ".join(f"{s} {n}" for s, n in sorted(load.statuses.items()))
        versus = load.throughput / direct.throughput if "c1" not in load.name else float("nan")
        print(
            f"{load.name:<14} {load.throughput:>9.0f} {versus:>9.2f}"
            f" {load.latency_ms(50):>8.2f} {load.latency_ms(99):>8.2f}  {outcomes}"
        )


def print_report(results: Results, args: argparse.Namespace) -> None:
    print(
        f"\n{args.backends} mock backends (no delay) x capacity {args.capacity}; {args.tasks}"
        f" tasks, {args.clients} clients (c1 rows: {args.latency_tasks} tasks, one client);"
        f" Celery prefork {args.celery_processes}; taskyard on SQLite (synchronous=FULL unless"
        " a row says normal) or PostgreSQL (pg rows)\n"
    )
    if results.loads:  # parts e2e, pg or latency
        print_loads(results.loads)
    for row in [*results.taskyard.values(), *results.postgres.values()]:
        cpu = (row.nodes_cpu_s or 0.0) / max(1, row.result.tasks) * 1000
        warm, end = (rss / 2**20 for rss in row.nodes_rss)
        print(
            f"{row.result.name}: node CPU {cpu:.2f} ms/task; memory {warm:.0f} MB after the"
            f" warm-up, {end:.0f} MB at the end"
        )
    if results.health is not None:
        health = results.health
        print(
            f"health monitor: {health.servers} servers every {HEALTH.interval_s:g} s:"
            f" {health.checks_per_s:.0f} checks/s, {health.cpu_ms_per_check:.2f} ms CPU per check"
        )
    print(f"\n{'target':<40} {'measured':>10} {'goal':>10} {'ratio':>6}  met")
    for target in targets(results):
        sign = "≥" if target.higher_is_better else "≤"
        print(
            f"{target.name:<40} {target.measured:>10.2f} {sign}{target.goal:>9g} "
            f"{target.ratio:>6.2f}  {'yes' if target.ratio >= 1 else 'NO'}  ({target.unit})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_in_workdir(
        "taskyard-compare-", keep=args.keep, bench=lambda c, w: bench(c, w, args)
    )
    if results is None:
        return 130
    print_report(results, args)
    unfinished = [r.name for r in results.loads if set(r.statuses) != {"FINISHED"}]
    if unfinished:
        print(f"FAILED: not every task FINISHED in {', '.join(unfinished)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
