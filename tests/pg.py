"""Throwaway PostgreSQL databases for tests: one fresh database per test, dropped after.

The server comes from TASKYARD_TEST_POSTGRES_URL (default: the local server). Without a
reachable server the PostgreSQL tests skip with the reason, except under CI=true, where a
missing database is a failure: CI must test both databases.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
PREFIX = "taskyard_t_"


def server_url() -> str:
    return os.environ.get("TASKYARD_TEST_POSTGRES_URL", DEFAULT_URL)


def dsn(url: str) -> str:
    """asyncpg wants a plain postgresql:// URL, without a SQLAlchemy driver suffix."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(dsn(server_url()), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def fetch(url: str, sql: str) -> list[tuple[Any, ...]]:
    """The rows of one query on the database at `url` (from synchronous test code)."""

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn(url), timeout=5)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(run())


@contextmanager
def locked(url: str, table: str) -> Iterator[None]:
    """Hold `LOCK TABLE table` (access exclusive) on the database at `url` while the block
    runs, from a connection in a thread of its own."""
    if not table.isidentifier():
        raise ValueError(f"not a table name: {table!r}")
    holding, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    async def hold() -> None:
        conn = await asyncpg.connect(dsn(url), timeout=5)
        try:
            async with conn.transaction():
                await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                holding.set()
                await asyncio.to_thread(release.wait)
        finally:
            await conn.close()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
            holding.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    holding.wait(timeout=10)
    try:
        if failure:
            raise failure[0]
        yield
    finally:
        release.set()
        thread.join(timeout=10)


_unreachable: str | None = None


def require_postgres() -> None:
    """Skip (or, under CI=true, fail) the calling test when PostgreSQL is not reachable."""
    global _unreachable
    if _unreachable is None:
        try:
            asyncio.run(_admin("SELECT 1"))
            _unreachable = ""
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            _unreachable = f"PostgreSQL at {server_url()} is not reachable: {exc!r}"
    if _unreachable:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{_unreachable} (CI=true: PostgreSQL tests must run)")
        pytest.skip(f"SKIPPING POSTGRESQL TESTS: {_unreachable}")


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new empty database on the test server; its URL. Dropped afterwards, with any
    connections a killed coordinator left behind."""
    require_postgres()
    name = PREFIX + uuid.uuid4().hex[:16]
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(dsn(server_url())).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
