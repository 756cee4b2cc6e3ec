"""Wire models: what the API accepts and returns. Field names follow the seed's wire format."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic.types import Strict

from taskyard.jsonsafe import INT_MAX, INT_MIN, depth_over, storable_text, unstorable_number

MAX_ID_LENGTH = 128
MAX_URL_LENGTH = 2048
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)

ReportStatus = Literal["WAITING", "PROCESSING", "FINISHED", "FAILED"]


def _storable_text(value: str) -> str:
    if not storable_text(value):
        raise ValueError("must not contain NUL characters or invalid UTF-8")
    return value


def _whole_float_as_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer as JSON Schema has it: 5 and 5.0, but not true or "5" (which lax pydantic takes).
Integer = Annotated[int, BeforeValidator(_whole_float_as_int), Strict()]

# A string that lands in a text column (model, names, ids, messages): PostgreSQL refuses NUL.
Text = Annotated[
    str, AfterValidator(_storable_text), Field(json_schema_extra={"pattern": "^[^\\x00]*$"})
]

# A credential sent in an HTTP header (`Authorization: Bearer …`): visible ASCII, no spaces or
# control characters, which no HTTP client would put on the wire; refused at registration, so
# that a bad key is a 400 then rather than a failure at each call to the backend.
HeaderToken = Annotated[str, Field(pattern="^[!-~]+$")]

# What JSON values taskyard stores and forwards as they are (a task's fields, a result, extra
# registration fields): any JSON but integers beyond 64 bits, non-finite numbers and nesting
# deeper than MAX_JSON_DEPTH (which a schema cannot say). Published as a component of the
# OpenAPI document by `api.app`.
JSON_VALUE_REF: JsonDict = {"$ref": "#/components/schemas/JsonValue"}
JSON_VALUE_SCHEMA: JsonDict = {
    "description": "Any JSON value; integers must fit 64 bits, numbers must be finite, and"
    " objects and arrays nest at most 64 levels.",
    "anyOf": [
        {"type": "object", "additionalProperties": JSON_VALUE_REF},
        {"type": "array", "items": JSON_VALUE_REF},
        {"type": "string"},
        {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "boolean"},
        {"type": "null"},
    ],
}
_EXTRA_JSON: JsonDict = {"additionalProperties": JSON_VALUE_REF}
# A field's own schema cannot be a bare `$ref` to a component pydantic does not know.
_JSON_FIELD: JsonDict = {"allOf": [JSON_VALUE_REF]}


MAX_JSON_DEPTH = 64  # nesting of objects and arrays in a request body
MAX_NUMBER = 1e15  # bound of the numeric fields of a report


# Validation context: the body was parsed by orjson and passed `depth_over` and
# `unstorable_number` whole, so each `JsonIn` in it need not walk its part again.
STORABLE_CHECKED: dict[str, bool] = {"storable_checked": True}


class JsonIn(BaseModel):
    """A request body that is stored as JSON: refuse what the store cannot write, as a 400.

    Python's JSON parser accepts integers of any size and ~1000 levels of nesting; the store and
    the responses (orjson) take 64-bit integers and 254 levels, and a task's request and result
    sit a few levels deep in its responses. Checked here so such a body is bad input, not a 500.
    """

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any, info: ValidationInfo) -> Any:
        if info.context == STORABLE_CHECKED:
            return data  # the caller checked the whole body at once (`api/hot.py`, batches)
        if depth_over(data, MAX_JSON_DEPTH):
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        problem = unstorable_number(data)
        if problem is not None:
            raise ValueError(problem)
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
            **_EXTRA_JSON,
            "example": {
                "model": "video-upscaler",
                "mimeType": "video/mp4",
                "video_quality": "1080p",
                "video_url": "https://example.com/in.mp4",
                "enable_upscale": True,
            },
        },
    )

    model: Text = Field(min_length=1, max_length=256)


MAX_BATCH = 1000  # tasks per POST /api/tasks/batch

# The bounds of a create's options: query parameters of POST /api/task, fields of a batch item.
MAX_PRIORITY = 1000  # priorities run from -MAX_PRIORITY to MAX_PRIORITY
MAX_TIMEOUT_S = 7 * 24 * 3600  # processing deadline per attempt
MAX_ATTEMPTS = 100
MAX_QUEUE_TIMEOUT_S = 30 * 24 * 3600


class TaskBatchItem(BaseModel):
    """One task of a batch: its request, and the options a single create takes as query
    parameters. (Not a `JsonIn`: its `request` is one, and walking each item twice for what
    only the request can hold cost a seventh of a batch's time.)"""

    model_config = ConfigDict(extra="forbid")

    request: TaskCreate
    priority: Integer = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="higher runs first")
    timeout_s: float | None = Field(
        None, gt=0, le=MAX_TIMEOUT_S, description="processing deadline per attempt"
    )
    # The bounds before the validators: after them, on an optional, pydantic publishes them
    # as unknown keywords ("ge"), which no client reads (schemathesis found it).
    max_attempts: (
        Annotated[int, Field(ge=1, le=MAX_ATTEMPTS), BeforeValidator(_whole_float_as_int), Strict()]
        | None
    ) = None
    queue_timeout_s: float | None = Field(
        None, gt=0, le=MAX_QUEUE_TIMEOUT_S, description="fail if not started by then"
    )


class TaskBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskBatchItem] = Field(min_length=1, max_length=MAX_BATCH)


class BatchItemOut(BaseModel):
    taskId: str
    status: Literal["WAITING"]
    warnings: list[str] = Field(description="as a single create's `warnings`")


class TaskBatchOut(BaseModel):
    tasks: list[BatchItemOut] = Field(description="one per task of the request, in its order")
    count: int


class AttemptOut(BaseModel):
    attempt: int
    serverId: str
    startedAt: int
    endedAt: int | None = None
    error: str | None = None
    errorCode: str | None = None
    nodeId: str | None = Field(None, description="the coordinator node that sent this attempt")


class WaitingOut(BaseModel):
    reason: Literal[
        "backoff", "no_server_for_model", "maintenance", "no_server_online", "all_busy", "queued"
    ]
    detail: str
    retryAt: int | None = Field(None, description="epoch ms: when the next attempt is due")
    position: int | None = Field(
        None, description="WAITING tasks of the same model ahead of it (counted up to 10,000)"
    )


class TaskSummary(BaseModel):
    id: str
    status: Literal["WAITING", "PROCESSING", "FINISHED", "FAILED", "CANCELLED"]
    serverId: str | None
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


class TaskDetails(TaskSummary):
    request: dict[str, Any]
    result: Any
    waiting: WaitingOut | None = Field(
        None, description="while WAITING (when read): why it has not started yet"
    )


class TaskOut(BaseModel):
    taskId: str
    taskDetails: TaskDetails
    warnings: list[str] | None = Field(
        None, description="on create: what the creator should know (e.g. no server serves it)"
    )


class TasksPage(BaseModel):
    tasks: list[TaskSummary] = Field(description="newest first; without request and result")
    nextCursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


class ResultMetadata(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra=_EXTRA_JSON)

    server_id: Text | None = Field(None, max_length=MAX_ID_LENGTH)
    status: ReportStatus
    # Bounded so that every value the schema allows is one `JsonIn` stores (whole numbers must
    # fit 64 bits); no progress or duration comes near.
    progress: float | None = Field(None, ge=0, le=MAX_NUMBER)
    processing_time: float | None = Field(None, ge=-MAX_NUMBER, le=MAX_NUMBER)
    model_time: float | None = Field(None, ge=-MAX_NUMBER, le=MAX_NUMBER)
    queue_time: float | None = Field(None, ge=-MAX_NUMBER, le=MAX_NUMBER)
    message: Text | None = Field(None, max_length=10_000)
    custom_data: Any = Field(None, json_schema_extra=_JSON_FIELD)


class TaskResultIn(JsonIn):
    """The seed's TaskResult: what a backend PUTs (or returns from a synchronous predict)."""

    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra=_EXTRA_JSON)

    backend_task_id: str | None = Field(None, max_length=256)
    data: Any = Field(None, json_schema_extra=_JSON_FIELD)
    metadata: ResultMetadata


# ---- servers ----------------------------------------------------------------------------


_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(\.{_OCTET}){{3}}"
_IPV6 = "|".join(  # the forms of RFC 4291 §2.2, which `ipaddress` reads
    [
        f"({_H16}:){{7}}{_H16}",
        f"({_H16}:){{1,7}}:",
        f"({_H16}:){{1,6}}:{_H16}",
        *(f"({_H16}:){{1,{6 - n}}}(:{_H16}){{1,{n + 1}}}" for n in range(1, 6)),
        f":((:{_H16}){{1,7}}|:)",
        # (3): an IPv4 address in the last 32 bits, e.g. ::ffff:127.0.0.1 (the SSRF guard
        # judges it by that address); at most 7 groups in all, `::` standing for one or more.
        f"({_H16}:){{6}}{_IPV4}",
        f"::({_H16}:){{0,5}}{_IPV4}",
        *(f"({_H16}:){{{n}}}:({_H16}:){{0,{5 - n}}}{_IPV4}" for n in range(1, 6)),
    ]
)
_PORT = "6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}"
# RFC 3986 characters of a path, and of a query or fragment (which may hold `?` too). Each
# part has its own set, so the pattern has one way to match and takes linear time.
_PATH_CHARS = r"(%[0-9A-Fa-f]{2}|[A-Za-z0-9._~!$&'()*+,;=:@/-])*"
_QUERY_CHARS = r"(%[0-9A-Fa-f]{2}|[A-Za-z0-9._~!$&'()*+,;=:@/?-])*"
# An absolute http(s) URL as taskyard takes it: an RFC 3986 URI (ASCII, no spaces, % only as
# an escape) with an optional user, a host name, IPv4 or bracketed IPv6 address, and an
# optional port that fits 16 bits. It is published in the OpenAPI document and enforced by
# `_check_url`, so the two cannot disagree.
URL_PATTERN = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://((%[0-9A-Fa-f]{2}|[A-Za-z0-9._~!$&'()*+,;=:-])*@)?"
    rf"((%[0-9A-Fa-f]{{2}}|[A-Za-z0-9._~!$&'()*+,;=-])+|\[({_IPV6})\])"
    rf"(:({_PORT})?)?"
    rf"(/{_PATH_CHARS})?(\?{_QUERY_CHARS})?(#{_QUERY_CHARS})?$"
)
_URL_RE = re.compile(URL_PATTERN)


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"URL longer than {MAX_URL_LENGTH} characters")
    if not _URL_RE.match(value):
        raise ValueError(
            "must be an absolute http(s) URL: a host name, IPv4 or [IPv6] address, an optional"
            " port up to 65535, and no spaces or control characters"
        )
    urlsplit(value)  # the same parse aiohttp makes; raises ValueError on what it cannot read
    return value


