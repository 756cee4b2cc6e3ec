"""The hot task routes' fast path (`api.hot.HotRoutes`, issue 11), in-process
(`taskyard.testing.Harness`): it answers valid creates and reads on its own, exactly as the
FastAPI routes would, and hands everything it is not sure of to those routes, body and all, so
errors stay the routes'.

Three apps share one store: `full` as served; `routes_only` without the fast path (the
FastAPI routes answer everything); `hot_only` with nothing behind the fast path (what it
declines gets a 418), so whatever it answers, it answered alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from taskyard import auth
from taskyard.api.hot import HotRoutes
from taskyard.domain.ports import TaskQuery
from taskyard.testing import Harness, MemoryStore, harness_settings
from tests.support import SECRET, bearer, token, wait_for

DECLINED_STATUS = 418


def _is_fast_path(middleware: Middleware) -> bool:
    return cast(object, middleware.cls) is HotRoutes


def _without_fast_path(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware if not _is_fast_path(m)]
    return app


async def _declined(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("declined by the fast path", status_code=DECLINED_STATUS)(
        scope, receive, send
    )


class _Alone(HotRoutes):
    """The fast path with nothing behind it: what it does not answer gets `_declined`. The
    lifespan still reaches the app (it never goes through the fast path)."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(_declined)
        self._behind = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._behind(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _fast_path_alone(app: FastAPI) -> FastAPI:
    app.user_middleware = [
        Middleware(_Alone) if _is_fast_path(m) else m for m in app.user_middleware
    ]
    return app


class Apps:
    def __init__(self) -> None:
        settings = harness_settings(jwt_secret=SECRET)
        self.store = MemoryStore()
        self.yards = [Harness(settings, store=self.store) for _ in range(3)]
        self.full = self.yards[0].app
        self.routes_only = _without_fast_path(self.yards[1].app)
        self.hot_only = _fast_path_alone(self.yards[2].app)

    def client(self, app: FastAPI, roles: list[str], sub: str = "alice") -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app),
            base_url="http://yard",
            headers=bearer(token(roles, sub)),
        )

    async def stored(self) -> int:
        return sum((await self.store.count_tasks()).values())


@pytest.fixture
async def apps() -> AsyncIterator[Apps]:
    apps = Apps()
    async with contextlib.AsyncExitStack() as stack:
        for yard in apps.yards:
            await stack.enter_async_context(yard)
        yield apps


def _comparable(body: Any) -> Any:
    """A task answer without what differs between two tasks (id, times)."""
    details = dict(body["taskDetails"])
    for varying in ("id", "createdAt", "updatedAt"):
        assert details.pop(varying)
    return {**body, "taskId": None, "taskDetails": details}


async def test_the_fast_path_answers_valid_creates_and_reads_alone(apps: Apps) -> None:
    async with apps.client(apps.hot_only, ["user"]) as alice:
        created = await alice.post(
            "/api/task?priority=-7&timeout_s=2.5&max_attempts=3&queue_timeout_s=60&other=x",
            json={"model": "m", "prompt": "hi", "nested": {"a": [1, 2.5, None]}},
        )
        assert created.status_code == 200, created.text
        task = created.json()
        details = task["taskDetails"]
        assert (details["priority"], details["status"], details["owner"]) == (
            -7,
            "WAITING",
            "alice",
        )
        assert details["request"] == {"model": "m", "prompt": "hi", "nested": {"a": [1, 2.5, None]}}
        assert created.json()["warnings"]  # no server serves model `m`
        assert "x-request-id" in created.headers  # the outer layers still apply
        assert created.headers["x-content-type-options"] == "nosniff"

        read = await alice.get(f"/api/task/{task['taskId']}")
        assert read.status_code == 200
        assert read.json()["taskDetails"]["waiting"]["reason"]
        waited = await alice.get(f"/api/task/{task['taskId']}?wait=0.05")
        assert waited.status_code == 200 and waited.json()["taskDetails"]["status"] == "WAITING"
        assert await apps.stored() == 1


async def test_the_fast_path_refuses_callers_as_the_routes_do(apps: Apps) -> None:
    async with (
        apps.client(apps.full, ["user"]) as alice,
        apps.client(apps.full, ["user"], "bob") as bob_full,
        apps.client(apps.routes_only, ["user"], "bob") as bob_routes,
        apps.client(apps.full, ["service"]) as service_full,
        apps.client(apps.routes_only, ["service"]) as service_routes,
    ):
        task_id = (await alice.post("/api/task", json={"model": "m"})).json()["taskId"]
        refusals = (
            (bob_full, bob_routes, "GET", f"/api/task/{task_id}", 404),
            (service_full, service_routes, "POST", "/api/task", 403),
        )
        for fast, slow, method, url, status in refusals:
            answers = [await c.request(method, url, json={"model": "m"}) for c in (fast, slow)]
            assert answers[0].status_code == status
            assert (answers[0].status_code, answers[0].json()) == (
                answers[1].status_code,
                answers[1].json(),
            )
        for app in (apps.full, apps.routes_only):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://yard"
            ) as anonymous:
                refused = await anonymous.post("/api/task", json={"model": "m"})
                assert refused.status_code == 401
                assert refused.headers["www-authenticate"] == "Bearer"
        assert await apps.stored() == 1


