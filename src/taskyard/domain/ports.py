"""What the domain needs from the outside world: the backend HTTP client and its replies, and
change notices between nodes.

`taskyard.backends.AiohttpBackendClient` implements `BackendClient` and
`taskyard.storage.notify` the `ClusterBus`; the domain never imports either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class ReplyKind(StrEnum):
    OK = "ok"  # 200 with a JSON object: a synchronous result
    ACCEPTED = "accepted"  # 202: the backend will call back
    REJECTED = "rejected"  # a 4xx that retrying elsewhere will not fix
    RETRYABLE = "retryable"  # connect error, 5xx, 408/409/429, a 2xx that is not a result
    TIMEOUT = "timeout"  # no answer before the attempt's deadline
    # A 2xx larger than the response size cap: another server would give the same answer, so
    # the task fails without a retry, and the server, which did answer, is not counted down.
    TOO_LARGE = "too_large"


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


@dataclass(frozen=True, slots=True)
class ClusterHandlers:
    """What a node does when another node announces a change."""

    tasks_final: Callable[[list[str]], None]  # wake long polls waiting on these tasks
    work: Callable[[], None]  # new tasks or capacity: wake the dispatcher
    servers: Callable[[], None]  # servers registered or removed: re-read the health schedule
    nodes: Callable[[], None]  # a node left: re-read who is alive


class ClusterBus(Protocol):
    """Change notices between nodes sharing a database (PostgreSQL LISTEN/NOTIFY).

    Best effort: a notice saves a wait, it is never the only way a change is seen; every
    loop also polls the database. With one node (SQLite) it does nothing.
    """

    @property
    def listening(self) -> bool:
        """Whether notices from other nodes are arriving now."""
        ...

    async def start(self, handlers: ClusterHandlers) -> None: ...

    async def close(self) -> None: ...

    def tasks_final(self, task_ids: Iterable[str]) -> None: ...

    def work(self) -> None: ...

    def servers(self) -> None: ...

    def nodes(self) -> None: ...


class LocalBus:
    """One node alone (SQLite): nothing to tell, and no change it can miss."""

    listening = True

    async def start(self, handlers: ClusterHandlers) -> None:
        pass

    async def close(self) -> None:
        pass

    def tasks_final(self, task_ids: Iterable[str]) -> None:
        pass

    def work(self) -> None:
        pass

    def servers(self) -> None:
        pass

    def nodes(self) -> None:
        pass
