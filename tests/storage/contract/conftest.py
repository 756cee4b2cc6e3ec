"""The stores every contract test runs on: `MemoryStore`, then a fresh SQLite file and a fresh
PostgreSQL database (which skips or fails as `tests.pg` says)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskyard.domain.ports import Store
from taskyard.storage.migrate import upgrade
from taskyard.storage.sql import SqlStore
from taskyard.testing import MemoryStore
from tests.storage.contract.support import COVERS, record_calls
from tests.support import DATABASES, fresh_database

STORES = ["memory", *DATABASES]
_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    """Note whether the test itself passed: only then is a method it never called its fault."""
    report = yield
    if report.when == "call":
        item.stash[_PASSED] = report.passed
    return report


@pytest.fixture(params=STORES, ids=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None for the memory store, else a fresh database. Synchronous: making a PostgreSQL
    database runs an event loop of its own."""
    if request.param == "memory":
        yield None
        return
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def store(store_url: str | None, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """The store under test; after the test, checks that it called the methods it covers."""
    declared: frozenset[str] | None = getattr(request.function, COVERS, None)
    assert declared is not None, f"{request.function.__name__} must say what it covers (@covers)"
    if store_url is None:
        opened: Store = MemoryStore()
    else:
        await upgrade(store_url)
        opened = SqlStore.open(store_url)
    called: set[str] = set()
    record_calls(opened, called)
    try:
        yield opened
    finally:
        await opened.close()
    uncalled = declared - called
    if request.node.stash.get(_PASSED, False):
        assert not uncalled, f"{request.function.__name__} covers {sorted(uncalled)} without a call"