DECLINED: dict[str, tuple[str, str, bytes]] = {
    "malformed json": ("POST", "/api/task", b'{"model": "m",'),
    "no model": ("POST", "/api/task", b'{"prompt": "hi"}'),
    "array body": ("POST", "/api/task", b'[{"model": "m"}]'),
    "integer over 64 bits": ("POST", "/api/task", b'{"model": "m", "n": 99999999999999999999}'),
    "NaN": ("POST", "/api/task", b'{"model": "m", "n": NaN}'),
    "priority not a number": ("POST", "/api/task?priority=high", b'{"model": "m"}'),
    "priority out of range": ("POST", "/api/task?priority=5000", b'{"model": "m"}'),
    "zero timeout": ("POST", "/api/task?timeout_s=0", b'{"model": "m"}'),
    "no attempts": ("POST", "/api/task?max_attempts=0", b'{"model": "m"}'),
    "negative wait": ("GET", "/api/task/some-id?wait=-1", b""),
    "wait too long": ("GET", "/api/task/some-id?wait=61", b""),
    "wait not a number": ("GET", "/api/task/some-id?wait=soon", b""),
}


@pytest.mark.parametrize("case", DECLINED, ids=DECLINED)
async def test_what_the_fast_path_is_unsure_of_gets_the_routes_answer(
    apps: Apps, case: str
) -> None:
    method, url, body = DECLINED[case]
    async with (
        apps.client(apps.full, ["admin"]) as full,
        apps.client(apps.routes_only, ["admin"]) as routes_only,
        apps.client(apps.hot_only, ["admin"]) as hot_only,
    ):
        answers = [
            await client.request(method, url, content=body) for client in (full, routes_only)
        ]
        assert answers[0].status_code == 400, answers[0].text
        assert (answers[0].status_code, answers[0].json()) == (
            answers[1].status_code,
            answers[1].json(),
        )
        # Without the routes behind it, the fast path's refusal to answer shows.
        declined = await hot_only.request(method, url, content=body)
        assert declined.status_code == DECLINED_STATUS
    assert await apps.stored() == 0


async def test_a_repeated_option_is_left_to_the_route(apps: Apps) -> None:
    """FastAPI takes the last of a repeated query parameter: the fast path does not guess."""
    url = "/api/task?priority=1&priority=2"
    async with (
        apps.client(apps.full, ["user"]) as full,
        apps.client(apps.routes_only, ["user"]) as routes_only,
        apps.client(apps.hot_only, ["user"]) as hot_only,
    ):
        answers = [await client.post(url, json={"model": "m"}) for client in (full, routes_only)]
        assert [a.status_code for a in answers] == [200, 200]
        assert answers[0].json()["taskDetails"]["priority"] == 2
        assert _comparable(answers[0].json()) == _comparable(answers[1].json())
        assert (await hot_only.post(url, json={"model": "m"})).status_code == DECLINED_STATUS


async def test_valid_answers_are_the_same_both_ways(apps: Apps) -> None:
    async with (
        apps.client(apps.full, ["user"]) as full,
        apps.client(apps.routes_only, ["user"]) as routes_only,
    ):
        url = "/api/task?priority=3&max_attempts=2"
        body = {"model": "m", "text": "é ☃", "list": [True, False, {"deep": None}]}
        answers = [await client.post(url, json=body) for client in (full, routes_only)]
        assert [a.status_code for a in answers] == [200, 200]
        assert _comparable(answers[0].json()) == _comparable(answers[1].json())
        reads = [
            await client.get(f"/api/task/{a.json()['taskId']}?wait=0")
            for client, a in zip((full, routes_only), answers, strict=True)
        ]
        assert _comparable(reads[0].json()) == _comparable(reads[1].json())


