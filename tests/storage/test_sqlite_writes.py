"""How SQLite write transactions run (`runners.SqliteRunner.transaction`): statements in the
event loop's thread, the COMMIT in the writer thread, and the whole transaction in the writer
thread when another connection (another process) holds the write lock. Concurrent writers of
one process never wait on each other's locks, with or without a foreign lock holder."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text

from taskyard.storage.runners import SqliteRunner, Synchronous

HANG_S = 8.0  # a stuck transaction waits for the 10 s busy timeout; nothing here needs 1 s


def _runner(tmp_path: Path, mode: Synchronous) -> SqliteRunner:
    path = tmp_path / "writes.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS t (writer INTEGER, n INTEGER)")
    return SqliteRunner(f"sqlite:///{path}", synchronous=mode)


def _insert(writer: int, n: int) -> Any:
    def op(conn: Connection) -> threading.Thread:
        conn.execute(text("INSERT INTO t VALUES (:w, :n)"), {"w": writer, "n": n})
        return threading.current_thread()

    return op


@pytest.mark.parametrize("mode", ["full", "normal"])
async def test_statements_run_in_the_loop_thread(tmp_path: Path, mode: Synchronous) -> None:
    runner = _runner(tmp_path, mode)
    try:
        [thread] = await runner.transaction([_insert(0, 0)])
        assert thread is threading.current_thread()
    finally:
        await runner.close()


async def test_with_the_lock_held_elsewhere_the_writer_thread_waits_for_it(
    tmp_path: Path,
) -> None:
    runner = _runner(tmp_path, "full")
    other = sqlite3.connect(tmp_path / "writes.db", isolation_level=None)

    def count_then_insert(conn: Connection) -> tuple[int, threading.Thread]:
        seen = conn.execute(text("SELECT count(*) FROM t")).scalar_one()
        conn.execute(text("INSERT INTO t VALUES (0, 0)"))
        return seen, threading.current_thread()

    try:
        other.execute("BEGIN IMMEDIATE")  # another process's writer, say
        other.execute("INSERT INTO t VALUES (9, 9)")
        write = asyncio.ensure_future(runner.transaction([count_then_insert]))
        # Found the lock taken, the transaction goes to the writer thread (started by it: this
        # runner has committed nothing yet), which waits there for the lock...
        while not any(t.name.startswith("taskyard-sqlite-writer") for t in threading.enumerate()):
            await asyncio.sleep(0.005)
        assert not write.done()
        # ...while the loop goes on: a read answers.
        assert await runner.read(lambda c: c.execute(text("SELECT 1")).scalar()) == 1
        other.execute("COMMIT")
        [(seen, thread)] = await asyncio.wait_for(write, HANG_S)
        # It waited for the lock: its statements ran after the other writer's commit (they
        # saw its row), in the writer thread.
        assert seen == 1
        assert thread is not threading.current_thread()
    finally:
        other.close()
        await runner.close()


@pytest.mark.parametrize("mode", ["full", "normal"])
async def test_concurrent_writers_never_wait_on_each_other(
    tmp_path: Path, mode: Synchronous
) -> None:
    """Writers of one process, a foreign lock holder coming and going: every write lands."""
    runner = _runner(tmp_path, mode)
    other = sqlite3.connect(tmp_path / "writes.db", isolation_level=None)
    stop = asyncio.Event()

    async def foreign_locks() -> None:
        while not stop.is_set():
            other.execute("BEGIN IMMEDIATE")
            await asyncio.sleep(0.002)
            other.execute("COMMIT")
            await asyncio.sleep(0.003)

    async def writer(k: int) -> None:
        for n in range(60):
            await runner.transaction([_insert(k, n)])

    locker = asyncio.ensure_future(foreign_locks())
    try:
        await asyncio.wait_for(asyncio.gather(*(writer(k) for k in range(4))), HANG_S)
    finally:
        stop.set()
        await locker
        other.close()
    count = await runner.read(lambda c: c.execute(text("SELECT count(*) FROM t")).scalar())
    await runner.close()
    assert count == 4 * 60


async def test_a_transaction_cancelled_at_its_commit_still_commits_and_lets_go(
    tmp_path: Path,
) -> None:
    """Cancelled while its COMMIT waits for the writer thread (a stop cancels the group
    committer): the COMMIT runs anyway and the connection goes back. A cancelled
    `run_in_executor` dropped the job before it started, leaking the connection with the write
    lock held; the next transaction then blocked the event loop in the pool for 30 s (the CI
    hang of test_one_sigterm_stops_every_worker_and_exits_0)."""
    runner = _runner(tmp_path, "full")
    writer_free = threading.Event()
    try:
        busy = asyncio.get_running_loop().run_in_executor(runner._writer, writer_free.wait)
        write = asyncio.ensure_future(runner.transaction([_insert(0, 0)]))
        for _ in range(100):  # until its statements ran and it waits for the writer thread
            await asyncio.sleep(0.01)
            if runner.inline_engine.pool.checkedout():  # type: ignore[attr-defined]
                break
        assert runner.inline_engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        write.cancel()
        await asyncio.sleep(0)
        writer_free.set()
        await busy
        with pytest.raises(asyncio.CancelledError):
            await write
        assert runner.inline_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        await asyncio.wait_for(runner.transaction([_insert(0, 1)]), HANG_S)
        count = await runner.read(lambda c: c.execute(text("SELECT count(*) FROM t")).scalar())
        assert count == 2
    finally:
        writer_free.set()
        await runner.close()
