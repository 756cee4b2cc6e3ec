"""What the API returns, as typed objects: tasks, servers, nodes, probes.

Attributes are snake_case; each reads the API's JSON field of the same name in camelCase
(`server_id` ← `serverId`) unless it says otherwise. Fields the client does not know yet are
kept: `model_extra` holds them, and `to_json()` gives the object back as the API sent it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """A JSON object of the API: known fields typed, unknown ones kept."""

    model_config = ConfigDict(
        extra="allow", populate_by_name=True, frozen=True, alias_generator=to_camel
    )

    def to_json(self) -> dict[str, Any]:
        """The object as the API sent it (field names as on the wire, unknown ones too)."""
        return self.model_dump(mode="json", by_alias=True)


class TaskStatus(StrEnum):
    """A task's status; `Task.status` is a plain string that compares equal to these."""

    WAITING = "WAITING"  # stored, not started yet (or waiting for its next attempt)
    PROCESSING = "PROCESSING"  # an attempt is running on `server_id`
    FINISHED = "FINISHED"  # final: `result` holds the backend's answer
    FAILED = "FAILED"  # final: `error` and `error_code` say why
    CANCELLED = "CANCELLED"  # final: cancelled by its owner or an admin


FINAL_STATUSES = frozenset({TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class ServerState(StrEnum):
    """A server's state (`Server.state`)."""

    ONLINE = "online"  # passing its checks; gets tasks
    OFFLINE = "offline"  # failed its last check; gets none
    DRAINING = "draining"  # finishing its tasks, taking no new ones
    MAINTENANCE = "maintenance"  # put aside by an admin; gets none
    EJECTED = "ejected"  # failing dispatches; out of rotation for a while


# ---- tasks ------------------------------------------------------------------------------


class Attempt(WireModel):
    """One try of a task on one server."""

    attempt: int
    server_id: str
    started_at: int  # epoch ms
    ended_at: int | None = None
    error: str | None = None
    error_code: str | None = None
    node_id: str | None = None  # the coordinator node that sent it


class Waiting(WireModel):
    """Why a WAITING task has not started."""

    reason: str  # e.g. no_server_for_model, all_busy, backoff, queued
    detail: str
    retry_at: int | None = None
    position: int | None = None


class TaskSummary(WireModel):
    """A task without its request and result, as a search lists it. Times are epoch ms."""

    id: str
    status: str
    model: str
    owner: str
    priority: int
    created_at: int
    updated_at: int
    attempts: list[Attempt]
    server_id: str | None = None
    callback_url: str | None = None
    error: str | None = None
    error_code: str | None = None
    progress: float | None = None
    started_at: int | None = None
    finished_at: int | None = None

    @property
    def is_final(self) -> bool:
        """FINISHED, FAILED or CANCELLED: it will not change any more."""
        return self.status in FINAL_STATUSES


class Task(TaskSummary):
    """A task with its request and result."""

    request: dict[str, Any]
    result: Any = None
    waiting: Waiting | None = None

    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """What the API said on submit that the submitter should know (e.g. no server
        serves its model); empty for a task that was read."""
        return list(self._warnings)


class TaskOut(WireModel):
    """The envelope of one task: `{taskId, taskDetails, warnings?}`."""

    task_id: str
    task_details: Task
    warnings: list[str] | None = None

    def task(self) -> Task:
        task = self.task_details
        task._warnings = list(self.warnings or [])
        return task


class TasksPage(WireModel):
    """One page of a search, newest first."""

    tasks: list[TaskSummary]
    next_cursor: str | None = None  # pass as `cursor` for the next page; None at the end


class Submitted(WireModel):
    """One task of a batch submit, as stored."""

    task_id: str
    status: TaskStatus  # WAITING
    warnings: list[str]  # e.g. that no server serves its model


class BulkResult(WireModel):
    """What a bulk retry or cancel changed."""

    changed: list[str]  # task ids
    count: int
    more: bool  # matching tasks remain past the limit


# ---- servers and nodes ------------------------------------------------------------------


class Endpoints(WireModel):
    predict: str
    health: str | None = None
    cancel: str | None = None


class HealthDetail(WireModel):
    """The health monitor's view of a server. Times are ISO 8601 strings."""

    consecutive_successes: int
    consecutive_failures: int
    dispatch_failures: int
    check_interval_s: float
    last_check_at: str | None = None
    last_success_at: str | None = None
    next_check_at: str | None = None
    offline_since: str | None = None
    last_error: str | None = None
    ejected: bool = False  # out of rotation for its dispatch results
    ejected_until: str | None = None
    ejections: int = 0  # in a row; each lasts twice as long
    ejection_reason: str | None = None  # failing / rejecting
    consecutive_rejections: int = 0


class Maintenance(WireModel):
    enabled: bool
    reason: str | None = None
    since: str | int | None = None


class Server(WireModel):
    """A registered backend server. Registration fields keep their wire names
    (`max_concurrency`, `async`); times are ISO 8601 strings."""

    id: str
    name: str
    provider: str
    endpoints: Endpoints
    is_async: bool = Field(alias="async")
    callback: bool
    max_concurrency: int = Field(alias="max_concurrency")
    models: list[str]
    weight: float
    status: str  # online / offline
    registered_at: str
    in_flight: int  # running tasks plus held slots
    health: HealthDetail
    held_slots: int = 0  # slots of cancelled or timed-out attempts the backend still holds
    last_heartbeat: str | None = None
    load: dict[str, Any] | None = None
    checked_by: str | None = None
    state: str | None = None  # a ServerState, where the server reports one
    maintenance: Maintenance | None = None
    auto_remove: bool | None = None


class Registered(WireModel):
    """A registration's answer: `token` is the server's own `service` token, for callbacks
    and heartbeats."""

    id: str
    success: bool
    token: str


class Heartbeat(WireModel):
    """A heartbeat's answer: `token` is a fresh server token (server tokens expire; use it
    for the next heartbeats and reports)."""

    id: str
    success: bool
    last_heartbeat: str
    token: str


class Node(WireModel):
    """A coordinator node sharing the database."""

    id: str
    host: str
    started_at: int
    last_seen: int
    alive: bool
    leases: list[str]


# ---- probes (no token needed) -----------------------------------------------------------


class Health(WireModel):
    """`GET /health`: the process is up."""

    status: str
    timestamp: str | None = None
    version: str | None = None


class Readiness(WireModel):
    """`GET /ready`: whether the node reaches its database (`ready` is False when not)."""

    status: str
    database: str | None = None
    node: str | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"
