"""Dispatch rate with a shallow and a deep queue: does a claim cost more when more tasks wait?

Issue 7 measured half the dispatch rate with 50,000 tasks waiting than with 1,000: each claim
sorted every due task. For each database and each backlog size this benchmark, in rounds that
alternate the sizes (the machine's noise then hits every size alike):

* makes a fresh database (a SQLite file in the temp dir, or a PostgreSQL database dropped
  afterwards) and migrates it;
* inserts, in one transaction, ``--warmup`` tasks of priority 1 and the backlog: ``N`` tasks
  of priority 0, all WAITING and built as ``POST /api/task`` builds them, then settles the
  database (PostgreSQL: ANALYZE, as autovacuum would; SQLite: a checkpoint of the write-ahead
  log the insert filled; see `settle`);
* starts one ``taskyard serve`` on it and registers ``--backends`` mock backends (no work:
  ``--delay-ms 0``; ``max_concurrency`` ``--capacity`` each). Priority first: the node runs the
  warm-up tasks (connections to the backends, caches, every slot busy), then the backlog;
* waits until ``--measure`` backlog tasks have results, stops the node, and reads their dispatch
  times (``started_at``, the claim's time) from the database.

**dispatches/s** is the rate of the first ``--measure`` backlog dispatches, which start with
``N`` tasks waiting (``--measure`` is at most the smallest ``N``: a small queue drains while it
is measured, which only helps the small queue). Each size's rate is the median of its rounds;
the last column divides it by the smallest backlog's rate on the same database. The target
(issue 7) is at least 0.8 for 50,000 against 1,000; the exit status is 1 when a database
misses ``--target``, or when a measured task did not end FINISHED.

Run from the repository root::

    make bench-backlog                                  # sqlite and postgresql, 1,000 and 50,000
    make bench-backlog ARGS="--databases sqlite --rounds 5"
    .venv/bin/python benchmarks/backlog.py --help

Processes, databases and tokens come from ``benchmarks/fleet.py``, as for ``run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from sqlalchemy import func, select

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fleet import (
    DEFAULT_POSTGRES_URL,
    Child,
    Children,
    admin_headers,
    fresh_database,
    postgres_server_url,
    postgres_unreachable,
    register_backends,
    run_in_workdir,
    start_coordinator,
    start_mock_backend,
    wait_ready,
)
from benchmarks.load import task_request
from taskyard.clock import now_ms
from taskyard.domain.models import Task, TaskStatus
from taskyard.storage.migrate import upgrade
from taskyard.storage.sql import SqlStore
from taskyard.storage.tables import tasks

DATABASES = ("sqlite", "postgresql")
# What `taskyard serve` gives a task created without options (config defaults).
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_TIMEOUT_S = 300.0
MEASURE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Options:
    databases: tuple[str, ...]
    backlogs: tuple[int, ...]
    rounds: int
    measure: int
    warmup: int
    backends: int
    capacity: int
    target: float
    postgres_url: str
    keep: bool


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Dispatch rate with a shallow and a deep queue of WAITING tasks."
    )
    parser.add_argument(
        "--databases", default="sqlite,postgresql", help="comma-separated (sqlite,postgresql)"
    )
    parser.add_argument(
        "--backlogs", default="1000,50000", help="tasks waiting, comma-separated (1000,50000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per size (3)")
    parser.add_argument(
        "--measure", type=int, default=1000, help="dispatches measured per round (1000)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2000, help="priority tasks dispatched first (2000)"
    )
    parser.add_argument("--backends", type=int, default=2, help="mock backends (2)")
    parser.add_argument("--capacity", type=int, default=128, help="max_concurrency each (128)")
    parser.add_argument(
        "--target", type=float, default=0.8, help="least rate of the deepest vs the smallest (0.8)"
    )
    parser.add_argument(
        "--postgres-url",
        default=postgres_server_url(),
        help="PostgreSQL server for fresh databases (env TASKYARD_TEST_POSTGRES_URL,"
        f" else {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, databases)")
    ns = parser.parse_args(argv)
    databases = tuple(d.strip() for d in ns.databases.split(",") if d.strip())
    if not databases or any(d not in DATABASES for d in databases):
        parser.error(f"--databases: choose from {', '.join(DATABASES)}")
    try:
        backlogs = tuple(sorted({int(n) for n in ns.backlogs.split(",") if n.strip()}))
    except ValueError:
        parser.error("--backlogs: comma-separated task counts")
    if not backlogs or not 2 <= ns.measure <= backlogs[0]:
        parser.error("--measure: from 2 to the smallest backlog (it times that backlog's tasks)")
    if ns.warmup < 0:
        parser.error("--warmup cannot be negative")
    if ns.rounds < 1 or ns.backends < 1 or ns.capacity < 1:
        parser.error("--rounds, --backends and --capacity must be at least 1")
    return Options(
        databases=databases,
        backlogs=backlogs,
        rounds=ns.rounds,
        measure=ns.measure,
        warmup=ns.warmup,
        backends=ns.backends,
        capacity=ns.capacity,
        target=ns.target,
        postgres_url=ns.postgres_url,
        keep=ns.keep,
    )


# ---- the backlog --------------------------------------------------------------------------


WARMUP_PRIORITY = 1
BACKLOG_PRIORITY = 0


def queued_tasks(count: int, *, priority: int = BACKLOG_PRIORITY, start: int = 0) -> list[Task]:
    """`count` WAITING tasks as `POST /api/task?priority=P` stores them, as if one arrived
    every millisecond from `start` on. (Created in one millisecond, FIFO order would follow the
    random ids, and a claim's tasks would lie all over the table, unlike a real queue's.)
    """
    return [
        Task(
            id=str(uuid.uuid4()),
            owner="bench",
            model="bench",
            request=task_request(i),
            status=TaskStatus.WAITING,
            priority=priority,
            attempt=0,
            max_attempts=DEFAULT_MAX_ATTEMPTS,
            timeout_s=DEFAULT_TIMEOUT_S,
            created_at=start + i,
            updated_at=start + i,
        )
        for i in range(count)
    ]


def warmup_and_backlog(warmup: int, backlog: int) -> list[Task]:
    start = now_ms() - warmup - backlog
    first = queued_tasks(warmup, priority=WARMUP_PRIORITY, start=start)
    return first + queued_tasks(backlog, start=start + warmup)


async def finished_count(store: SqlStore) -> int:
    """Tasks with a final time (ix_tasks_finished: a short range, however deep the queue)."""
    query = select(func.count()).where(tasks.c.finished_at.is_not(None))
    return int(await store.runner.read(lambda conn: conn.execute(query).scalar_one()))


async def first_dispatches(store: SqlStore, count: int) -> list[tuple[int, str]]:
    """(started_at, status) of the first `count` backlog tasks dispatched."""
    query = (
        select(tasks.c.started_at, tasks.c.status)
        .where(tasks.c.priority == BACKLOG_PRIORITY, tasks.c.started_at.is_not(None))
        .order_by(tasks.c.started_at, tasks.c.id)
        .limit(count)
    )
    found: list[tuple[int, str]] = await store.runner.read(
        lambda conn: [(int(row[0]), str(row[1])) for row in conn.execute(query)]
    )
    return found


async def settle(store: SqlStore) -> None:
    """Leave the database as a backlog built by clients over time would, not as one bulk insert.

    PostgreSQL: without statistics on the new rows the planner guesses (badly: see
    tests/storage/test_query_plans.py); autovacuum would ANALYZE the table within a minute of
    such an insert, so run it now. SQLite: checkpoint the tens of megabytes of write-ahead log
    the insert left, which a node would otherwise copy back while it is being measured.
    """
    statement = "ANALYZE tasks" if store.is_postgres else "PRAGMA wal_checkpoint(TRUNCATE)"
    await store.runner.read(lambda conn: conn.exec_driver_sql(statement).close())


def dispatch_rate(started_ms: Sequence[int]) -> float:
    """Dispatches per second, from the first dispatch time to the last."""
    span_s = (started_ms[-1] - started_ms[0]) / 1000
    return (len(started_ms) - 1) / span_s if span_s > 0 else float("nan")


# ---- one round ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    database: str
    backlog: int
    rate: float
    not_finished: int  # measured tasks that did not end FINISHED


async def measure_round(
    session: aiohttp.ClientSession,
    children: Children,
    backends: Sequence[Child],
    *,
    database_url: str,
    name: str,
    backlog: int,
    opts: Options,
) -> tuple[float, int]:
    """Load the tasks into the empty database, start a node on it, time the first backlog
    dispatches; return their rate and how many of them did not end FINISHED."""
    await upgrade(database_url)
    store = SqlStore.open(database_url)
    try:
        await store.add_tasks(warmup_and_backlog(opts.warmup, backlog))
        await settle(store)
        node = start_coordinator(children, database_url, name=name, node_id=name)
        try:
            await wait_ready(session, node, "/")
            await register_backends(
                session, node.url, admin_headers(), backends, capacity=opts.capacity, is_async=False
            )
            await wait_finished(store, node, opts.warmup + opts.measure)
        finally:
            children.stop(node)  # sends in flight get their grace time to record the answer
        measured = await first_dispatches(store, opts.measure)
    finally:
        await store.close()
    rate = dispatch_rate([started for started, _ in measured])
    return rate, sum(1 for _, status in measured if status != TaskStatus.FINISHED)


async def wait_finished(store: SqlStore, node: Child, count: int) -> None:
    deadline = time.monotonic() + MEASURE_TIMEOUT_S
    while await finished_count(store) < count:
        if node.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{node.name}: not {count} results yet:\n{node.log_tail()}")
        await asyncio.sleep(0.05)


async def bench(opts: Options, children: Children, workdir: Path) -> list[Round]:
    backends = [
        start_mock_backend(children, f"b{i}", delay_ms=0, force_async=False)
        for i in range(opts.backends)
    ]
    rounds: list[Round] = []
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), connector=connector
    ) as session:
        for backend in backends:
            await wait_ready(session, backend, "/health")
        for database in opts.databases:
            for number in range(1, opts.rounds + 1):
                for backlog in opts.backlogs:
                    name = f"{database}-{backlog}-round{number}"
                    async with fresh_database(
                        database,
                        postgres_url=opts.postgres_url,
                        sqlite_path=workdir / f"{name}.db",
                    ) as url:
                        rate, not_finished = await measure_round(
                            session,
                            children,
                            backends,
                            database_url=url,
                            name=name,
                            backlog=backlog,
                            opts=opts,
                        )
                    rounds.append(Round(database, backlog, rate, not_finished))
                    print(f"{name}: {rate:,.0f} dispatches/s", file=sys.stderr)
    return rounds


# ---- the report ---------------------------------------------------------------------------


def rates_of(rounds: Sequence[Round], database: str, backlog: int) -> list[float]:
    return [r.rate for r in rounds if (r.database, r.backlog) == (database, backlog)]


def median_rate(rounds: Sequence[Round], database: str, backlog: int) -> float:
    return statistics.median(rates_of(rounds, database, backlog))


def format_table(rounds: Sequence[Round], opts: Options) -> str:
    header = ["database", "waiting", "dispatches/s", "rounds", f"vs {opts.backlogs[0]:,}"]
    lines = [header]
    for database in opts.databases:
        smallest = median_rate(rounds, database, opts.backlogs[0])
        for backlog in opts.backlogs:
            rates = rates_of(rounds, database, backlog)
            median = statistics.median(rates)
            lines.append(
                [
                    database,
                    f"{backlog:,}",
                    f"{median:,.0f}",
                    " ".join(f"{rate:,.0f}" for rate in rates),
                    f"{median / smallest:.2f}",
                ]
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            cell.ljust(widths[i]) if i in (0, 3) else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        )
        for line in lines
    ]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def verdicts(rounds: Sequence[Round], opts: Options) -> list[tuple[str, float, bool]]:
    """Per database: the deepest backlog's rate over the smallest's, and whether it is enough."""
    found = []
    for database in opts.databases:
        ratio = median_rate(rounds, database, opts.backlogs[-1]) / median_rate(
            rounds, database, opts.backlogs[0]
        )
        found.append((database, ratio, ratio >= opts.target))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if "postgresql" in opts.databases and (
        problem := asyncio.run(postgres_unreachable(opts.postgres_url))
    ):
        print(f"{problem}; give --postgres-url, or --databases sqlite", file=sys.stderr)
        return 2
    rounds = run_in_workdir(
        "taskyard-backlog-", keep=opts.keep, bench=lambda c, w: bench(opts, c, w)
    )
    if rounds is None:
        return 130
    print(
        f"\n1 node, {opts.backends} mock backends x capacity {opts.capacity}, no work (delay 0);"
        f" after {opts.warmup:,} warm-up tasks, the first {opts.measure:,} dispatches of each"
        " backlog timed;"
        f" median of {opts.rounds} rounds\n"
    )
    print(format_table(rounds, opts))
    print()
    status = 0
    deepest, smallest = f"{opts.backlogs[-1]:,}", f"{opts.backlogs[0]:,}"
    for database, ratio, enough in verdicts(rounds, opts):
        verdict = "ok" if enough else "BELOW TARGET"
        print(
            f"{database}: {deepest} vs {smallest} waiting = {ratio:.2f} ({verdict}, target"
            f" {opts.target:g})"
        )
        status |= 0 if enough else 1
    if unfinished := sum(r.not_finished for r in rounds):
        print(f"FAILED: {unfinished} measured tasks did not end FINISHED", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
