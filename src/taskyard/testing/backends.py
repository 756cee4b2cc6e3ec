"""Backends in this process: `InProcessBackends` (the coordinator's client) and `FakeBackend`.

`InProcessBackends` is the domain's `BackendClient` without sockets: each base URL mounted on it
is served by an ASGI app in this process (a FastAPI or Starlette app of your own, or
`FakeBackend`) through `httpx.ASGITransport`. What an answer means (a result, a 202, a refusal
to retry elsewhere, an answer over the size cap) is decided by `taskyard.backends`, the rules a
real backend's answers go through; a URL nothing is mounted at fails as a port where nothing
listens does, at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from taskyard.backends import NODE_HEADER, cancel_reply, health_reply, predict_reply
from taskyard.domain.ports import CancelReply, HealthReply, PredictReply, ReplyKind

FAKE_HOST = "http://backends.test"  # `FakeBackend` URLs: FAKE_HOST/<server id>/predict, ...
DEFAULT_CAP = 10_485_760  # bytes: TASKYARD_MAX_BACKEND_RESPONSE_BYTES' default


class _Bytes:
    """A body already read, as the `ByteStream` that `taskyard.backends`' rules read from."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    async def read(self, n: int = -1, /) -> bytes:
        end = len(self._data) if n < 0 else self._at + n
        chunk = self._data[self._at : end]
        self._at += len(chunk)
        return chunk


class InProcessBackends:
    """The coordinator's `BackendClient`, serving each mounted base URL with an ASGI app."""

    def __init__(self, *, max_response_bytes: int = DEFAULT_CAP, node_id: str = "") -> None:
        self._cap = max_response_bytes
        self._headers = {NODE_HEADER: node_id} if node_id else {}
        self._mounted: dict[str, httpx.AsyncClient] = {}  # base URL (no trailing /) → client

    def mount(self, base_url: str, app: ASGIApp) -> None:
        """Serve every URL under `base_url` (e.g. `http://gpu-1.test`) with `app`; an app
        mounted there before is replaced. An exception in `app` answers 500, as a server's
        would."""
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        self._mounted[base_url.rstrip("/")] = httpx.AsyncClient(transport=transport)

    def unmount(self, base_url: str) -> None:
        """From now on, calls under `base_url` fail as if its server had gone away."""
        self._mounted.pop(base_url.rstrip("/"), None)

    async def aclose(self) -> None:
        for http in self._mounted.values():
            await http.aclose()
        self._mounted.clear()

    def _client_for(self, url: str) -> httpx.AsyncClient | None:
        matches = [base for base in self._mounted if url == base or url.startswith(base + "/")]
        return self._mounted[max(matches, key=len)] if matches else None

    def _headers_for(self, api_key: str | None, *, json: bool = False) -> dict[str, str]:
        headers = dict(self._headers)
        if json:
            headers["Content-Type"] = "application/json"
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    async def _call(
        self, method: str, url: str, *, timeout_s: float, api_key: str | None, payload: Any = None
    ) -> httpx.Response | None:
        """The app's answer; None when nothing is mounted at `url`. Raises TimeoutError."""
        http = self._client_for(url)
        if http is None:
            return None
        content = None if payload is None else orjson.dumps(payload)
        headers = self._headers_for(api_key, json=content is not None)
        async with asyncio.timeout(timeout_s):
            return await http.request(method, url, content=content, headers=headers)

    async def predict(
        self,
        url: str,
        payload: dict[str, Any],
        *,
        timeout_s: float,
        api_key: str | None = None,
    ) -> PredictReply:
        try:
            answer = await self._call(
                "POST", url, timeout_s=timeout_s, api_key=api_key, payload=payload
            )
        except TimeoutError:
            return PredictReply(ReplyKind.TIMEOUT, error=f"no answer within {timeout_s:g} s")
        if answer is None:
            error = f"connect failed: nothing is mounted at {url}"
            return PredictReply(ReplyKind.RETRYABLE, error=error, connect_failed=True)
        return await predict_reply(
            answer.status_code, _Bytes(answer.content), declared=_length(answer), cap=self._cap
        )

    async def health(
        self, url: str, *, timeout_s: float, api_key: str | None = None
    ) -> HealthReply:
        try:
            answer = await self._call("GET", url, timeout_s=timeout_s, api_key=api_key)
        except TimeoutError:
            return HealthReply(False, network_error=True, detail="health check: TimeoutError")
        if answer is None:
            detail = f"health check: nothing is mounted at {url}"
            return HealthReply(False, network_error=True, detail=detail)
        return await health_reply(
            answer.status_code, _Bytes(answer.content), declared=_length(answer), cap=self._cap
        )

    async def cancel(
        self, url: str, payload: dict[str, Any], *, timeout_s: float, api_key: str | None = None
    ) -> CancelReply:
        try:
            answer = await self._call(
                "POST", url, timeout_s=timeout_s, api_key=api_key, payload=payload
            )
        except TimeoutError:
            return CancelReply(let_go=False, error="cancel: TimeoutError")
        if answer is None:
            return CancelReply(let_go=False, error=f"cancel: nothing is mounted at {url}")
        return await cancel_reply(answer.status_code, _Bytes(answer.content))


def _length(answer: httpx.Response) -> int | None:
    declared = answer.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


class FakeBackend:
    """An inference server in this process, as an ASGI app for `InProcessBackends`.

    `/predict` answers the task's result at once (`{"data": {"echo": request, "server_id"},
    "metadata": {"status": "FINISHED", ...}}`), or 202 when `accept` is set (an asynchronous
    backend: the test then reports the result with the `callback_token` it finds in
    `received`), or `fail_status` when set. `/health` answers 200, or 503 when `healthy` is
    False. `/cancel` answers 200. Every call is recorded; change the attributes at any time.
    """

    def __init__(
        self,
        server_id: str = "fake-1",
        *,
        accept: bool = False,
        healthy: bool = True,
        fail_status: int | None = None,
    ) -> None:
        self.server_id = server_id
        self.url = f"{FAKE_HOST}/{server_id}"
        self.accept = accept
        self.healthy = healthy
        self.fail_status = fail_status
        self.received: list[dict[str, Any]] = []  # each predict's body, as sent
        self.cancels: list[dict[str, Any]] = []  # each cancel's body
        self.health_checks = 0
        self.authorizations: list[str | None] = []  # each call's Authorization header

    def endpoints(self) -> dict[str, str]:
        """The registration's `endpoints`."""
        return {name: f"{self.url}/{name}" for name in ("predict", "health", "cancel")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan of its own
        request = Request(scope, receive)
        self.authorizations.append(request.headers.get("authorization"))
        response = await self._answer(request)
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        path = request.url.path
        if path.endswith("/health"):
            self.health_checks += 1
            if not self.healthy:
                return JSONResponse({"status": "unhealthy"}, status_code=503)
            return JSONResponse({"status": "ok", "server_id": self.server_id})
        if not path.endswith(("/cancel", "/predict")):
            return JSONResponse({"error": "not found"}, status_code=404)
        body = await request.json()
        if path.endswith("/cancel"):
            self.cancels.append(body)
            return JSONResponse({"cancelled": True})
        self.received.append(body)
        if self.fail_status is not None:
            return JSONResponse({"error": "forced status"}, status_code=self.fail_status)
        if self.accept:
            return JSONResponse({"status": "PROCESSING"}, status_code=202)
        server = {"server_id": self.server_id}
        return JSONResponse(
            {
                "data": {"echo": body.get("request"), **server},
                "metadata": {"status": "FINISHED", **server},
            }
        )
