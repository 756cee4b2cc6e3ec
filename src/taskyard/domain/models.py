"""Domain values: tasks, servers and their states; immutable, built from rows in storage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

JSON = dict[str, Any]


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (the seed's time unit on the wire)."""
    return int(time.time() * 1000)


class TaskStatus(StrEnum):
    WAITING = "WAITING"  # stored; waiting for a server, or for its retry backoff to pass
    PROCESSING = "PROCESSING"  # an attempt is running on `server_id`
    FINISHED = "FINISHED"  # final: a backend returned a result
    FAILED = "FAILED"  # final: attempts exhausted, a permanent error, or a deadline
    CANCELLED = "CANCELLED"  # final: cancelled by its owner or an admin

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class ServerStatus(StrEnum):
    ONLINE = "online"  # passed its last check; gets tasks
    OFFLINE = "offline"  # failed its last check (or is new and unchecked); gets no tasks


class ErrorCode(StrEnum):
    TIMEOUT = "timeout"  # no result before the processing deadline
    BACKEND_ERROR = "backend_error"  # 5xx, 429, connect error: retryable
    BACKEND_REJECTED = "backend_rejected"  # 4xx: the backend refused the task, not retried
    BACKEND_FAILED = "backend_failed"  # the backend reported FAILED
    RESPONSE_TOO_LARGE = "response_too_large"  # the result was over the size cap, not retried
    NO_CAPACITY_DEADLINE = "no_capacity_deadline"  # still WAITING at its queue deadline
    SERVER_REMOVED = "server_removed"  # its server was deleted mid-attempt
    NODE_LOST = "node_lost"  # the coordinator that sent it died before an answer


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One try of a task on one server."""

    number: int
    server_id: str
    started_at: int
    ended_at: int | None = None
    error: str | None = None
    error_code: str | None = None
    node_id: str | None = None  # the coordinator that sent it

    def to_json(self) -> JSON:
        return {
            "attempt": self.number,
            "serverId": self.server_id,
            "nodeId": self.node_id,
            "startedAt": self.started_at,
            "endedAt": self.ended_at,
            "error": self.error,
            "errorCode": self.error_code,
        }

    @classmethod
    def from_json(cls, data: JSON) -> AttemptRecord:
        return cls(
            number=data["attempt"],
            server_id=data["serverId"],
            started_at=data["startedAt"],
            ended_at=data.get("endedAt"),
            error=data.get("error"),
            error_code=data.get("errorCode"),
            node_id=data.get("nodeId"),
        )


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task control options given at creation (query parameters of POST /api/task)."""

    priority: int = 0
    timeout_s: float | None = None  # processing deadline per attempt; None = the default
    max_attempts: int | None = None  # None = the configured default
    queue_timeout_s: float | None = None  # fail with no_capacity_deadline if still WAITING


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    owner: str
    model: str
    request: JSON
    status: TaskStatus
    priority: int
    attempt: int  # attempts started so far
    max_attempts: int
    timeout_s: float
    created_at: int
    updated_at: int
    server_id: str | None = None
    result: Any = None
    progress: float | None = None
    error: str | None = None
    error_code: str | None = None
    callback_url: str | None = None
    started_at: int | None = None
    finished_at: int | None = None
    deadline_at: int | None = None  # current attempt's processing deadline
    next_attempt_at: int = 0  # not dispatched before this (retry backoff)
    queue_deadline_at: int | None = None
    attempts: tuple[AttemptRecord, ...] = ()

    @property
    def tried_servers(self) -> frozenset[str]:
        return frozenset(a.server_id for a in self.attempts)


@dataclass(frozen=True, slots=True)
class Server:
    id: str
    name: str
    provider: str
    predict_url: str
    health_url: str | None
    is_async: bool
    callback: bool
    max_concurrency: int
    models: tuple[str, ...]
    weight: float
    status: ServerStatus
    registered_at: int
    last_heartbeat: int | None = None
    last_check_at: int | None = None
    last_success_at: int | None = None
    offline_since: int | None = None
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    dispatch_failures: int = 0
    check_interval_s: float = 10.0
    next_check_at: int = 0
    last_error: str | None = None
    reported_load: JSON | None = None
    checked_by: str | None = None  # the node that ran the last health check
    in_flight: int = 0  # derived: tasks PROCESSING on it (filled by the store when asked)
    extra: JSON = field(default_factory=dict)

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrency - self.in_flight)

    @property
    def last_seen(self) -> int:
        """Latest sign of life: a heartbeat, a passed check, or the registration."""
        return max(self.last_heartbeat or 0, self.last_success_at or 0, self.registered_at)


@dataclass(frozen=True, slots=True)
class Node:
    """A coordinator process sharing the database, as it last recorded itself."""

    id: str
    host: str
    started_at: int
    last_seen_at: int
    leases: tuple[str, ...] = ()  # cluster duties it holds (e.g. "chores")

    def alive(self, *, now: int, timeout_ms: int) -> bool:
        return now - self.last_seen_at <= timeout_ms
