"""Migration 0003 (the queue's partial indexes): it upgrades a database holding tasks, goes back
down, and builds indexes exactly as `tables.py` declares them, WHERE clause and DESC included,
which the drift test's comparison does not look at."""

from __future__ import annotations

import re
from typing import Any

from alembic import command
from sqlalchemy import Connection, insert, inspect, select, text
from sqlalchemy.schema import CreateIndex

from taskyard.domain.lifecycle import start_attempt
from taskyard.domain.models import Task, TaskStatus
from taskyard.storage.migrate import alembic_config, upgrade
from taskyard.storage.queries import waiting_query
from taskyard.storage.rows import task_row
from taskyard.storage.sql import SqlStore, create_engine
from taskyard.storage.tables import tasks
from tests.unit.factories import make_task

LATER_TASK_COLUMNS = {"attempt_base"}  # added by 0005
NEW = {"ix_tasks_waiting", "ix_tasks_queue_deadline", "ix_tasks_attempt_deadline"}
OLD = {"ix_tasks_queue", "ix_tasks_deadline"}


def _queue() -> list[Task]:
    return [
        make_task(id="low", priority=0, created_at=1_000),
        make_task(id="high-late", priority=5, created_at=3_000),
        make_task(id="high-early", priority=5, created_at=2_000),
        make_task(id="expired", priority=1, created_at=1_500, queue_deadline_at=4_000),
        make_task(id="backing-off", priority=9, created_at=500, attempt=1, next_attempt_at=9_999),
        make_task(id="done", status=TaskStatus.FINISHED, finished_at=2_500, result={"x": 1}),
    ]


async def _index_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            found = await conn.run_sync(lambda c: inspect(c).get_indexes("tasks"))
        return {str(index["name"]) for index in found}
    finally:
        await engine.dispose()


async def _downgrade(url: str, revision: str) -> None:
    def run(conn: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, revision)

    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run)
    finally:
        await engine.dispose()


async def test_upgrade_from_0002_keeps_the_tasks_and_serves_the_queue(database_url: str) -> None:
    await upgrade(database_url, "0002")
    store = SqlStore.open(database_url)
    try:
        # Written as the store of 0002 wrote them: rows only (no statistics table yet).
        # Columns of 0002 only: later revisions add some.
        columns = [c for c in tasks.c if c.name not in LATER_TASK_COLUMNS]
        _, running = start_attempt(
            make_task(id="running"),
            server_id="gpu",
            node_id="n",
            callback_url="http://cb",
            now=1_000,
        )
        rows = [
            {k: v for k, v in task_row(task).items() if k not in LATER_TASK_COLUMNS}
            for task in [*_queue(), running]
        ]  # running: deadline 1_000 + 10 s
        await store.runner.transaction([lambda conn: conn.execute(insert(tasks), rows)])
        read_rows = select(*columns).where(tasks.c.id.in_(["low", "expired", "done", "running"]))

        def raw(conn: Connection) -> list[Any]:
            return sorted(tuple(row) for row in conn.execute(read_rows))

        before = await store.runner.read(raw)

        await upgrade(database_url)

        names = await _index_names(database_url)
        assert names >= NEW and not OLD & names
        assert await store.runner.read(raw) == before
        claim = waiting_query(5_000, 10, None)
        order = await store.runner.read(lambda conn: [row.id for row in conn.execute(claim)])
        assert order == ["high-early", "high-late", "expired", "low"]
        assert [t.id for t in await store.expired_in_queue(now=5_000, limit=10)] == ["expired"]
        assert [t.id for t in await store.expired_attempts(now=20_000, limit=10)] == ["running"]
        assert await store.has_due_tasks(now=5_000)
        assert await store.next_due_at() == 0
    finally:
        await store.close()


async def test_downgrade_to_0002_restores_the_old_indexes(database_url: str) -> None:
    await upgrade(database_url)
    await _downgrade(database_url, "0002")
    names = await _index_names(database_url)
    assert names >= OLD and not NEW & names
    await upgrade(database_url)
    names = await _index_names(database_url)
    assert names >= NEW and not OLD & names


async def test_migrated_indexes_are_defined_as_in_tables(database_url: str) -> None:
    """Each index on `tasks`, as the database itself describes it, is what `tables.py`'s
    definition creates: same columns, order, DESC and WHERE."""
    await upgrade(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            migrated, declared = await conn.run_sync(_index_definitions)
            await conn.rollback()
    finally:
        await engine.dispose()
    assert migrated == declared


def _index_definitions(conn: Connection) -> tuple[dict[str, str], dict[str, str]]:
    """(migrated, declared): index name → definition, both as the database states them."""
    if conn.dialect.name == "sqlite":
        # SQLite keeps each CREATE INDEX as written: compare the statements, normalized.
        rows = conn.execute(
            text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks'")
        )
        migrated = {name: _normalize(sql) for name, sql in rows if sql is not None}
        declared = {
            str(ix.name): _normalize(str(CreateIndex(ix).compile(dialect=conn.dialect)))
            for ix in tasks.indexes
        }
        return migrated, declared
    # PostgreSQL rewrites definitions into one canonical form: build the declared indexes on an
    # empty copy of the table in a scratch schema (rolled back by the caller) and read both.
    conn.execute(text("CREATE SCHEMA declared"))
    conn.execute(text("CREATE TABLE declared.tasks (LIKE public.tasks)"))
    conn.execute(text("SET LOCAL search_path = declared"))
    for ix in tasks.indexes:
        conn.execute(CreateIndex(ix))
    found = conn.execute(
        text(
            "SELECT schemaname, indexname, replace(indexdef, schemaname || '.', '')"
            " FROM pg_indexes WHERE tablename = 'tasks' AND indexname <> 'tasks_pkey'"
        )
    )
    by_schema: dict[str, dict[str, str]] = {"public": {}, "declared": {}}
    for schema, name, definition in found:
        by_schema[schema][name] = definition
    return by_schema["public"], by_schema["declared"]


def _normalize(statement: str) -> str:
    statement = statement.replace("IF NOT EXISTS ", "").replace('"', "")
    return re.sub(r"\s+", " ", statement).strip()