Url = Annotated[
    str,
    Field(
        json_schema_extra={"format": "uri", "pattern": URL_PATTERN, "maxLength": MAX_URL_LENGTH},
        description="an absolute http(s) URL",
    ),
]


class Endpoints(BaseModel):
    # Other endpoints are ignored, but checked like any stored JSON (`JsonIn` walks them).
    model_config = ConfigDict(strict=True, json_schema_extra=_EXTRA_JSON)

    predict: Url
    health: Url | None = None
    cancel: Url | None = Field(
        None, description="POSTed `{task_id, attempt}` when a running task is cancelled"
    )

    _urls = field_validator("predict", "health", "cancel")(_check_url)


class ServerRegister(JsonIn):
    model_config = ConfigDict(
        extra="allow", populate_by_name=True, strict=True, json_schema_extra=_EXTRA_JSON
    )

    id: str = Field(pattern=ID_PATTERN, description="letters, digits and . _ : @ -; max 128")
    endpoints: Endpoints
    provider: Text = Field("", max_length=256)
    name: Text = Field("", max_length=256)
    is_async: bool = Field(False, alias="async")
    callback: bool = False
    max_concurrency: Integer = Field(1, ge=1, le=100_000)
    models: list[Annotated[Text, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=1000
    )
    weight: float = Field(1.0, gt=0, le=1_000_000)
    api_key: HeaderToken | None = Field(
        None,
        alias="apiKey",
        min_length=1,
        max_length=4096,
        repr=False,
        description="sent to the backend as `Authorization: Bearer` on predict, health and"
        " cancel calls (visible ASCII, no spaces); never shown by any read",
    )
    auto_remove: bool = Field(
        True,
        alias="autoRemove",
        description="false: never removed for being offline or stale (a static fleet)",
    )


class BulkOut(BaseModel):
    changed: list[str] = Field(description="ids of the tasks changed, newest first")
    count: int
    more: bool = Field(description="matching tasks remain past the limit: call again")


class MaintenanceIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    enabled: bool
    reason: Text | None = Field(None, max_length=1000)


class MaintenanceOut(BaseModel):
    enabled: bool
    reason: str | None
    since: str | None


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
    ejected: bool = Field(description="out of rotation for its dispatch results")
    ejectedUntil: str | None = Field(description="end of the latest ejection")
    ejections: int = Field(description="ejections in a row: each one lasts twice as long")
    ejectionReason: Literal["failing", "rejecting"] | None
    consecutiveRejections: int


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
    status: Literal["online", "offline"] = Field(description="what its health checks say")
    state: Literal["online", "offline", "ejected", "draining", "maintenance"] = Field(
        description="its place in the rotation (docs/servers.md)"
    )
    maintenance: MaintenanceOut
    autoRemove: bool
    lastHeartbeat: str | None
    registeredAt: str
    inFlight: int = Field(description="running tasks plus held slots")
    heldSlots: int = Field(
        description="slots of cancelled or timed-out attempts its backend has not let go of"
    )
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
    model_config = ConfigDict(extra="allow", json_schema_extra=_EXTRA_JSON)


class HeartbeatOut(BaseModel):
    id: str
    success: bool
    lastHeartbeat: str
    token: str = Field(
        description="a fresh `service` token for this server (its registration's), to use from"
        " now on: server tokens expire (TASKYARD_SERVER_TOKEN_TTL_S), heartbeats renew them"
    )


class CleanupIn(BaseModel):
    model_config = ConfigDict(strict=True)  # `true` is not a number of minutes

    maxAgeMins: float = Field(5.0, gt=0, le=525_600)


class CleanupOut(BaseModel):
    success: bool
    removedServers: list[str]


class OkOut(BaseModel):
    id: str
    success: bool


def valid_id(value: str) -> bool:
    return bool(_ID_RE.match(value))