@pytest.mark.parametrize("which", ["hot_only", "routes_only"])
async def test_a_create_with_wait_answers_once_the_task_is_final(apps: Apps, which: str) -> None:
    """`POST /api/task?wait=`: one request instead of a create and a long poll; the same
    answer from the fast path and from the route."""
    app: FastAPI = getattr(apps, which)
    coordinator = app.state.coordinator
    root = auth.Principal(sub="root", roles=frozenset({auth.ADMIN}))
    async with apps.client(app, ["user"]) as alice:
        # Nothing serves `m`: the wait runs out, and the answer says why the task waits.
        ran_out = await alice.post("/api/task?wait=0.05", json={"model": "m"})
        assert ran_out.status_code == 200, ran_out.text
        details = ran_out.json()["taskDetails"]
        assert details["status"] == "WAITING" and details["waiting"]["reason"]
        assert ran_out.json()["warnings"]  # as for any create of an unserved model

        posting = asyncio.ensure_future(alice.post("/api/task?wait=30", json={"model": "m"}))
        waits = app.state.open_waits
        await asyncio.to_thread(wait_for, lambda: waits.open("alice") == 1, what="the wait")
        assert not posting.done()
        [newest, _] = await coordinator.reads.search_tasks(TaskQuery(limit=2), principal=root)
        await coordinator.tasks.cancel_task(newest.id, principal=root)
        answered = await asyncio.wait_for(posting, 10)
        assert answered.status_code == 200
        assert answered.json()["taskId"] == newest.id
        assert answered.json()["taskDetails"]["status"] == "CANCELLED"
        assert waits.open("alice") == 0
    assert await apps.stored() == 2


async def test_the_fast_path_answers_valid_batches_alone_and_leaves_bad_ones(apps: Apps) -> None:
    body = {"tasks": [{"request": {"model": "m", "n": i}, "priority": i} for i in range(3)]}
    async with (
        apps.client(apps.hot_only, ["user"]) as hot_only,
        apps.client(apps.full, ["user"]) as full,
        apps.client(apps.routes_only, ["user"]) as routes_only,
        apps.client(apps.hot_only, ["service"]) as service,
    ):
        answered = await hot_only.post("/api/tasks/batch", json=body)
        assert answered.status_code == 200, answered.text
        assert [t["status"] for t in answered.json()["tasks"]] == ["WAITING"] * 3
        assert answered.json()["count"] == 3 and await apps.stored() == 3
        assert (await service.post("/api/tasks/batch", json=body)).status_code == 403
        # A bad item (and a body that is not JSON): the route's 400, naming it; nothing stored.
        bad = {"tasks": [{"request": {"model": "m"}}, {"request": {"model": ""}}]}
        huge = b'{"tasks": [{"request": {"model": "m", "x": 100000000000000000000000000}}]}'
        deep = b'{"tasks": [{"request": {"model": "m", "x": %s1%s}}]}' % (b"[" * 70, b"]" * 70)
        for content in (orjson.dumps(bad), b"{not json", huge, deep):
            headers = {"content-type": "application/json"}
            declined = await hot_only.post("/api/tasks/batch", content=content, headers=headers)
            assert declined.status_code == DECLINED_STATUS
            refused = [
                await client.post("/api/tasks/batch", content=content, headers=headers)
                for client in (full, routes_only)
            ]
            assert [r.status_code for r in refused] == [400, 400]
            assert refused[0].json() == refused[1].json()
        assert await apps.stored() == 3
        both = [await client.post("/api/tasks/batch", json=body) for client in (full, routes_only)]
        shapes = [[(t["status"], t["warnings"]) for t in a.json()["tasks"]] for a in both]
        assert shapes[0] == shapes[1] and await apps.stored() == 9


async def test_integers_beyond_64_bits_go_to_the_routes_even_where_orjson_rounds_them(
    apps: Apps,
) -> None:
    """orjson reads -2**63 - 1 as the float -2**63, within range: the fast path must not judge
    such a body (schemathesis found the batch accepting it); the route refuses it."""
    low = b"-9223372036854775809"
    single = b'{"model": "m", "x": %s}' % low
    batch = b'{"tasks": [{"request": {"model": "m", "x": %s}}]}' % low
    headers = {"content-type": "application/json"}
    async with (
        apps.client(apps.hot_only, ["user"]) as hot_only,
        apps.client(apps.full, ["user"]) as full,
    ):
        for url, content in (("/api/task", single), ("/api/tasks/batch", batch)):
            declined = await hot_only.post(url, content=content, headers=headers)
            assert declined.status_code == DECLINED_STATUS, url
            refused = await full.post(url, content=content, headers=headers)
            assert refused.status_code == 400 and "64-bit" in refused.text, refused.text
        # A long digit string is declined too, and the route then stores it as usual.
        digits = b'{"model": "m", "id": "12345678901234567890"}'
        assert (await full.post("/api/task", content=digits, headers=headers)).status_code == 200
    assert await apps.stored() == 1
