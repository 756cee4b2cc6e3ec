"""Fixtures of the mock backend's e2e tests: backends started as processes, a callback receiver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.mock_backend.parts import Backend, Receiver, free_port, start_backend


@pytest.fixture
def spawn() -> Iterator[Callable[..., Backend]]:
    started: list[Backend] = []

    def _spawn(**config: Any) -> Backend:
        backend = start_backend(**config)
        started.append(backend)
        return backend

    yield _spawn
    for backend in started:
        backend.stop()


@pytest.fixture(scope="module")
def shared_backend() -> Iterator[Backend]:
    backend = start_backend(server_id="m1")
    yield backend
    backend.stop()


@pytest.fixture
def backend(shared_backend: Backend) -> Backend:
    assert shared_backend.client.post("/control/reset").status_code == 200
    return shared_backend


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(port=free_port())
    yield rec
    rec.stop()
