"""What the domain needs from the outside world: the backend HTTP client and its replies.

`taskyard.backends.AiohttpBackendClient` implements `BackendClient`; the domain never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class ReplyKind(StrEnum):
    OK = "ok"  # 200 with a JSON object: a synchronous result
    ACCEPTED = "accepted"  # 202: the backend will call back
    REJECTED = "rejected"  # a 4xx that retrying elsewhere will not fix
    RETRYABLE = "retryable"  # connect error, 5xx, 408/409/429, an unreadable answer
    TIMEOUT = "timeout"  # no answer before the attempt's deadline


@dataclass(frozen=True, slots=True)
class PredictReply:
    kind: ReplyKind
    status: int | None = None
    body: dict[str, Any] | None = None
    error: str | None = None
    connect_failed: bool = False  # the server could not be reached at all


@dataclass(frozen=True, slots=True)
class HealthReply:
    healthy: bool
    network_error: bool  # worth retrying: the request never got an answer
    detail: str | None = None


class BackendClient(Protocol):
    async def predict(self, url: str, payload: dict[str, Any], *, timeout_s: float) -> PredictReply:
        """POST a task to a backend's predict endpoint and classify the answer."""
        ...

    async def health(self, url: str, *, timeout_s: float) -> HealthReply:
        """GET a backend's health endpoint."""
        ...
