"""Alembic migrations, run from code (at start and by `taskyard migrate`).

The migration scripts live in `storage/migrations/`; `alembic.ini` at the repository root points
there too, for developers who use the `alembic` command directly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, func, select

from taskyard.storage.sql import create_engine

MIGRATIONS = Path(__file__).parent / "migrations"
CONNECT_ATTEMPTS = 10  # the database may still be starting
CONNECT_RETRY_S = 1.0
MIGRATION_LOCK = 0x6D696772  # "migr" in ASCII: an advisory lock key only migrations take


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


async def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision`, waiting (bounded) for it to accept connections."""
    engine = create_engine(url)
    try:
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(_upgrade, revision)
                return
            except (OSError, ConnectionError):
                if attempt == CONNECT_ATTEMPTS:
                    raise
                await asyncio.sleep(CONNECT_RETRY_S)
    finally:
        await engine.dispose()


def _upgrade(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        # Nodes starting together would race to create the same tables; the first to take
        # this lock migrates, the others then find the database at head. (SQLite's writer
        # lock does the same for a file.)
        connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
