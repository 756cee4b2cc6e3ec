"""Alembic environment: runs on the connection handed over by `taskyard.storage.migrate`."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from taskyard.storage.tables import metadata

config = context.config


def run_on(connection: Connection) -> None:
    # render_as_batch changes nothing on PostgreSQL and lets SQLite alter tables by copy.
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_from_url() -> None:
    """`alembic upgrade head` from the command line: the URL comes from the settings."""
    from taskyard.config import Settings
    from taskyard.storage.sql import create_engine

    async def go() -> None:
        engine = create_engine(Settings().database_url)
        async with engine.begin() as conn:
            await conn.run_sync(run_on)
        await engine.dispose()

    asyncio.run(go())


connection = config.attributes.get("connection")
if connection is not None:
    run_on(connection)
else:
    run_from_url()
