"""The stored tasks of `observe.py`'s part (a): made once by the domain's own state changes
and stored into fresh databases, in a child process that runs the measured code tree
(`PYTHONPATH=<tree>/src`): `observe_tasks.py COUNT BATCH SEED URL...` fills every URL with the
same tasks and prints their description as JSON."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load import task_request

# ---- the stored tasks -------------------------------------------------------------------

MODELS = {"llama-3-70b": 0.5, "sdxl": 0.25, "whisper-large": 0.15, "bge-embed": 0.10}
# Median seconds of one attempt, per model (log-normal around it).
WORK_S = {"llama-3-70b": 2.0, "sdxl": 4.0, "whisper-large": 1.0, "bge-embed": 0.1}
OWNERS = {f"team-{i:02d}": 1 / (i + 1) for i in range(20)}  # Zipf-like: team-00 busiest
FINAL_MIX = {"FINISHED": 0.85, "FAILED": 0.09, "CANCELLED": 0.03}  # the rest waits
WAITING_SHARE = 0.03  # the newest tasks, created in the last 10 minutes
SERVERS = ("b0", "b1")  # registered after the fill, every slot taken by the PROCESSING tasks
CAPACITY = 16
# How FAILED tasks failed; timeouts and backend errors are retried up to max_attempts.
FAILURES = {
    "timeout": 0.35,
    "backend_error": 0.30,
    "backend_rejected": 0.15,
    "backend_failed": 0.15,
    "response_too_large": 0.05,
}
RETRIED = frozenset({"timeout", "backend_error"})
MAX_ATTEMPTS = 3
TIMEOUT_S = 300.0
DAY_MS = 24 * 3600 * 1000
COMMONEST_MODEL = max(MODELS, key=MODELS.__getitem__)
AN_OWNER = "team-03"


def pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def simulate(
    rng: random.Random, index: int, status: str, created: int, server: str | None = None
) -> tuple[Any, list[Any]]:
    """One task taken from its create to `status` by the domain's own state changes, from
    `created` on (its attempts on `server`, else on random ones); returns the task as stored
    and the tallies its changes recorded. The child process runs this, with the measured
    tree's `taskyard`."""
    from taskyard.domain import lifecycle
    from taskyard.domain.models import ErrorCode, Task, TaskStatus

    model, owner = pick(rng, MODELS), pick(rng, OWNERS)
    request = task_request(index) | {"model": model}
    task = Task(
        id=str(uuid.uuid4()),
        owner=owner,
        model=model,
        request=request,
        status=TaskStatus.WAITING,
        priority=0,
        attempt=0,
        max_attempts=MAX_ATTEMPTS,
        timeout_s=TIMEOUT_S,
        created_at=created,
        updated_at=created,
    )
    tallies: list[Any] = []
    clock = created
    if status == "WAITING":
        return task, tallies
    if status == "CANCELLED" and rng.random() < 0.7:  # most cancels come before a start
        update, task = lifecycle.cancel(
            task, now=clock + int(rng.expovariate(1 / 30_000)), grace_ms=30_000
        )
        return task, [*update.tallies]

    def start(task: Any, clock: int) -> tuple[Any, int]:
        clock = max(clock, task.next_attempt_at) + int(rng.expovariate(1 / 400))  # queue wait
        update, task = lifecycle.start_attempt(
            task,
            server_id=server or rng.choice(SERVERS),
            node_id="bench-fill",
            callback_url="http://127.0.0.1:1/api/task",
            now=clock,
        )
        tallies.extend(update.tallies)
        return task, clock

    def work_ms() -> int:
        return max(1, int(WORK_S[model] * 1000 * rng.lognormvariate(0, 0.5)))

    task, clock = start(task, clock)
    if status == "PROCESSING":
        return task, tallies
    if status == "CANCELLED":
        update, task = lifecycle.cancel(task, now=clock + work_ms() // 2, grace_ms=30_000)
        return task, [*tallies, *update.tallies]
    code = pick(rng, FAILURES) if status == "FAILED" else None
    if status == "FINISHED" and rng.random() < 0.05:  # a backend error, then a retry
        clock += work_ms() // 4
        update, task = lifecycle.retry_or_fail(
            task,
            error="HTTP 503",
            code=ErrorCode.BACKEND_ERROR,
            now=clock,
            rng=rng,
            retry_base_s=1,
            retry_max_s=60,
        )
        tallies.extend(update.tallies)
        task, clock = start(task, clock)
    if status == "FINISHED":
        clock += work_ms()
        update, task = lifecycle.finish(task, result={"output": f"result {index}"}, now=clock)
        return task, [*tallies, *update.tallies]
    assert code is not None
    while True:
        clock += int(TIMEOUT_S * 1000) if code == "timeout" else work_ms() // 3
        if code in RETRIED:
            update, task = lifecycle.retry_or_fail(
                task,
                error=code,
                code=ErrorCode(code),
                now=clock,
                rng=rng,
                retry_base_s=1,
                retry_max_s=60,
            )
        else:
            update, task = lifecycle.fail(task, error=code, code=ErrorCode(code), now=clock)
        tallies.extend(update.tallies)
        if task.status is TaskStatus.FAILED:
            return task, tallies
        task, clock = start(task, clock)


def statuses_for(count: int) -> list[str]:
    """The status of each of `count` tasks: len(SERVERS) x CAPACITY PROCESSING, WAITING_SHARE
    WAITING, the rest final in FINAL_MIX's proportions."""
    processing = min(count, len(SERVERS) * CAPACITY)
    waiting = min(count - processing, round(count * WAITING_SHARE))
    final = count - processing - waiting
    rng = random.Random(count)
    chosen = rng.choices(list(FINAL_MIX), weights=list(FINAL_MIX.values()), k=final)
    return chosen + ["WAITING"] * waiting + ["PROCESSING"] * processing


def make_tasks(count: int, *, now: int, seed: int) -> list[tuple[Any, list[Any]]]:
    """`count` tasks, oldest first, each with the tallies its life recorded."""
    rng = random.Random(seed)
    made: list[tuple[Any, list[Any]]] = []
    processing = 0
    for index, status in enumerate(statuses_for(count)):
        server = None
        if status == "PROCESSING":  # exactly CAPACITY on each server: no free slot
            server = SERVERS[processing % len(SERVERS)]
            processing += 1
        if status == "WAITING":
            created = now - int(rng.random() * 600_000)
        elif status == "PROCESSING":
            created = now - int(rng.random() * 120_000)
        else:
            created = now - int(rng.random() * DAY_MS)
        while True:
            task, tallies = simulate(rng, index, status, created, server)
            end = max([task.updated_at, *(t.at for t in tallies)])
            if end <= now:
                break
            created -= end - now + 1000  # its life ran past now: start it earlier
        if status == "PROCESSING":  # keep its slot for the whole run: no deadline sweep
            task = dataclasses.replace(task, deadline_at=now + 3600_000)
        made.append((task, tallies))
    made.sort(key=lambda item: (item[0].created_at, item[0].id))  # as clients created them
    return made


async def fill(urls: Sequence[str], count: int, *, batch: int, seed: int) -> dict[str, Any]:
    """Make `count` tasks with their tallies once; for each empty database in `urls`: migrate
    it, store them, settle it. Describe what was stored and how durable a commit is."""
    from taskyard.api.routes.search import encode_cursor
    from taskyard.clock import now_ms

    started = time.perf_counter()
    made = make_tasks(count, now=now_ms(), seed=seed)
    newest_first = sorted((task for task, _ in made), key=lambda t: (t.created_at, t.id))[::-1]
    described: dict[str, Any] = {
        "make_s": round(time.perf_counter() - started, 1),
        "deep_cursor": encode_cursor(newest_first[len(newest_first) // 2]),
    }
    for url in urls:
        described[url] = await store_tasks(url, made, batch=batch)
    return described


async def store_tasks(url: str, made: list[tuple[Any, list[Any]]], *, batch: int) -> dict[str, Any]:
    from taskyard.storage import rollups
    from taskyard.storage.migrate import upgrade
    from taskyard.storage.sql import SqlStore
    from taskyard.storage.tables import stat_rollups

    started = time.perf_counter()
    await upgrade(url)
    store = SqlStore.open(url)
    try:
        for first in range(0, len(made), batch):
            part = made[first : first + batch]
            # add_tasks tallies them as created; the rest of their lives' tallies follow.
            lives = [tally for _, tallies in part for tally in tallies]
            await store.add_tasks([task for task, _ in part])

            def record(conn: Any, lives: list[Any] = lives) -> None:
                rollups.record(conn, lives)

            await store.writes.run(record)
        # What autovacuum would do soon after such an insert, done before the node measures
        # rather than while it does.
        statement = "VACUUM ANALYZE" if store.is_postgres else "PRAGMA wal_checkpoint(TRUNCATE)"
        await store.runner.read(lambda conn: conn.exec_driver_sql(statement).close())
        durability = await store.runner.read(lambda conn: _durability(conn, store.is_postgres))
        rollup_rows = await store.runner.read(
            lambda conn: conn.exec_driver_sql(f"SELECT count(*) FROM {stat_rollups.name}").scalar()
        )
        by_status = await store.count_tasks()
    finally:
        await store.close()
    return {
        "durability": durability,
        "by_status": dict(sorted(by_status.items())),
        "rollup_rows": int(rollup_rows or 0),
        "fill_s": round(time.perf_counter() - started, 1),
    }


def _durability(conn: Any, is_postgres: bool) -> str:
    """How durable a commit is, as the node's own connections are set up."""
    if is_postgres:
        version = conn.exec_driver_sql("SHOW server_version").scalar().split()[0]
        sync = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
        fsync = conn.exec_driver_sql("SHOW fsync").scalar()
        return f"postgresql {version}, synchronous_commit={sync}, fsync={fsync}"
    journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    level = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return f"sqlite {journal.upper()}, synchronous={names.get(int(level), level)}"


def fill_child(argv: Sequence[str]) -> int:
    """`observe_tasks.py COUNT BATCH SEED URL...`: fill, print the description as JSON."""
    count, batch, seed, urls = int(argv[0]), int(argv[1]), int(argv[2]), argv[3:]
    print(json.dumps(asyncio.run(fill(urls, count, batch=batch, seed=seed))))
    return 0


if __name__ == "__main__":
    sys.exit(fill_child(sys.argv[1:]))
