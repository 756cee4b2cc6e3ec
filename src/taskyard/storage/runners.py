"""How SQL runs: the one place that knows SQLite from PostgreSQL.

Every store operation is a plain function of a SQLAlchemy `Connection`; a runner decides where it
runs. SQLite goes through the standard library driver *synchronously*: a primary-key read in the
event loop's thread costs tens of microseconds, where an async driver spends most of a
millisecond on thread hops per statement. Its writes run on one dedicated thread (SQLite allows
one writer anyway), a whole group-commit batch per hop, so an fsync never blocks the event loop.
PostgreSQL goes through asyncpg, with the same functions run by `AsyncConnection.run_sync`.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import sys
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, ParamSpec, Protocol, TypeVar

import asyncpg
import sqlalchemy
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from taskyard.storage.direct import Statement
from taskyard.storage.faults import CommitOutcomeUnknown, is_transient, unavailable

T = TypeVar("T")
SyncOp = Callable[[Connection], Any]
Synchronous = Literal["full", "normal"]  # SQLite's PRAGMA synchronous (Settings)

FETCH_POOL_SIZE = 4  # PostgreSQL connections for the hot reads (`AsyncRunner.fetch`), as needed
FETCH_ACQUIRE_TIMEOUT_S = 30.0  # as the main pool's `pool_timeout`
GIL_SWITCH_INTERVAL_S = 0.0005


class Runner(Protocol):
    dialect: str

    async def read(self, op: Callable[[Connection], T]) -> T:
        """Run `op` on a connection outside any explicit transaction."""
        ...

    async def scan(self, op: Callable[[Connection], T]) -> T:
        """`read` for a query that may visit many rows (statistics, search): it must not hold
        up the event loop while it runs."""
        ...

    async def transaction(self, ops: list[SyncOp]) -> list[Any]:
        """Run `ops` in one transaction, committed before this returns; their results."""
        ...

    async def fetch(self, statement: Statement, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """`read` of one hot statement's rows, by the shortest way the database has."""
        ...

    async def close(self) -> None: ...


def async_url(url: str) -> str:
    """Pick the async driver for a plain database URL (`sqlite:///…`, `postgresql://…`)."""
    parsed = make_url(url)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
    backend = parsed.get_backend_name()
    if backend not in driver:
        raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}")
    if parsed.drivername in (backend, "postgres"):
        parsed = parsed.set(drivername=driver[backend])
    return parsed.render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 1) -> AsyncEngine:
    """An async engine: for PostgreSQL at run time (`open_runner` passes the node's pool size),
    and for migrations and tools, which use one connection. On SQLite (migrations only: a node
    runs `SqliteRunner`) every commit is fsynced, whatever TASKYARD_SQLITE_SYNCHRONOUS says."""
    url = async_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=0)
        pragmas = functools.partial(_sqlite_pragmas, synchronous="full")
        event.listen(engine.sync_engine, "connect", pragmas)
        return engine
    # A fixed pool: overflow connections would be opened and closed again under load, each a
    # new PostgreSQL backend process. No pre-ping either, which would double every query's
    # round trips; a connection broken by a server restart fails one statement, and the pool
    # then drops all connections and reconnects.
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=0, pool_timeout=30, pool_recycle=1800
    )


def open_runner(url: str, *, pool_size: int, sqlite_synchronous: Synchronous) -> Runner:
    if make_url(url).get_backend_name() == "sqlite":
        return SqliteRunner(url, synchronous=sqlite_synchronous)
    return AsyncRunner(create_engine(url, pool_size=pool_size))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, *, synchronous: Synchronous) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
    # FULL: a commit survives power loss, not just a crash. NORMAL (in WAL mode): no fsync at
    # commit, only at checkpoints; a crash of the process loses nothing, power loss may.
    cursor.execute(
        "PRAGMA synchronous=NORMAL" if synchronous == "normal" else "PRAGMA synchronous=FULL"
    )
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _write_engine(
    url: Any, pragmas: Callable[..., None], *, waits_for_lock: bool
) -> sqlalchemy.Engine:
    """One connection for write transactions, each begun with BEGIN IMMEDIATE."""
    engine = sqlalchemy.create_engine(
        url,
        pool_size=1,
        max_overflow=0,
        connect_args={"check_same_thread": False, "isolation_level": None},
    )
    event.listen(engine, "connect", pragmas)
    if not waits_for_lock:
        event.listen(engine, "connect", _no_busy_wait)
    event.listen(engine, "begin", _begin_immediate)
    return engine


