"""TASKYARD_LONG_POLL_MAX_S, in-process on a real SQLite file: a `?wait=` longer than the setting
is held for the setting only, then answered with the task as it is (200, as when a wait runs
out), on every way in: a read and a create with a wait, by the fast path and by the FastAPI
routes. `?wait=` itself stays bounded by the API's 60 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from taskyard.api.app import create_app
from taskyard.config import MAX_LONG_POLL_S, Settings
from tests.support import SECRET, bearer, token

CAP_S = 0.5
PATIENCE_S = 20.0  # far below the 60 s asked, far above the cap: a wait held to 60 s fails


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'poll.db'}", jwt_secret=SECRET, long_poll_max_s=CAP_S
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app),
            base_url="http://yard",
            headers=bearer(token(["user"])),
        ) as client,
    ):
        yield client


async def _timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await asyncio.wait_for(request, PATIENCE_S)
    return response, time.monotonic() - started


def _status(response: httpx.Response) -> str:
    status: str = response.json()["taskDetails"]["status"]
    return status


async def test_a_longer_wait_is_held_for_the_cap_only(http: httpx.AsyncClient) -> None:
    """No server serves the model, so the task stays WAITING: each long poll asking for 60 s
    answers WAITING once the cap has passed, not before and not 60 s later."""
    created = await http.post("/api/task", json={"model": "nobody-serves-this"})
    assert created.status_code == 200, created.text
    task_id = created.json()["taskId"]
    polls: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
        "read": lambda: http.get(f"/api/task/{task_id}", params={"wait": MAX_LONG_POLL_S}),
        # A repeated parameter is left to the FastAPI route (which takes the last one).
        "read by the route": lambda: http.get(
            f"/api/task/{task_id}?wait=1&wait={MAX_LONG_POLL_S:g}"
        ),
        "create": lambda: http.post(
            "/api/task", params={"wait": MAX_LONG_POLL_S}, json={"model": "nobody-serves-this"}
        ),
    }
    for way, request in polls.items():
        response, elapsed = await _timed(request())
        assert response.status_code == 200, (way, response.text)
        assert _status(response) == "WAITING", way
        assert elapsed >= CAP_S, (way, elapsed)


async def test_a_shorter_wait_than_the_cap_is_kept(http: httpx.AsyncClient) -> None:
    created = await http.post("/api/task", json={"model": "nobody-serves-this"})
    task_id = created.json()["taskId"]
    response, elapsed = await _timed(http.get(f"/api/task/{task_id}", params={"wait": 0.1}))
    assert response.status_code == 200 and _status(response) == "WAITING"
    assert 0.1 <= elapsed < CAP_S + 5, elapsed


async def test_wait_stays_bounded_by_the_api(http: httpx.AsyncClient) -> None:
    """The cap shortens the hold; it does not widen what `?wait=` may ask."""
    created = await http.post("/api/task", json={"model": "nobody-serves-this"})
    task_id = created.json()["taskId"]
    response = await http.get(f"/api/task/{task_id}", params={"wait": MAX_LONG_POLL_S + 1})
    assert response.status_code == 400, response.text


@pytest.mark.parametrize("value", [0, -1, MAX_LONG_POLL_S + 1])
def test_the_cap_must_be_within_the_api_bound(value: float) -> None:
    with pytest.raises(ValidationError, match="long_poll_max_s"):
        Settings(long_poll_max_s=value)
