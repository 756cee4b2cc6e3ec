"""Wire models of the statistics routes (`/api/stats…`). Durations in ms, times in epoch ms."""

from __future__ import annotations

from pydantic import BaseModel, Field


class PercentilesOut(BaseModel):
    p50: float | None = Field(description="null without data; within ~10% (log buckets)")
    p95: float | None
    count: int


class StatusCounts(BaseModel):
    byStatus: dict[str, int] = Field(description="every status, zero included")


class ModelQueueOut(BaseModel):
    model: str
    waiting: int
    due: int = Field(description="WAITING and not in retry backoff")
    inFlight: int
    capacity: int = Field(description="slots of the online servers that serve the model")
    servers: int
    serversOnline: int


class WindowOut(BaseModel):
    finished: int
    failed: int
    finishedPerMin: float
    failedPerMin: float


class MinuteOut(BaseModel):
    minute: int
    created: int
    finished: int
    failed: int


class ThroughputOut(BaseModel):
    m1: WindowOut = Field(alias="1m")
    m15: WindowOut = Field(alias="15m")
    h1: WindowOut = Field(alias="1h")
    perMinute: list[MinuteOut] = Field(description="the last 60 minutes, oldest first")


class AttemptsOut(BaseModel):
    windowS: int
    byOutcome: dict[str, int] = Field(description="`ok`, `cancelled`, or the errorCode")


class LatencyOut(BaseModel):
    windowS: int
    queueWaitMs: PercentilesOut
    processingMs: PercentilesOut


class ServerCountsOut(BaseModel):
    total: int
    online: int
    offline: int
    busy: int = Field(description="online with no free slot")
    byState: dict[str, int] = Field(
        description="servers per state: online, offline, ejected, draining, maintenance"
    )


class ServerStatOut(BaseModel):
    id: str
    status: str
    inFlight: int
    maxConcurrency: int
    attempts: int
    failures: int
    p50LatencyMs: float | None


class UnservedOut(BaseModel):
    model: str
    waiting: int


class StatsOut(BaseModel):
    generatedAt: int
    tasks: StatusCounts
    queue: list[ModelQueueOut]
    throughput: ThroughputOut
    attempts: AttemptsOut
    latency: LatencyOut
    servers: ServerCountsOut
    serverStats: list[ServerStatOut] = Field(description="attempts in the last hour")
    modelsWithoutServer: list[UnservedOut] = Field(
        description="models with WAITING tasks that no registered server serves"
    )


class HourOut(BaseModel):
    hour: int
    created: int
    finished: int
    failed: int
    meanProcessingMs: float | None


class HourlyOut(BaseModel):
    hours: list[HourOut] = Field(description="the last 24 hours, oldest first")


class RecentAttemptOut(BaseModel):
    taskId: str
    attempt: int
    startedAt: int
    endedAt: int | None
    errorCode: str | None
    error: str | None


class ServerStatsOut(BaseModel):
    serverId: str
    windowS: int
    attempts: int
    successes: int
    failures: dict[str, int] = Field(description="errorCode (or `cancelled`) → attempts")
    latencyMs: PercentilesOut = Field(description="of the attempts that returned a result")
    inFlight: int
    maxConcurrency: int
    status: str
    lastError: str | None
    lastCheckAt: str | None
    checkedBy: str | None
    recentAttempts: list[RecentAttemptOut] = Field(description="newest first")
