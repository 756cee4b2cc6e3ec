"""In-process fakes of the domain's ports (beside `taskyard.testing.MemoryStore`)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from taskyard.domain.ports import HealthReply, PredictReply, ReplyKind

OK = PredictReply(ReplyKind.OK, status=200, body={"output": "done"})


class ScriptedBackend:
    """A `BackendClient` that answers each predict URL from a script (then `OK` once it runs
    out, or always `always[url]`) and records what it was sent. Every health check passes."""

    def __init__(self) -> None:
        self.script: dict[str, list[PredictReply]] = defaultdict(list)
        self.always: dict[str, PredictReply] = {}
        self.sent: list[tuple[str, dict[str, Any]]] = []  # (url, payload), in order

    async def predict(self, url: str, payload: dict[str, Any], *, timeout_s: float) -> PredictReply:
        self.sent.append((url, payload))
        if self.script[url]:
            return self.script[url].pop(0)
        return self.always.get(url, OK)

    async def health(self, url: str, *, timeout_s: float) -> HealthReply:
        return HealthReply(healthy=True, network_error=False)
