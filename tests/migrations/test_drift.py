"""The Alembic migrations build exactly the schema that `tables.py` declares, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from taskyard.storage.migrate import upgrade
from taskyard.storage.sql import create_engine
from taskyard.storage.tables import metadata


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


async def _assert_no_drift(url: str) -> None:
    """No difference from `tables.py` (types and server defaults included), no extra table."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_upgrade_head_matches_tables(database_url: str) -> None:
    """`upgrade head` on an empty database leaves no difference from the table definitions."""
    await upgrade(database_url)
    await _assert_no_drift(database_url)


async def test_upgrade_is_idempotent(database_url: str) -> None:
    """Running the migrations twice (a restart) is harmless and changes nothing."""
    await upgrade(database_url)
    await upgrade(database_url)
    await _assert_no_drift(database_url)
