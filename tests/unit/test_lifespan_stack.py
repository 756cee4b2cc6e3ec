"""The lifespan owns every resource through one exit stack (issue 10, item 5): when stopping
one part fails, the others still close. In-process, on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskyard.api.app import create_app
from taskyard.config import Settings
from tests.support import SECRET


async def test_a_part_that_fails_to_stop_does_not_keep_the_rest_open(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'stack.db'}", jwt_secret=SECRET))
    with pytest.raises(RuntimeError, match="stop failed"):
        async with app.router.lifespan_context(app):
            coordinator = app.state.coordinator
            client, store = coordinator.dispatcher.client, coordinator.store
            assert client._session is not None and not client._session.closed

            async def database_gone(**_: object) -> None:  # midway through the node's stop
                raise RuntimeError("stop failed: the database is gone")

            store.release_leases = database_gone
            session = client._session
    assert session.closed and client._session is None  # the backend client closed
    assert store.runner._writer._shutdown  # the database's writer thread is gone
