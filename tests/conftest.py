"""Fixtures: factories that start real processes and stop them after the test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import pg
from tests.support import DATABASES, MockBackend, Taskyard, fresh_database


@pytest.fixture(autouse=True)
def _scrub_taskyard_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests control configuration; the developer's TASKYARD_* variables must not leak in.
    TASKYARD_TEST_* variables configure the tests themselves (e.g. `tests.pg`) and stay. A
    development secret, if a test needs one, goes to the test's own config directory, never
    the developer's."""
    for name in [n for n in os.environ if n.startswith("TASKYARD_")]:
        if name.startswith("TASKYARD_TEST_"):
            continue
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


@pytest.fixture(params=DATABASES, ids=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database per test: a SQLite file, then (a second run of the test) a PostgreSQL
    database, dropped afterwards. PostgreSQL skips loudly when unreachable, fails under CI=true."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="module", params=DATABASES, ids=DATABASES)
def db_kind(request: pytest.FixtureRequest) -> str:
    """`sqlite` or `postgresql`, for module-scoped coordinators (`support.shared_taskyard`):
    a module's tests run once per database, grouped so each coordinator starts once."""
    kind: str = request.param
    if kind == "postgresql":
        pg.require_postgres()
    return kind


@pytest.fixture
def taskyard_factory(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Taskyard]]:
    started: list[Taskyard] = []

    def start(**env: Any) -> Taskyard:
        node = Taskyard(
            database_url=database_url,
            workdir=tmp_path,
            env={
                k.upper() if k.startswith("TASKYARD_") else f"TASKYARD_{k.upper()}": str(v)
                for k, v in env.items()
            },
        )
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.stop()
        node.admin.close()


@pytest.fixture
def taskyard(taskyard_factory: Callable[..., Taskyard]) -> Taskyard:
    return taskyard_factory()


@pytest.fixture
def mock_factory(tmp_path: Path) -> Iterator[Callable[..., MockBackend]]:
    started: list[MockBackend] = []

    def start(server_id: str, *extra: str, api_key: str | None = None) -> MockBackend:
        backend = MockBackend(server_id, workdir=tmp_path, extra=list(extra), api_key=api_key)
        started.append(backend)
        return backend.start("/health")

    yield start
    for backend in started:
        backend.stop()


@pytest.fixture
def postgres_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test (skips or fails as `tests.pg` explains)."""
    with pg.fresh_database() as url:
        yield url
