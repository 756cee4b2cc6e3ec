"""The SSRF guard at its two places (issue 10, item 2), in-process on 127.0.0.1/127.0.0.2 only
(the registrations through `taskyard.testing.Harness`).

At registration, a production node refuses an endpoint that is or resolves to an inward
address with a 400 naming the field and the rule, and stores nothing (names resolve through a
stub). At connection, the real aiohttp client checks the address it is about to connect to,
after DNS: a name that now resolves to a refused address (DNS rebinding, played by a stub
resolver) gets no packet, while an allowed address on the same run answers. Redirects are
never followed.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from ipaddress import ip_address
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from taskyard.backends import AiohttpBackendClient
from taskyard.domain.ports import ReplyKind
from taskyard.netguard import Address, NetworkGuard
from taskyard.testing import Harness, harness_settings
from tests.support import SECRET, free_port

ALLOWED_HOST = "127.0.0.2"  # the one address the guard below allows
REFUSED_HOST = "127.0.0.1"  # loopback, not allowed in production

REGISTRATION_NAMES = {"metadata.test": "169.254.169.254", "intranet.test": "10.9.8.7"}
# What the connection-time resolver answers: "rebind.test" passed the registration check as a
# public name once, and now points inward.
CONNECT_NAMES = {"good.test": ALLOWED_HOST, "rebind.test": REFUSED_HOST}


async def registration_resolve(host: str, _port: int) -> list[Address]:
    if host not in REGISTRATION_NAMES:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return [ip_address(REGISTRATION_NAMES[host])]


class StubResolver(AbstractResolver):
    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = CONNECT_NAMES[host]
        result: ResolveResult = {
            "hostname": host,
            "host": address,
            "port": port,
            "family": socket.AF_INET,
            "proto": 0,
            "flags": socket.AI_NUMERICHOST,
        }
        return [result]

    async def close(self) -> None:
        pass


@pytest.fixture
async def admin() -> AsyncIterator[httpx.AsyncClient]:
    settings = harness_settings(env="production", jwt_secret=SECRET)
    async with Harness(settings, resolve=registration_resolve) as yard:
        yield yard.admin


@pytest.mark.parametrize(
    ("field", "url", "rule"),
    [
        ("predict", "http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("predict", "http://metadata.test/computeMetadata/v1/", "cloud metadata"),
        ("health", "https://intranet.test/health", "private"),
        ("health", "http://2130706433:8000/health", "loopback"),
        ("cancel", "http://[::ffff:127.0.0.1]:8000/cancel", "loopback"),
        ("cancel", "http://0x7f.1:8000/cancel", "loopback"),
    ],
)
async def test_registration_refuses_inward_endpoints_and_stores_nothing(
    admin: httpx.AsyncClient, field: str, url: str, rule: str
) -> None:
    endpoints = {"predict": "https://api.example.org/predict"} | {field: url}
    response = await admin.post("/api/servers", json={"id": "inward", "endpoints": endpoints})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"].startswith(f"endpoints.{field}: ")
    assert rule in body["error"] and "TASKYARD_ALLOWED_BACKEND_NETWORKS" in body["error"]
    assert body["details"][0]["loc"] == ["body", "endpoints", field]
    assert body["details"][0]["type"] == "address_refused"
    assert (await admin.get("/api/servers/inward")).status_code == 404
    assert (await admin.get("/api/servers")).json()["servers"] == []


async def test_registration_of_a_public_name_goes_through(admin: httpx.AsyncClient) -> None:
    """A name that does not resolve now is not refused: the connection-time check guards it."""
    body = {"id": "public", "endpoints": {"predict": "https://gpu.example.org/predict"}}
    response = await admin.post("/api/servers", json=body)
    assert response.status_code == 200, response.text
    assert (await admin.get("/api/servers/public")).status_code == 200


class Listener:
    """An aiohttp server on one loopback address that counts every request by path."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = free_port()
        self.hits: dict[str, int] = {}
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        if request.path == "/moved":
            raise web.HTTPFound("/landing")
        return web.json_response({"ok": True})

    async def __aenter__(self) -> Listener:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def __aexit__(self, *_exc: Any) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def guarded() -> AsyncIterator[AiohttpBackendClient]:
    guard = NetworkGuard.for_settings("production", f"{ALLOWED_HOST}/32")
    client = AiohttpBackendClient(guard=guard, resolver=StubResolver())
    await client.open()
    try:
        yield client
    finally:
        await client.close()


async def test_connections_are_checked_after_dns_so_rebinding_gets_no_packet(
    guarded: AiohttpBackendClient,
) -> None:
    async with Listener(ALLOWED_HOST) as allowed, Listener(REFUSED_HOST) as refused:
        # The positive event first: the same client, an allowed address, a real answer.
        ok = await guarded.health(f"http://good.test:{allowed.port}/health", timeout_s=5)
        assert ok.healthy, ok.detail
        assert allowed.hits == {"/health": 1}

        rebound = await guarded.health(f"http://rebind.test:{refused.port}/health", timeout_s=5)
        assert not rebound.healthy and rebound.network_error
        assert "guard refuses to connect: 127.0.0.1 is loopback" in (rebound.detail or "")
        literal = await guarded.predict(
            f"http://{REFUSED_HOST}:{refused.port}/predict", {"x": 1}, timeout_s=5
        )
        assert literal.kind is ReplyKind.RETRYABLE and literal.connect_failed
        assert "network guard refuses" in (literal.error or "")
        cancel = await guarded.cancel(
            f"http://rebind.test:{refused.port}/cancel", {"task_id": "t"}, timeout_s=5
        )
        assert not cancel.let_go and "network guard refuses" in (cancel.error or "")
        assert refused.hits == {}  # not one request reached the refused address


async def test_redirects_are_never_followed(guarded: AiohttpBackendClient) -> None:
    async with Listener(ALLOWED_HOST) as allowed:
        health = await guarded.health(f"http://good.test:{allowed.port}/moved", timeout_s=5)
        assert not health.healthy and health.detail == "health HTTP 302"
        predict = await guarded.predict(
            f"http://good.test:{allowed.port}/moved", {"x": 1}, timeout_s=5
        )
        assert predict.kind is not ReplyKind.OK and predict.status == 302
        assert allowed.hits == {"/moved": 2}  # and never "/landing"
