"""`TASKYARD_SQLITE_SYNCHRONOUS`: every SQLite connection of a store runs in the mode asked
for (FULL by default: an acknowledged write survives power loss; NORMAL when chosen)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from taskyard.storage.migrate import upgrade
from taskyard.storage.runners import SqliteRunner, Synchronous

LEVELS = {"full": 2, "normal": 1}  # what PRAGMA synchronous reads back


@pytest.mark.parametrize("mode", ["full", "normal"])
async def test_every_connection_uses_the_chosen_mode(tmp_path: Path, mode: Synchronous) -> None:
    url = f"sqlite:///{tmp_path / 'yard.db'}"
    await upgrade(url)
    runner = SqliteRunner(url, synchronous=mode)
    try:
        pragma = text("PRAGMA synchronous")
        read = await runner.read(lambda conn: conn.execute(pragma).scalar())
        scan = await runner.scan(lambda conn: conn.execute(pragma).scalar())
        [written] = await runner.transaction([lambda conn: conn.execute(pragma).scalar()])
        assert (read, scan, written) == (LEVELS[mode],) * 3
        journal = await runner.read(lambda conn: conn.execute(text("PRAGMA journal_mode")).scalar())
        assert journal == "wal"  # NORMAL is crash-safe only in WAL mode
    finally:
        await runner.close()


def test_the_default_is_full() -> None:
    from taskyard.config import Settings

    assert Settings().sqlite_synchronous == "full"
