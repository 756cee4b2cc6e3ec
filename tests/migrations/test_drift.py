"""The Alembic migrations build exactly the schema that `tables.py` declares."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from taskyard.storage.migrate import upgrade
from taskyard.storage.sql import create_engine
from taskyard.storage.tables import metadata


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_upgrade_head_matches_tables(tmp_path: Path) -> None:
    """`upgrade head` on an empty SQLite file leaves no difference from the table definitions."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_upgrade_is_idempotent(tmp_path: Path) -> None:
    """Running the migrations twice (a restart) is harmless."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    await upgrade(url)
