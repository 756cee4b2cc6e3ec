"""The taskyard client SDK: `Client` (blocking) and `AsyncClient` (asyncio).

    from taskyard.client import Client

    with Client("http://127.0.0.1:8787", token) as client:
        task = client.submit("video-upscaler", {"video_url": "https://example.com/in.mp4"})
        done = client.wait(task.id, timeout_s=600)
        print(done.status, done.result)

Depends on httpx and pydantic only. Errors: see `taskyard.client._exceptions`.
"""

from taskyard.client._async import AsyncClient
from taskyard.client._calls import DEFAULT_URL, MAX_WAIT_S
from taskyard.client._exceptions import (
    APIError,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidResponse,
    NotFound,
    RateLimited,
    ServerError,
    TaskyardError,
    TransportError,
    Unauthorized,
    WaitTimeout,
)
from taskyard.client._models import (
    FINAL_STATUSES,
    Attempt,
    BulkResult,
    Endpoints,
    Health,
    HealthDetail,
    Heartbeat,
    Maintenance,
    Node,
    Readiness,
    Registered,
    Server,
    ServerState,
    Submitted,
    Task,
    TasksPage,
    TaskStatus,
    TaskSummary,
    Waiting,
    WireModel,
)
from taskyard.client._options import ServerFields, SubmitOptions, TaskFilters
from taskyard.client._stats_models import (
    AttemptOutcomes,
    Hour,
    Hourly,
    Latency,
    Minute,
    ModelQueue,
    Percentiles,
    RecentAttempt,
    ServerCounts,
    ServerStat,
    ServerStats,
    Stats,
    StatusCounts,
    Throughput,
    Unserved,
    Window,
)
from taskyard.client._sync import Client

__all__ = [
    "DEFAULT_URL",
    "FINAL_STATUSES",
    "MAX_WAIT_S",
    "APIError",
    "AsyncClient",
    "Attempt",
    "AttemptOutcomes",
    "BadRequest",
    "BulkResult",
    "Client",
    "Conflict",
    "Endpoints",
    "Forbidden",
    "Health",
    "HealthDetail",
    "Heartbeat",
    "Hour",
    "Hourly",
    "InvalidResponse",
    "Latency",
    "Maintenance",
    "Minute",
    "ModelQueue",
    "Node",
    "NotFound",
    "Percentiles",
    "RateLimited",
    "Readiness",
    "RecentAttempt",
    "Registered",
    "Server",
    "ServerCounts",
    "ServerError",
    "ServerFields",
    "ServerStat",
    "ServerState",
    "ServerStats",
    "Stats",
    "StatusCounts",
    "SubmitOptions",
    "Submitted",
    "Task",
    "TaskFilters",
    "TaskStatus",
    "TaskSummary",
    "TasksPage",
    "TaskyardError",
    "Throughput",
    "TransportError",
    "Unauthorized",
    "Unserved",
    "WaitTimeout",
    "Waiting",
    "Window",
    "WireModel",
]