def _no_busy_wait(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.close()


def _is_busy(exc: sqlalchemy.exc.OperationalError) -> bool:
    """SQLITE_BUSY: another connection holds the write lock."""
    return getattr(exc.orig, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY


R = TypeVar("R")
P = ParamSpec("P")


def _translated(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn a transient database failure into `StorageUnavailable` (see `faults`); an unknown
    commit outcome is passed on as it is, for the group committer to decide about."""

    @functools.wraps(method)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except CommitOutcomeUnknown:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise unavailable(exc) from exc
            raise

    return run


def _commit_and_close(conn: Connection) -> None:
    try:
        _commit(conn.commit)
    finally:
        conn.close()


def _commit(commit: Callable[[], Any]) -> Any:
    """COMMIT; a failure here leaves the outcome unknown (the server may have committed)."""
    try:
        return commit()
    except Exception as exc:
        raise CommitOutcomeUnknown(type(exc).__name__) from exc


class SqliteRunner:
    dialect = "sqlite"

    def __init__(self, url: str, *, synchronous: Synchronous) -> None:
        self.synchronous = synchronous
        pragmas = functools.partial(_sqlite_pragmas, synchronous=synchronous)
        sync_url = make_url(url).set(drivername="sqlite+pysqlite")
        # Connections move between the loop's thread (reads) and the writer thread, never
        # used by two at once: the pool hands each to one user at a time.
        self.engine = sqlalchemy.create_engine(
            sync_url, pool_size=4, max_overflow=0, connect_args={"check_same_thread": False}
        )
        event.listen(self.engine, "connect", pragmas)
        # Long reads (`scan`) run in worker threads on connections of their own, so that they
        # never take one the event loop's quick reads are waiting for.
        self.scan_engine = sqlalchemy.create_engine(
            sync_url, pool_size=2, max_overflow=0, connect_args={"check_same_thread": False}
        )
        event.listen(self.scan_engine, "connect", pragmas)
        # Writes start with BEGIN IMMEDIATE: the write lock is taken before the transaction's
        # first read, so what a claim reads (in-flight counts) cannot change under it, even
        # with another process on the same file. (pysqlite would begin only at the first
        # write; the recipe is SQLAlchemy's "pysqlite serializable" one.)
        self.write_engine = _write_engine(sync_url, pragmas, waits_for_lock=True)
        # The same, for transactions whose statements run in the event loop's thread: it
        # never waits for the lock (busy_timeout 0); when another process holds it, the
        # transaction goes to the writer thread instead, which waits (see `transaction`).
        self.inline_engine = _write_engine(sync_url, pragmas, waits_for_lock=False)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="taskyard-sqlite-writer")
        self._one_at_a_time = asyncio.Lock()
        # The sqlite3 module drops the GIL inside each statement; taking it back waits for the
        # writer thread's switch interval (5 ms by default), which stalled reads in the event
        # loop. A shorter interval keeps those waits short.
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))

    @_translated
    async def read(self, op: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            return op(conn)

    async def fetch(self, statement: Statement, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return await self.read(lambda conn: statement.rows(conn, params))

    @_translated
    async def scan(self, op: Callable[[Connection], T]) -> T:
        # In a worker thread: sqlite3 lets go of the GIL while a statement runs, so the loop
        # goes on serving (a count over 200,000 rows took ~50 ms, too long to block it).
        def run() -> T:
            with self.scan_engine.connect() as conn:
                return op(conn)

        return await asyncio.to_thread(run)

    @_translated
    async def transaction(self, ops: list[SyncOp]) -> list[Any]:
        """Run `ops` in the event loop's thread and the COMMIT (its fsync) in the writer's.

        The statements are mostly SQLAlchemy's Python, which holds the GIL wherever it runs:
        in the writer thread they only fought the loop for it (a transaction of two small
        writes took over a millisecond at one client, most of it waiting for the GIL). The
        fsync lets go of the GIL, so it runs in the writer thread while the loop goes on; with
        `synchronous=normal` there is no fsync at commit, and it runs inline too. If another
        process holds the write lock, the whole transaction runs in the writer thread, which
        waits for the lock without holding up the loop.
        """
        # One transaction of this process at a time, whichever thread runs it. Without this,
        # one could begin inline while another waited in the writer thread for the lock the
        # first holds, the first's COMMIT queued behind it there: stuck for the busy timeout.
        async with self._one_at_a_time:
            return await self._transaction_now(ops)

    async def _transaction_now(self, ops: list[SyncOp]) -> list[Any]:
        loop = asyncio.get_running_loop()
        conn = self._begin_inline()
        if conn is None:
            return await loop.run_in_executor(self._writer, self._transaction, ops)
        try:
            results = [op(conn) for op in ops]
        except BaseException:
            conn.close()  # rolls back, in the loop: a ROLLBACK has nothing to wait for
            raise
        if self.synchronous == "normal":
            _commit_and_close(conn)
        else:
            # From here the writer thread owns the connection, even if this is cancelled (a
            # stop cancels the group committer). Shielded: cancelling `run_in_executor`'s
            # future drops a job that has not started, which leaked the connection with the
            # write lock held, and the next transaction blocked the loop in the pool. The
            # next one also waits for this COMMIT, as `_one_at_a_time` promises.
            commit = loop.run_in_executor(self._writer, _commit_and_close, conn)
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                await asyncio.wait([commit])
                raise
        return results

    def _begin_inline(self) -> Connection | None:
        """A connection in a fresh write transaction, or None if the write lock is taken."""
        conn = self.inline_engine.connect()
        try:
            conn.begin()
        except sqlalchemy.exc.OperationalError as exc:
            conn.close()
            if _is_busy(exc):
                return None
            raise
        return conn

    def _transaction(self, ops: list[SyncOp]) -> list[Any]:
        with self.write_engine.connect() as conn:
            trans = conn.begin()
            results = [op(conn) for op in ops]  # an error here rolls back (on leaving `with`)
            _commit(trans.commit)
            return results

    async def close(self) -> None:
        self._writer.shutdown(wait=True)
        self.inline_engine.dispose()
        self.write_engine.dispose()
        self.scan_engine.dispose()
        self.engine.dispose()


class AsyncRunner:
    def __init__(self, engine: AsyncEngine, *, fetch_pool_size: int = FETCH_POOL_SIZE) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # Reads run in autocommit: no BEGIN before and no ROLLBACK after each one, a third of
        # the round trips of a read. Each is one statement, so it sees one consistent snapshot.
        self._reads = engine.execution_options(isolation_level="AUTOCOMMIT")
        # The hottest reads (a task by id, the dispatcher's probe) skip SQLAlchemy's pool and
        # greenlet altogether: asyncpg's own pool, awaited in the loop. Measured on this
        # machine: ~210 µs a read by id through `read`, 60-105 µs this way.
        self._fetch_pool: asyncpg.Pool | None = None
        self._fetch_pool_size = fetch_pool_size
        self._fetch_pool_opening = asyncio.Lock()

    @_translated
    async def read(self, op: Callable[[Connection], T]) -> T:
        async with self._reads.connect() as conn:
            return await conn.run_sync(op)

    @_translated
    async def fetch(self, statement: Statement, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        compiled = statement.compiled(self.dialect)
        pool = self._fetch_pool or await self._open_fetch_pool()
        async with pool.acquire(timeout=FETCH_ACQUIRE_TIMEOUT_S) as conn:  # then a 503
            try:
                records = await conn.fetch(compiled.sql, *compiled.params(params))
            except Exception:
                # Out of the pool, whatever it was: a connection the server ended can fail
                # its next use with a protocol-state error (InternalClientError) rather than
                # a closed one, and would be handed out again, failing each time.
                conn.terminate()
                raise
        return [dict(record) for record in records]

    async def _open_fetch_pool(self) -> asyncpg.Pool:
        async with self._fetch_pool_opening:
            if self._fetch_pool is None:
                _, connect = self.engine.dialect.create_connect_args(self.engine.url)
                self._fetch_pool = await asyncpg.create_pool(
                    **connect, min_size=0, max_size=self._fetch_pool_size, reset=_keep_session
                )
            return self._fetch_pool

    async def scan(self, op: Callable[[Connection], T]) -> T:
        return await self.read(op)  # the server does the work; the loop only awaits it

    @_translated
    async def transaction(self, ops: list[SyncOp]) -> list[Any]:
        async with self.engine.connect() as conn:
            trans = await conn.begin()
            results = await conn.run_sync(lambda sync_conn: [op(sync_conn) for op in ops])
            try:
                await trans.commit()
            except Exception as exc:
                raise CommitOutcomeUnknown(type(exc).__name__) from exc
            return results

    async def close(self) -> None:
        if self._fetch_pool is not None:
            await self._fetch_pool.close()
            self._fetch_pool = None
        await self.engine.dispose()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The fetch pool's reset: its connections only ever run one SELECT at a time, leaving no
    session state, so asyncpg's default reset (`RESET ALL` and more, a round trip on every
    release) is skipped."""
