"""Rate limits and quotas per user (issue 10, item 3), against the app in-process
(`taskyard.testing.Harness`, with the `memory://` counters): creates and other requests each
have a rate per `sub`, over which the answer is 429 with Retry-After and RateLimit-* and nothing
is stored; a user's unfinished tasks are capped, counted with the insert (concurrent creates on
a real SQLite file and a real PostgreSQL database too; the store's side of it:
`tests/storage/test_unfinished_cap.py`); long polls are capped per user; admins and backends are
never limited, and one user's limit is not another's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from taskyard.testing import Harness, harness_settings
from tests.support import SECRET, token, until_clear_of_window_edge, wait_for


@asynccontextmanager
async def serving(database_url: str | None = None, **settings: Any) -> AsyncIterator[Harness]:
    """The app over `MemoryStore`, or with `database_url` over its production store there."""
    if database_url is not None:
        settings["database_url"] = database_url
    config = harness_settings(jwt_secret=SECRET, **settings)
    if any(name.startswith("rate_limit_") for name in settings):  # minute rates, counted exactly
        await asyncio.sleep(until_clear_of_window_edge())
    async with Harness(config, database=database_url is not None) as yard:
        yield yard


def client(yard: Harness, roles: list[str], sub: str = "alice", **claims: Any) -> httpx.AsyncClient:
    return yard.client(token(roles, sub, **claims))


async def stored(yard: Harness) -> int:
    """Tasks stored, in any status."""
    return sum((await yard.store.count_tasks()).values())


async def create(http: httpx.AsyncClient) -> httpx.Response:
    return await http.post("/api/task", json={"model": "m"})


def assert_rate_limited(response: httpx.Response, limit: int, *, window: int | None) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["ratelimit-limit"] == str(limit)
    assert response.headers["ratelimit-remaining"] == "0"
    assert int(response.headers["ratelimit-reset"]) >= 1
    if window is not None:
        assert response.headers["ratelimit-policy"] == f"{limit};w={window}"


async def test_creates_over_the_rate_get_429_and_store_nothing() -> None:
    async with (
        serving(rate_limit_creates="5/minute") as yard,
        client(yard, ["user"]) as alice,
        client(yard, ["user"], "bob") as bob,
    ):
        assert [(await create(alice)).status_code for _ in range(5)] == [200] * 5
        refused = await create(alice)
        assert_rate_limited(refused, 5, window=60)
        assert "5 per 1 minute on creates" in refused.json()["error"]
        assert await stored(yard) == 5  # the refused one is not stored
        assert (await alice.get("/api/tasks")).status_code == 200  # reads: another bucket
        assert (await create(bob)).status_code == 200  # bob has a bucket of his own


async def test_other_requests_have_their_own_rate() -> None:
    async with (
        serving(rate_limit_requests="3/minute") as yard,
        client(yard, ["user"]) as alice,
    ):
        statuses = [(await alice.get("/api/task/nope")).status_code for _ in range(3)]
        assert statuses == [404] * 3
        assert_rate_limited(await alice.get("/api/tasks"), 3, window=60)
        assert (await create(alice)).status_code == 200  # creates are counted apart


async def test_admins_and_backends_are_never_limited() -> None:
    limits = {"rate_limit_creates": "2/minute", "rate_limit_requests": "2/minute"}
    async with (
        serving(max_unfinished_tasks=2, **limits) as yard,
        client(yard, ["user"]) as alice,
        client(yard, ["admin"], "root") as admin,
    ):
        assert [(await create(alice)).status_code for _ in range(3)][-1] == 429
        assert [(await create(admin)).status_code for _ in range(10)] == [200] * 10
        assert [(await admin.get("/api/tasks")).status_code for _ in range(10)] == [200] * 10
        async with client(yard, ["service"], "server:b1", srv="b1") as backend:
            # A backend's calls (404: no such task, but never 429).
            statuses = [(await backend.get("/api/task/nope")).status_code for _ in range(5)]
            assert statuses == [404] * 5


async def test_unfinished_tasks_are_capped_per_user() -> None:
    """No server runs them, so they stay WAITING; a cancel frees a place."""
    async with (
        serving(max_unfinished_tasks=3) as yard,
        client(yard, ["user"]) as alice,
        client(yard, ["user"], "bob") as bob,
    ):
        ids = [(await create(alice)).json()["taskId"] for _ in range(3)]
        refused = await create(alice)
        assert_rate_limited(refused, 3, window=None)
        assert "TASKYARD_MAX_UNFINISHED_TASKS" in refused.json()["error"]
        assert await stored(yard) == 3
        assert (await create(bob)).status_code == 200  # bob's count is his own
        assert (await alice.post(f"/api/task/{ids[0]}/cancel")).status_code == 200
        assert (await create(alice)).status_code == 200  # a place was freed
        assert (await create(alice)).status_code == 429


async def test_concurrent_creates_never_pass_the_cap(database_url: str) -> None:
    """Creates of one user that share a group-commit transaction each see the ones before (on
    both databases)."""
    async with (
        serving(database_url, max_unfinished_tasks=10) as yard,
        client(yard, ["user"]) as alice,
    ):
        statuses = [
            r.status_code for r in await asyncio.gather(*(create(alice) for _ in range(30)))
        ]
        assert sorted(statuses) == [200] * 10 + [429] * 20
        assert await stored(yard) == 10


async def test_open_long_polls_are_capped_per_user() -> None:
    async with (
        serving(max_open_waits=2) as yard,
        client(yard, ["user"]) as alice,
        client(yard, ["admin"], "root") as admin,
    ):
        ids = [(await create(alice)).json()["taskId"] for _ in range(3)]
        polls = [
            asyncio.create_task(alice.get(f"/api/task/{i}", params={"wait": 30})) for i in ids[:2]
        ]
        waits = yard.app.state.open_waits
        await asyncio.to_thread(wait_for, lambda: waits.open("alice") == 2, what="2 polls open")
        third = await alice.get(f"/api/task/{ids[2]}", params={"wait": 30})
        assert_rate_limited(third, 2, window=None)
        assert "TASKYARD_MAX_OPEN_WAITS" in third.json()["error"]
        assert (await alice.get(f"/api/task/{ids[2]}")).status_code == 200  # no wait: fine
        # A create that would wait counts too: refused before anything is stored.
        refused = await alice.post("/api/task", params={"wait": 30}, json={"model": "m"})
        assert_rate_limited(refused, 2, window=None)
        assert await stored(yard) == 3
        assert (await create(alice)).status_code == 200  # without a wait: stored
        # An admin's long poll is not counted against anyone.
        admin_poll = asyncio.create_task(admin.get(f"/api/task/{ids[2]}", params={"wait": 30}))
        assert (await admin.post(f"/api/task/{ids[0]}/cancel")).status_code == 200
        first = await polls[0]
        assert first.json()["taskDetails"]["status"] == "CANCELLED"
        await asyncio.to_thread(wait_for, lambda: waits.open("alice") == 1, what="1 open")
        # The freed place takes a new long poll (answered by the cancel below).
        again = asyncio.create_task(alice.get(f"/api/task/{ids[2]}", params={"wait": 30}))
        await asyncio.to_thread(wait_for, lambda: waits.open("alice") == 2, what="2 again")
        for task_id in ids[1:]:
            assert (await admin.post(f"/api/task/{task_id}/cancel")).status_code == 200
        for poll in (polls[1], again, admin_poll):
            assert (await poll).json()["taskDetails"]["status"] == "CANCELLED"
        assert waits.open("alice") == 0
