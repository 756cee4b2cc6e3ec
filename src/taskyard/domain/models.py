"""Domain values: tasks, servers and their states; immutable, built from rows in storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

JSON = dict[str, Any]


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
    """What the health checks (or heartbeats) last said; `ServerState` is what dispatch sees."""

    ONLINE = "online"  # passed its last check
    OFFLINE = "offline"  # failed its last check (or is new and unchecked); gets no tasks


class ServerState(StrEnum):
    """A server's place in the rotation, as operators see it (docs/servers.md has the diagram)."""

    ONLINE = "online"  # healthy, in rotation
    OFFLINE = "offline"  # failed its health check (or a dispatch could not connect)
    EJECTED = "ejected"  # healthy to its checks, but out for failing or rejecting dispatches
    DRAINING = "draining"  # put in maintenance: no new tasks, some still running on it
    MAINTENANCE = "maintenance"  # in maintenance with nothing running on it


class ErrorCode(StrEnum):
    TIMEOUT = "timeout"  # no result before the processing deadline
    BACKEND_ERROR = "backend_error"  # 5xx, 429, connect error: retryable
    BACKEND_REJECTED = "backend_rejected"  # 4xx from the only server serving the model
    REJECTED = "rejected"  # refused (4xx) by two different servers: the task's own fault
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
    # Attempts made before the latest manual retry: `max_attempts` is the budget of each round.
    attempt_base: int = 0

    @property
    def tried_servers(self) -> frozenset[str]:
        return frozenset(a.server_id for a in self.attempts)

    @property
    def rejected_by(self) -> frozenset[str]:
        """Servers that refused this task (a 4xx) in this round: it is not sent there again."""
        return frozenset(
            a.server_id
            for a in self.attempts[self.attempt_base :]
            if a.error_code == ErrorCode.BACKEND_REJECTED
        )

    @property
    def attempts_left(self) -> int:
        return self.max_attempts - (self.attempt - self.attempt_base)


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
    check_interval_s: float  # health checks' base interval (the health_interval_min_s setting)
    last_heartbeat: int | None = None
    last_check_at: int | None = None
    last_success_at: int | None = None
    offline_since: int | None = None
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    dispatch_failures: int = 0
    next_check_at: int = 0
    last_error: str | None = None
    reported_load: JSON | None = None
    checked_by: str | None = None  # the node that ran the last health check
    # Changes at every registration: a health result or counter written for an older
    # registration (re-registered or deleted meanwhile) matches nothing.
    revision: str = ""
    cancel_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # sent to the backend, never shown
    auto_remove: bool = True  # removed after `offline_removal_s` offline (False: never)
    maintenance: bool = False
    maintenance_reason: str | None = None
    maintenance_since: int | None = None
    consecutive_rejections: int = 0  # 4xx answers in a row, to different tasks
    ejected: bool = False  # out of rotation for its dispatch results (see domain/ejection.py)
    ejected_until: int | None = None  # end of the latest ejection (kept after it ends)
    ejections: int = 0  # ejections in a row without a healthy stretch: sets the next length
    ejection_reason: str | None = None
    in_flight: int = 0  # derived: tasks PROCESSING on it plus held slots (filled by the store)
    held: int = 0  # derived: slots of cancelled or abandoned attempts not yet let go
    extra: JSON = field(default_factory=dict)

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrency - self.in_flight)

    @property
    def state(self) -> ServerState:
        if self.maintenance:
            return ServerState.DRAINING if self.in_flight else ServerState.MAINTENANCE
        if self.status is ServerStatus.OFFLINE:
            return ServerState.OFFLINE
        return ServerState.EJECTED if self.ejected else ServerState.ONLINE

    @property
    def in_rotation(self) -> bool:
        """Online and not in maintenance: may get tasks (if not ejected, or in a panic)."""
        return self.status is ServerStatus.ONLINE and not self.maintenance

    @property
    def last_seen(self) -> int:
        """Latest sign of life: a heartbeat, a passed check, or the registration."""
        return max(self.last_heartbeat or 0, self.last_success_at or 0, self.registered_at)


@dataclass(frozen=True, slots=True)
class SlotHold:
    """A backend slot still counted after its attempt ended here (cancelled, timed out,
    abandoned): the backend may still be working on it. Released when the backend lets go
    (its cancel answer or a late report) or at `held_until`, a bounded grace after the deadline.
    """

    task_id: str
    attempt: int
    server_id: str
    held_until: int
    cancel_due_at: int | None = None  # when to (re)send the cancel; None: none to send
    cancel_tries: int = 0


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
