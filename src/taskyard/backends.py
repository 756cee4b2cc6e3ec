"""The coordinator's outgoing HTTP: dispatches and health checks, over one pooled aiohttp session.

aiohttp rather than httpx here: with hundreds of concurrent requests it was about ten times
faster on this machine. Backend answers are untrusted: their size is capped and their JSON
checked before the domain sees them.

A body is read in a loop until it ends, however it arrives (Content-Length or chunked, in one
write or many slow ones); one `read(n)` returns only what is already buffered. Reading stops as
soon as more than the cap has arrived, so an endless answer costs at most the cap in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver

from taskyard.config import default_of
from taskyard.domain.dispatch import is_retryable_status
from taskyard.domain.ports import CancelReply, HealthReply, PredictReply, ReplyKind
from taskyard.jsonsafe import depth_over, unstorable_number
from taskyard.netguard import NetworkGuard

ERROR_TEXT_LIMIT = 500  # characters of a backend's error body kept in the task's record
# Deeper results are refused: the store's JSON writer stops at 254 levels, and a result it could
# not write would leave the task stuck until its deadline.
MAX_RESULT_DEPTH = 128
NODE_HEADER = "X-Taskyard-Node"
CAP_SETTING = "TASKYARD_MAX_BACKEND_RESPONSE_BYTES"  # named in errors, so operators know the knob
READ_CHUNK = 65_536  # bytes asked of the stream per read


@dataclass(frozen=True, slots=True)
class Body:
    """What was read of an answer's body."""

    data: bytes  # all of it, or its first `limit` bytes when `over` (empty when not kept)
    over: bool  # longer than `limit`: the rest was not read, and the connection is not reused


