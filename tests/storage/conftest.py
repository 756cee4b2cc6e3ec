"""Fixtures of the storage tests that run on both databases: a fresh, migrated one each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from taskyard.storage.migrate import upgrade
from taskyard.storage.sql import SqlStore
from tests.support import DATABASES, fresh_database


@pytest.fixture(params=DATABASES, ids=DATABASES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database of each kind (a SQLite file, a PostgreSQL database); its URL."""
    with fresh_database(request.param, tmp_path) as database_url:
        yield database_url


@pytest.fixture
async def store(url: str) -> AsyncIterator[SqlStore]:
    await upgrade(url)
    sql = SqlStore.open(url)
    try:
        yield sql
    finally:
        await sql.close()
