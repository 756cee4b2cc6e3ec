"""In-process fakes of the domain's ports (beside `taskyard.testing.MemoryStore`)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from taskyard.domain.ports import CancelReply, HealthReply, PredictReply, ReplyKind

OK = PredictReply(ReplyKind.OK, status=200, body={"output": "done"})


class ScriptedBackend:
    """A `BackendClient` that answers each predict URL from a script (then `OK` once it runs
    out, or always `always[url]`) and records what it was sent. Every health check passes."""

    def __init__(self) -> None:
        self.script: dict[str, list[PredictReply]] = defaultdict(list)
        self.always: dict[str, PredictReply] = {}
        self.sent: list[tuple[str, dict[str, Any]]] = []  # (url, payload), in order
        self.cancels: list[tuple[str, dict[str, Any]]] = []
        self.cancel_replies: list[CancelReply] = []  # then let_go=True once it runs out
        self.api_keys: list[str | None] = []  # the key each call carried, in order

    async def predict(
        self,
        url: str,
        payload: dict[str, Any],
        *,
        timeout_s: float,
        api_key: str | None = None,
    ) -> PredictReply:
        self.sent.append((url, payload))
        self.api_keys.append(api_key)
        if self.script[url]:
            return self.script[url].pop(0)
        return self.always.get(url, OK)

    async def health(
        self, url: str, *, timeout_s: float, api_key: str | None = None
    ) -> HealthReply:
        self.api_keys.append(api_key)
        return HealthReply(healthy=True, network_error=False)

    async def cancel(
        self, url: str, payload: dict[str, Any], *, timeout_s: float, api_key: str | None = None
    ) -> CancelReply:
        self.cancels.append((url, payload))
        self.api_keys.append(api_key)
        if self.cancel_replies:
            return self.cancel_replies.pop(0)
        return CancelReply(let_go=True)