class AiohttpBackendClient:
    def __init__(
        self,
        *,
        max_response_bytes: int = default_of("max_backend_response_bytes"),
        connections: int = 0,
        node_id: str = "",
        guard: NetworkGuard | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        # Every connection's address passes the SSRF guard, after DNS (see netguard.py).
        self._guard = guard or NetworkGuard.for_settings("production", "")
        self._resolver = resolver  # None: aiohttp's default; tests hand in a stub
        self._max_response_bytes = max_response_bytes
        # Backends (and their operators) can tell which coordinator node is calling.
        self._headers = {NODE_HEADER: node_id} if node_id else {}
        self._connections = connections  # 0 = no limit; each server's capacity bounds it
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._connections,
            keepalive_timeout=60,
            resolver=self._resolver,
            socket_factory=self._guard.socket_factory,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, json_serialize=lambda v: orjson.dumps(v).decode()
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("AiohttpBackendClient is not open: call `await client.open()`")
        return self._session

    def _headers_for(self, api_key: str | None, **more: str) -> dict[str, str]:
        """This node's headers, and the server's credential (`apiKey`) when it has one."""
        headers = {**self._headers, **more}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    def _post_json(
        self, url: str, payload: dict[str, Any], *, timeout_s: float, api_key: str | None
    ) -> aiohttp.client._RequestContextManager:
        """POST `payload` as JSON, never following a redirect (a backend's answer must come
        from the URL it registered, not from wherever it points)."""
        return self.session.post(
            url,
            data=orjson.dumps(payload),
            headers=self._headers_for(api_key, **{"Content-Type": "application/json"}),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        )

    async def predict(
        self,
        url: str,
        payload: dict[str, Any],
        *,
        timeout_s: float,
        api_key: str | None = None,
    ) -> PredictReply:
        try:
            async with self._post_json(url, payload, timeout_s=timeout_s, api_key=api_key) as resp:
                return await self._predict_reply(resp)
        except TimeoutError:
            return PredictReply(ReplyKind.TIMEOUT, error=f"no answer within {timeout_s:g} s")
        except aiohttp.ClientConnectorError as exc:
            return PredictReply(
                ReplyKind.RETRYABLE, error=f"connect failed: {exc.os_error}", connect_failed=True
            )
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: bad apiKey
            return PredictReply(ReplyKind.RETRYABLE, error=f"{type(exc).__name__}: {exc}")

    async def _predict_reply(self, resp: aiohttp.ClientResponse) -> PredictReply:
        return await predict_reply(
            resp.status, resp.content, declared=resp.content_length, cap=self._max_response_bytes
        )

    async def health(
        self, url: str, *, timeout_s: float, api_key: str | None = None
    ) -> HealthReply:
        try:
            async with self.session.get(
                url,
                headers=self._headers_for(api_key),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as resp:
                return await health_reply(
                    resp.status,
                    resp.content,
                    declared=resp.content_length,
                    cap=self._max_response_bytes,
                )
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            detail = f"health check: {type(exc).__name__}: {exc}".rstrip(": ")
            return HealthReply(healthy=False, network_error=True, detail=detail)

    async def cancel(
        self, url: str, payload: dict[str, Any], *, timeout_s: float, api_key: str | None = None
    ) -> CancelReply:
        try:
            async with self._post_json(url, payload, timeout_s=timeout_s, api_key=api_key) as resp:
                return await cancel_reply(resp.status, resp.content)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            return CancelReply(let_go=False, error=f"cancel: {type(exc).__name__}: {exc}")


class ByteStream(Protocol):
    """What `read_body` needs of a body: `aiohttp.StreamReader.read`."""

    async def read(self, n: int = -1, /) -> bytes: ...


async def read_body(
    stream: ByteStream, limit: int, *, declared: int | None = None, keep: bool = True
) -> Body:
    """Read a body to its end, or until more than `limit` bytes have come.

    At most `limit + 1` bytes are read, and none when the `declared` Content-Length is already
    over. With `keep=False` the bytes are counted and dropped (a body read only to drain it).
    """
    if declared is not None and declared > limit:
        return Body(b"", over=True)
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await stream.read(min(READ_CHUNK, limit + 1 - size))
        if not chunk:  # the end of the body
            return Body(b"".join(chunks), over=False)
        size += len(chunk)
        if keep:
            chunks.append(chunk)
    return Body(b"".join(chunks)[:limit], over=True)


# ---- What an answer means: the rules for any transport (`taskyard.testing` uses them too) ----


async def predict_reply(
    status: int, stream: ByteStream, *, declared: int | None, cap: int
) -> PredictReply:
    """A predict's answer (its status and body stream) as the domain sees it."""
    if not _is_success(status):
        # Only the beginning of an error body is kept, so only that much is read, whatever
        # its Content-Length says.
        error_text = await read_body(stream, ERROR_TEXT_LIMIT)
        return _classify(status, error_text.data)
    body = await read_body(stream, cap, declared=declared)
    if body.over:
        # Not read further: leaving the `async with` closes the connection (aiohttp reuses
        # only connections whose body was read to the end).
        return PredictReply(
            ReplyKind.TOO_LARGE, status=status, error=_too_large("backend answer", cap)
        )
    return _classify(status, body.data)


async def health_reply(
    status: int, stream: ByteStream, *, declared: int | None, cap: int
) -> HealthReply:
    """A health check's answer as the domain sees it."""
    # Read to the end (within the timeout) so the connection can be reused; the content is
    # not used, so none of it is kept.
    body = await read_body(stream, cap, declared=declared, keep=False)
    if not _is_success(status):
        return HealthReply(False, network_error=False, detail=f"health HTTP {status}")
    if body.over:
        return HealthReply(False, network_error=False, detail=_too_large("health answer", cap))
    return HealthReply(healthy=True, network_error=False)


async def cancel_reply(status: int, stream: ByteStream) -> CancelReply:
    """A cancel's answer as the domain sees it: only the status matters."""
    await read_body(stream, ERROR_TEXT_LIMIT, keep=False)  # a short read: the connection is reused
    if _is_success(status):
        return CancelReply(let_go=True)
    return CancelReply(let_go=False, error=f"cancel HTTP {status}")


def _too_large(what: str, cap: int) -> str:
    return f"{what} larger than the {cap}-byte cap ({CAP_SETTING})"


def _is_success(status: int) -> bool:
    return 200 <= status < 300


def _classify(status: int, raw: bytes) -> PredictReply:
    if status == 202:
        return PredictReply(ReplyKind.ACCEPTED, status=status, body=_json_object_or_none(raw))
    if _is_success(status):
        try:
            result = _json_object(raw)
        except _UnusableResult as exc:
            return PredictReply(
                ReplyKind.RETRYABLE,
                status=status,
                error=f"backend answered {status} without a usable result: {exc}",
            )
        return PredictReply(ReplyKind.OK, status=status, body=result)
    text = _storable(raw[:ERROR_TEXT_LIMIT].decode(errors="replace"))
    kind = ReplyKind.RETRYABLE if is_retryable_status(status) else ReplyKind.REJECTED
    return PredictReply(kind, status=status, error=f"HTTP {status}: {text}")


def _storable(text: str) -> str:
    """A backend's text as the task's `error` column can hold it (PostgreSQL refuses NUL)."""
    return text.replace("\x00", "\ufffd")


class _UnusableResult(ValueError):
    """A 2xx body that is not a JSON object a task can store; the message says why."""


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise _UnusableResult("empty body")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _UnusableResult(f"invalid JSON: {exc}{_non_json_number_hint(exc)}") from None
    if not isinstance(value, dict):
        raise _UnusableResult(f"not a JSON object but {_json_type(value)}")
    if depth_over(value, MAX_RESULT_DEPTH):
        raise _UnusableResult(f"nested deeper than {MAX_RESULT_DEPTH} levels")
    # orjson reads an integer beyond 64 bits as a float, which would store it changed; the rule
    # for requests (judge whole numbers by value) refuses it, and 1e30 with it.
    problem = unstorable_number(value)
    if problem is not None:
        raise _UnusableResult(problem)
    return value


def _json_object_or_none(raw: bytes) -> dict[str, Any] | None:
    try:
        return _json_object(raw)
    except _UnusableResult:
        return None  # a 202's body is informative only: the result comes by callback


def _non_json_number_hint(exc: orjson.JSONDecodeError) -> str:
    # orjson refuses NaN and Infinity, as it should: a stored result must stay valid JSON and
    # must not be silently changed. But it only says "unexpected character", so say what it was.
    # (1e400 it names itself: "number is infinity when parsed as double".)
    if exc.doc.startswith(("NaN", "Infinity"), exc.pos):
        return " (NaN and Infinity are not JSON numbers)"
    return ""


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
