"""What the statistics routes (`/api/stats…`) return. Durations in ms, times in epoch ms."""

from __future__ import annotations

from pydantic import Field

from taskyard.client._models import WireModel


class Percentiles(WireModel):
    p50: float | None = None  # None without data
    p95: float | None = None
    count: int


class StatusCounts(WireModel):
    by_status: dict[str, int]


class ModelQueue(WireModel):
    model: str
    waiting: int
    due: int  # WAITING and not in retry backoff
    in_flight: int
    capacity: int  # slots of the online servers serving the model
    servers: int
    servers_online: int


class Window(WireModel):
    finished: int
    failed: int
    finished_per_min: float
    failed_per_min: float


class Minute(WireModel):
    minute: int
    created: int
    finished: int
    failed: int


class Throughput(WireModel):
    m1: Window = Field(alias="1m")
    m15: Window = Field(alias="15m")
    h1: Window = Field(alias="1h")
    per_minute: list[Minute]  # the last 60 minutes, oldest first


class AttemptOutcomes(WireModel):
    window_s: int
    by_outcome: dict[str, int]  # `ok`, `cancelled`, or the errorCode


class Latency(WireModel):
    window_s: int
    queue_wait_ms: Percentiles
    processing_ms: Percentiles


class ServerCounts(WireModel):
    total: int
    online: int
    offline: int
    busy: int
    by_state: dict[str, int]  # online, offline, ejected, draining, maintenance


class ServerStat(WireModel):
    id: str
    status: str
    in_flight: int
    max_concurrency: int
    attempts: int
    failures: int
    p50_latency_ms: float | None = None


class Unserved(WireModel):
    model: str
    waiting: int


class Stats(WireModel):
    """`GET /api/stats`: the overview."""

    generated_at: int
    tasks: StatusCounts
    queue: list[ModelQueue]
    throughput: Throughput
    attempts: AttemptOutcomes
    latency: Latency
    servers: ServerCounts
    server_stats: list[ServerStat]
    models_without_server: list[Unserved]


class Hour(WireModel):
    hour: int
    created: int
    finished: int
    failed: int
    mean_processing_ms: float | None = None


class Hourly(WireModel):
    """`GET /api/stats/hourly`: the last 24 hours, oldest first."""

    hours: list[Hour]


class RecentAttempt(WireModel):
    task_id: str
    attempt: int
    started_at: int
    ended_at: int | None = None
    error_code: str | None = None
    error: str | None = None


class ServerStats(WireModel):
    """`GET /api/stats/servers/{id}`: one server over a window."""

    server_id: str
    window_s: int
    attempts: int
    successes: int
    failures: dict[str, int]  # errorCode (or `cancelled`) → attempts
    latency_ms: Percentiles
    in_flight: int
    max_concurrency: int
    status: str
    recent_attempts: list[RecentAttempt]  # newest first
    last_error: str | None = None
    last_check_at: str | None = None
    checked_by: str | None = None
