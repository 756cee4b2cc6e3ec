"""Wire models: what the API accepts and returns. Field names follow the seed's wire format."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from taskyard.jsonsafe import depth_over

MAX_ID_LENGTH = 128
MAX_URL_LENGTH = 2048
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)

ReportStatus = Literal["WAITING", "PROCESSING", "FINISHED", "FAILED"]


MAX_JSON_DEPTH = 64  # nesting of objects and arrays in a request body


class JsonIn(BaseModel):
    """A request body that is stored as JSON: refuse what the store cannot write, as a 400.

    Python's JSON parser accepts integers of any size and ~1000 levels of nesting; the store and
    the responses (orjson) take 64-bit integers and 254 levels, and a task's request and result
    sit a few levels deep in its responses. Checked here so such a body is bad input, not a 500.
    """

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        if depth_over(data, MAX_JSON_DEPTH):
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            orjson.dumps(data)
        except orjson.JSONEncodeError as exc:
            raise ValueError(f"cannot be stored as JSON ({exc})") from exc
        return data


class ErrorOut(BaseModel):
    error: str
    details: Any = None


# ---- tasks ------------------------------------------------------------------------------


class TaskCreate(JsonIn):
    """A task request: `model` routes it; every other field is forwarded to the backend as is."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "example": {
                "model": "video-upscaler",
                "mimeType": "video/mp4",
                "video_quality": "1080p",
                "video_url": "https://example.com/in.mp4",
                "enable_upscale": True,
            }
        },
    )

    model: str = Field(min_length=1, max_length=256)


class AttemptOut(BaseModel):
    attempt: int
    serverId: str
    startedAt: int
    endedAt: int | None = None
    error: str | None = None
    errorCode: str | None = None
    nodeId: str | None = Field(None, description="the coordinator node that sent this attempt")


class TaskDetails(BaseModel):
    id: str
    status: Literal["WAITING", "PROCESSING", "FINISHED", "FAILED", "CANCELLED"]
    request: dict[str, Any]
    serverId: str | None
    result: Any
    createdAt: int = Field(description="epoch milliseconds")
    updatedAt: int
    callbackUrl: str | None
    error: str | None
    errorCode: str | None
    attempts: list[AttemptOut]
    model: str
    priority: int
    progress: float | None
    owner: str
    startedAt: int | None
    finishedAt: int | None


class TaskOut(BaseModel):
    taskId: str
    taskDetails: TaskDetails


class ResultMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    server_id: str | None = Field(None, max_length=MAX_ID_LENGTH)
    status: ReportStatus
    progress: float | None = Field(None, ge=0)
    processing_time: float | None = None
    model_time: float | None = None
    queue_time: float | None = None
    message: str | None = Field(None, max_length=10_000)
    custom_data: Any = None


class TaskResultIn(JsonIn):
    """The seed's TaskResult: what a backend PUTs (or returns from a synchronous predict)."""

    model_config = ConfigDict(extra="allow")

    backend_task_id: str | None = Field(None, max_length=256)
    data: Any = None
    metadata: ResultMetadata


# ---- servers ----------------------------------------------------------------------------


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"URL longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    _ = parts.port  # raises ValueError for a port out of range or not a number
    return value


class Endpoints(BaseModel):
    predict: str
    health: str | None = None

    _urls = field_validator("predict", "health")(_check_url)


class ServerRegister(JsonIn):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(pattern=ID_PATTERN, description="letters, digits and . _ : @ -; max 128")
    endpoints: Endpoints
    provider: str = Field("", max_length=256)
    name: str = Field("", max_length=256)
    is_async: bool = Field(False, alias="async")
    callback: bool = False
    max_concurrency: int = Field(1, ge=1, le=100_000)
    models: list[str] = Field(default_factory=list, max_length=1000)
    weight: float = Field(1.0, gt=0, le=1_000_000)

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        if any(not m or len(m) > 256 for m in value):
            raise ValueError("each model must be a non-empty string of at most 256 characters")
        return value


class RegisterOut(BaseModel):
    id: str
    success: bool
    token: str = Field(description="a `service` token bound to this server, for callbacks")


class HealthDetail(BaseModel):
    lastCheckAt: str | None
    lastSuccessAt: str | None
    consecutiveSuccesses: int
    consecutiveFailures: int
    dispatchFailures: int
    checkIntervalS: float
    nextCheckAt: str | None
    offlineSince: str | None
    lastError: str | None


class ServerOut(BaseModel):
    id: str
    name: str
    provider: str
    endpoints: Endpoints
    async_: bool = Field(alias="async")
    callback: bool
    max_concurrency: int
    models: list[str]
    weight: float
    status: Literal["online", "offline"]
    lastHeartbeat: str | None
    registeredAt: str
    inFlight: int
    health: HealthDetail
    load: dict[str, Any] | None
    checkedBy: str | None = Field(None, description="the node that ran the last health check")


class ServersOut(BaseModel):
    servers: list[ServerOut]


class NodeOut(BaseModel):
    id: str
    host: str
    startedAt: int
    lastSeen: int
    alive: bool = Field(description="seen within the node timeout")
    leases: list[str] = Field(description='cluster duties it holds, e.g. "chores"')


class NodesOut(BaseModel):
    nodes: list[NodeOut]


class HeartbeatIn(JsonIn):
    model_config = ConfigDict(extra="allow")


class HeartbeatOut(BaseModel):
    id: str
    success: bool
    lastHeartbeat: str


class CleanupIn(BaseModel):
    maxAgeMins: float = Field(5.0, gt=0, le=525_600)


class CleanupOut(BaseModel):
    success: bool
    removedServers: list[str]


class OkOut(BaseModel):
    id: str
    success: bool


def valid_id(value: str) -> bool:
    return bool(_ID_RE.match(value))
