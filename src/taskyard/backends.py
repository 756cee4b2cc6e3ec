"""The coordinator's outgoing HTTP: dispatches and health checks, over one pooled aiohttp session.

aiohttp rather than httpx here: with hundreds of concurrent requests it was about ten times
faster on this machine. Backend answers are untrusted: their size is capped and their JSON
checked before the domain sees them.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from taskyard.domain.dispatch import is_retryable_status
from taskyard.domain.ports import HealthReply, PredictReply, ReplyKind
from taskyard.jsonsafe import depth_over

ERROR_TEXT_LIMIT = 500  # characters of a backend's error body kept in the task's record
# Deeper results are refused: the store's JSON writer stops at 254 levels, and a result it could
# not write would leave the task stuck until its deadline.
MAX_RESULT_DEPTH = 128
NODE_HEADER = "X-Taskyard-Node"


class AiohttpBackendClient:
    def __init__(
        self, *, max_response_bytes: int = 10_485_760, connections: int = 0, node_id: str = ""
    ) -> None:
        self._max_response_bytes = max_response_bytes
        # Backends (and their operators) can tell which coordinator node is calling.
        self._headers = {NODE_HEADER: node_id} if node_id else {}
        self._connections = connections  # 0 = no limit; each server's capacity bounds it
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=60)
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

    async def predict(self, url: str, payload: dict[str, Any], *, timeout_s: float) -> PredictReply:
        try:
            async with self.session.post(
                url,
                data=orjson.dumps(payload),
                headers={"Content-Type": "application/json", **self._headers},
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as resp:
                raw = await self._read_capped(resp)
                return _classify(resp.status, raw)
        except TimeoutError:
            return PredictReply(ReplyKind.TIMEOUT, error=f"no answer within {timeout_s:g} s")
        except _ResponseTooLarge as exc:
            return PredictReply(ReplyKind.RETRYABLE, error=str(exc))
        except aiohttp.ClientConnectorError as exc:
            return PredictReply(
                ReplyKind.RETRYABLE, error=f"connect failed: {exc.os_error}", connect_failed=True
            )
        except (aiohttp.ClientError, OSError) as exc:
            return PredictReply(ReplyKind.RETRYABLE, error=f"{type(exc).__name__}: {exc}")

    async def health(self, url: str, *, timeout_s: float) -> HealthReply:
        try:
            async with self.session.get(
                url,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as resp:
                await resp.content.read(ERROR_TEXT_LIMIT)
                if 200 <= resp.status < 300:
                    return HealthReply(healthy=True, network_error=False)
                return HealthReply(False, network_error=False, detail=f"health HTTP {resp.status}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            detail = f"health check: {type(exc).__name__}: {exc}".rstrip(": ")
            return HealthReply(healthy=False, network_error=True, detail=detail)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        raw = await resp.content.read(self._max_response_bytes + 1)
        if len(raw) > self._max_response_bytes:
            raise _ResponseTooLarge(f"backend answer larger than {self._max_response_bytes} bytes")
        return raw


class _ResponseTooLarge(Exception):
    pass


def _classify(status: int, raw: bytes) -> PredictReply:
    if status == 202:
        body = _json_object(raw)
        return PredictReply(ReplyKind.ACCEPTED, status=status, body=body)
    if 200 <= status < 300:
        body = _json_object(raw)
        if body is None:
            return PredictReply(
                ReplyKind.RETRYABLE,
                status=status,
                error=f"backend answered 200 without a JSON object (max depth {MAX_RESULT_DEPTH})",
            )
        return PredictReply(ReplyKind.OK, status=status, body=body)
    text = raw[:ERROR_TEXT_LIMIT].decode(errors="replace")
    kind = ReplyKind.RETRYABLE if is_retryable_status(status) else ReplyKind.REJECTED
    return PredictReply(kind, status=status, error=f"HTTP {status}: {text}")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or depth_over(value, MAX_RESULT_DEPTH):
        return None
    return value
