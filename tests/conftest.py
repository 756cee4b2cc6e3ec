"""Fixtures: factories that start real processes and stop them after the test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import MockBackend, Taskyard


@pytest.fixture(autouse=True)
def _scrub_taskyard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests control configuration; the developer's TASKYARD_* variables must not leak in."""
    for name in [n for n in os.environ if n.startswith("TASKYARD_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A fresh SQLite file per test."""
    return f"sqlite:///{tmp_path / 'taskyard.db'}"


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

    def start(server_id: str, *extra: str) -> MockBackend:
        backend = MockBackend(server_id, workdir=tmp_path, extra=list(extra))
        started.append(backend)
        return backend.start("/health")

    yield start
    for backend in started:
        backend.stop()
