"""`storage/direct.Statement` on both databases: the same rows and values SQLAlchemy gives, the
same errors, in the transaction it is run in, and a lost PostgreSQL connection dropped from the
pool rather than handed out again. On real SQLite files and the real PostgreSQL server."""

from __future__ import annotations

import pytest
import sqlalchemy
from sqlalchemy import Connection, bindparam, select, text

from taskyard import errors
from taskyard.storage.direct import Statement
from taskyard.storage.migrate import upgrade
from taskyard.storage.sql import SqlStore
from taskyard.storage.tables import tasks
from tests.unit.factories import make_task

_BY_ID = Statement(select(tasks).where(tasks.c.id == bindparam("task_id")))
_SET_ERROR = Statement(
    tasks.update().where(tasks.c.id == bindparam("w_id")).values(error=bindparam("v_error"))
)


async def test_rows_match_what_sqlalchemy_reads(store: SqlStore) -> None:
    await store.add_task(make_task(id="t1", priority=3, timeout_s=2.5))

    def both(conn: Connection) -> tuple[dict[str, object] | None, dict[str, object]]:
        direct = _BY_ID.first(conn, {"task_id": "t1"})
        plain = dict(conn.execute(_BY_ID.stmt, {"task_id": "t1"}).one()._mapping)
        return direct, plain

    direct, plain = await store.runner.read(both)
    assert direct == plain
    assert direct is not None and direct["acked"] is False and direct["priority"] == 3
    assert await store.runner.read(lambda conn: _BY_ID.first(conn, {"task_id": "none"})) is None


async def test_writes_count_matches_and_roll_back_with_their_transaction(store: SqlStore) -> None:
    await store.add_task(make_task(id="t1"))

    def update_then_fail(conn: Connection) -> None:
        assert _SET_ERROR.rowcount(conn, {"w_id": "t1", "v_error": "set"}) == 1
        assert _SET_ERROR.rowcount(conn, {"w_id": "absent", "v_error": "set"}) == 0
        raise RuntimeError("after the update")

    with pytest.raises(RuntimeError):
        await store.runner.transaction([update_then_fail])
    task = await store.get_task("t1")
    assert task is not None and task.error is None  # the update went with its transaction

    await store.runner.transaction(
        [lambda conn: _SET_ERROR.rowcount(conn, {"w_id": "t1", "v_error": "kept"})]
    )
    task = await store.get_task("t1")
    assert task is not None and task.error == "kept"


async def test_a_duplicate_insert_is_sqlalchemys_integrity_error(store: SqlStore) -> None:
    await store.add_task(make_task(id="t1"))
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        await store.runner.transaction([lambda conn: _insert_again(conn)])
    assert await store.get_task("t1") is not None  # and the store goes on


def _insert_again(conn: Connection) -> None:
    row = _BY_ID.first(conn, {"task_id": "t1"})
    assert row is not None
    Statement(tasks.insert().values({c: bindparam(c) for c in row})).many(conn, [row])


async def test_a_killed_postgresql_connection_is_dropped_from_the_pool(url: str) -> None:
    if not url.startswith("postgresql"):
        pytest.skip("PostgreSQL's connections only")
    await upgrade(url)
    store, admin = SqlStore.open(url, pool_size=1), SqlStore.open(url, pool_size=1)
    try:
        await store.add_task(make_task(id="t1"))
        pid = await store.runner.read(
            lambda conn: conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        )
        await admin.runner.read(
            lambda conn: conn.execute(text(f"SELECT pg_terminate_backend({int(pid)})"))
        )
        with pytest.raises(errors.StorageUnavailable) as lost:
            await store.runner.read(lambda conn: _BY_ID.first(conn, {"task_id": "t1"}))
        cause = lost.value.__cause__
        assert isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated
        # The pool's one connection was dropped, not handed out again: the next read works.
        assert await store.runner.read(lambda conn: _BY_ID.first(conn, {"task_id": "t1"}))
    finally:
        await store.close()
        await admin.close()


async def test_a_killed_connection_of_the_hot_reads_is_replaced(url: str) -> None:
    """`AsyncRunner.fetch` (asyncpg's own pool): a connection killed under it fails one read
    as unavailable (a 503, never a 500), and the next read gets a new connection."""
    if not url.startswith("postgresql"):
        pytest.skip("PostgreSQL's connections only")
    await upgrade(url)
    store, admin = SqlStore.open(url), SqlStore.open(url)
    try:
        await store.add_task(make_task(id="t1"))
        assert (await store.get_task("t1")) is not None
        killed = await admin.runner.read(
            lambda conn: conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND query LIKE 'SELECT tasks.id%'"
                )
            ).scalar_one()
        )
        assert killed == 1  # the hot reads' one connection (its last query was the read)
        outcomes = []
        for _ in range(2):
            try:
                outcomes.append((await store.get_task("t1")) is not None)
            except errors.StorageUnavailable:
                outcomes.append(False)
        assert outcomes[-1] is True  # at most one read lost, then a fresh connection
    finally:
        await store.close()
        await admin.close()
