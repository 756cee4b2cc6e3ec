"""The pure-ASGI layer every HTTP request passes through first (`Edge`)."""

from __future__ import annotations

import itertools
import re
import uuid
from typing import NamedTuple

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskyard import logs
from taskyard.api.security import DOCS_PATHS, serve_docs_page, with_security_headers

REQUEST_ID_HEADER = b"x-request-id"
_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


_REQUEST_PREFIX = uuid.uuid4().hex[:12]  # unique per process
_request_numbers = itertools.count(1)


def _new_request_id() -> bytes:
    # A process prefix and a counter: unique, and cheaper than a uuid4 per request.
    return f"{_REQUEST_PREFIX}-{next(_request_numbers):x}".encode()


class Edge:
    """What every HTTP request passes through, in one pure-ASGI layer, outermost:

    - its request id: the client's X-Request-Id (when sane) or a new one, on the answer and on
      every log line the request causes (uvicorn's access line included);
    - the body limit: 413 for a body over it, whether or not Content-Length says so. The limit
      is `max_bytes`, except for `PUT /api/task/{id}`: a backend reporting a result by callback
      may send as much as a synchronous answer may hold, `result_max_bytes`;
    - every `/api/` body read as JSON, whatever its Content-Type says (the seed's Hono
      `c.req.json()` did, so clients sending JSON as text/plain or untyped keep working);
    - the security headers (`security.py`) on every answer, CORS preflights included.

    One layer rather than four: each layer's own wrappers of `receive` and `send` and its own
    pass over the headers cost as much as a small route (the four layers took 13 % off single
    submits, measured).
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, result_max_bytes: int | None = None
    ) -> None:
        self.app = app
        self.limit = _Limit(max_bytes, "TASKYARD_MAX_BODY_BYTES")
        self.result_limit = (
            self.limit
            if result_max_bytes is None
            else _Limit(result_max_bytes, "TASKYARD_MAX_BACKEND_RESPONSE_BYTES")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given, length = b"", None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                given = value
            elif name == b"content-length":
                length = value
        request_id = given if _SAFE_ID.match(given) else _new_request_id()
        request_id_text = request_id.decode()
        scope.setdefault("state", {})["request_id"] = request_id_text

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id)]
                message["headers"] = with_security_headers(headers)
            await send(message)

        context = logs.set_request_id(request_id_text)
        try:
            path: str = scope["path"]
            if path in DOCS_PATHS:
                await serve_docs_page(self.app, scope, receive, _with_id(send, request_id))
                return
            limit = self.result_limit if _is_result_report(scope) else self.limit
            if length is not None and (not length.isdigit() or int(length) > limit.max_bytes):
                await _too_large(send_with_headers, limit)
                return
            if path.startswith("/api/"):
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                headers.append((b"content-type", b"application/json"))
                scope = dict(scope, headers=headers)
            if length is not None:
                # The HTTP server reads no more than Content-Length says: nothing to count.
                await self.app(scope, receive, send_with_headers)
            else:  # chunked, or no body
                await _counted(self.app, scope, receive, send_with_headers, limit)
        finally:
            logs.reset_request_id(context)


def _with_id(send: Send, request_id: bytes) -> Send:
    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id)]
        await send(message)

    return send_with_id


async def _counted(app: ASGIApp, scope: Scope, receive: Receive, send: Send, limit: _Limit) -> None:
    """Run `app` on a body of unknown length, refused with 413 once it goes over `limit`."""
    seen = 0
    started = False

    async def counting_receive() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit.max_bytes:
                raise _TooLarge(limit)
        return message

    async def tracking_send(message: Message) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, counting_receive, tracking_send)
    except _TooLarge:
        if not started:
            await _too_large(send, limit)


class _Limit(NamedTuple):
    max_bytes: int
    setting: str  # named in the 413, so whoever hits it knows which knob to turn


_TASK_PREFIX = "/api/task/"


def _is_result_report(scope: Scope) -> bool:
    """`PUT /api/task/{id}` (and only that: not `/api/task/{id}/cancel`, not other methods)."""
    path: str = scope["path"]
    return (
        scope["method"] == "PUT"
        and path.startswith(_TASK_PREFIX)
        and "/" not in path[len(_TASK_PREFIX) :]
    )


async def _too_large(send: Send, limit: _Limit) -> None:
    body = orjson.dumps({"error": _TooLarge(limit).detail})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """The body went over the limit while being read.

    An HTTPException, because FastAPI turns any other error raised while it reads a body into
    "400 There was an error parsing the body"; this one it lets through to the error handlers.
    """

    def __init__(self, limit: _Limit) -> None:
        super().__init__(
            413, f"Request body larger than the {limit.max_bytes}-byte limit ({limit.setting})"
        )
