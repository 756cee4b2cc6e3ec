"""Security headers and CORS (issue 10, item 1), against the app in-process
(`taskyard.testing.Harness`): every answer says nosniff and sends no referrer, JSON answers
forbid rendering, the docs allow exactly their own inline script; CORS answers listed origins
only, preflights need no token, and with no origins configured there are no CORS headers at
all. The docs can be switched off. (A real node sends no `server` banner:
`tests/e2e/test_api_smoke.py`.)"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from taskyard.config import Settings
from taskyard.testing import Harness, harness_settings
from tests.support import SECRET, bearer, token

APP_ORIGIN = "https://app.example.com"
EVIL_ORIGIN = "https://evil.example.com"

Client = Callable[..., Any]


@asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        Harness(harness_settings(jwt_secret=SECRET, **settings)) as yard,
        yard.client() as client,
    ):
        yield client


def assert_common(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_every_answer_carries_the_headers_and_json_may_not_render() -> None:
    async with serving() as client:
        for response in (
            await client.get("/"),
            await client.get("/api/tasks"),  # 401
            await client.get("/api/task/nope", headers=bearer(token(["admin"]))),  # 404
            await client.post("/api/task", content=b"{", headers=bearer(token(["user"]))),  # 400
        ):
            assert_common(response)
            assert response.headers["content-security-policy"] == (
                "default-src 'none'; frame-ancestors 'none'"
            ), response.request.url
        dashboard = await client.get("/dashboard/")
        assert_common(dashboard)
        assert dashboard.headers["content-security-policy"].startswith("default-src 'self'")


async def test_the_docs_policy_allows_exactly_their_inline_script() -> None:
    async with serving() as client:
        docs = await client.get("/docs")
        assert_common(docs)
        policy = docs.headers["content-security-policy"]
        [inline] = re.findall(rb"<script>(.*?)</script>", docs.content, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(inline).digest()).decode()
        script_src = policy.split("script-src ")[1].split(";")[0].split()
        assert script_src == ["'self'", f"'sha256-{digest}'"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert int(docs.headers["content-length"]) == len(docs.content)
        redoc = await client.get("/redoc")
        assert (
            redoc.headers["content-security-policy"].split("script-src ")[1].startswith("'self';")
        )


async def test_without_origins_there_are_no_cors_headers() -> None:
    async with serving() as client:
        simple = await client.get("/", headers={"Origin": APP_ORIGIN})
        preflight = await client.options(
            "/api/task", headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"}
        )
        for response in (simple, preflight):
            assert not [h for h in response.headers if h.startswith("access-control-")]


async def test_listed_origins_get_cors_with_credentials_and_others_nothing() -> None:
    async with serving(cors_origins=f"{APP_ORIGIN}, http://localhost:3000") as client:
        preflight = await client.options(
            "/api/task",
            headers={
                "Origin": APP_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )  # no token
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
        assert preflight.headers["access-control-allow-credentials"] == "true"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert_common(preflight)
        user = {"Origin": APP_ORIGIN, **bearer(token(["user"]))}
        created = await client.post("/api/task", json={"model": "m"}, headers=user)
        assert created.status_code == 200
        assert created.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "x-request-id" in created.headers["access-control-expose-headers"].lower()

        evil = await client.options(
            "/api/task", headers={"Origin": EVIL_ORIGIN, "Access-Control-Request-Method": "POST"}
        )
        assert evil.status_code == 400
        assert "access-control-allow-origin" not in evil.headers
        simple = await client.get("/", headers={"Origin": EVIL_ORIGIN})
        assert "access-control-allow-origin" not in simple.headers


async def test_any_origin_never_comes_with_credentials() -> None:
    async with serving(cors_origins="*") as client:
        simple = await client.get("/", headers={"Origin": EVIL_ORIGIN})
        assert simple.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in simple.headers


def test_a_malformed_origin_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="not an origin"):
        Settings(jwt_secret=SECRET, cors_origins="app.example.com/path")


async def test_the_docs_can_be_switched_off() -> None:
    async with serving(docs=False) as client:
        assert (await client.get("/docs")).status_code == 404
        assert (await client.get("/redoc")).status_code == 404
        assert (await client.get("/openapi.json")).status_code == 200  # the SDK's contract
