"""The statistics an operator reads (`/api/stats…`), from the database only.

Counts by status and queue depths come from the tasks table; throughput, attempt outcomes and
latency percentiles from the per-minute rollups of the tallies (domain/tallies.py). Nothing is
kept in a process, so every node gives the same answer and a restart forgets nothing.

Windows are whole minutes: "the last 15 min" is the current minute so far plus the 14 before
it, and a rate divides by the window's length.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from taskyard.domain.models import AttemptRecord, Server, ServerStatus, TaskStatus
from taskyard.domain.ports import ModelQueue, Store, TaskQuery
from taskyard.domain.tallies import (
    HOUR_MS,
    MINUTE_MS,
    OK,
    Event,
    TallySum,
    histogram,
    percentile,
)
from taskyard.domain.waiting import unserved_models

THROUGHPUT_WINDOWS = {"1m": 1, "15m": 15, "1h": 60}  # minutes
LATENCY_WINDOW_MIN = 15
ATTEMPTS_WINDOW_MIN = 60
HOURS = 24
RETENTION_MS = (HOURS + 1) * HOUR_MS  # rollups older than this are pruned
RECENT_ATTEMPTS = 50  # a server's recent attempts, at most
RECENT_OWN_TASKS = 20  # ...found among the newest tasks it holds or ended...
RECENT_ANY_TASKS = 200  # ...and among the newest tasks of any server (see recent_attempts)


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float | None
    p95: float | None
    count: int

    @classmethod
    def of(cls, sums: Sequence[TallySum]) -> Percentiles:
        buckets = histogram(sums)
        return cls(percentile(buckets, 0.5), percentile(buckets, 0.95), sum(buckets.values()))


@dataclass(frozen=True, slots=True)
class ModelLoad:
    model: str
    waiting: int = 0
    due: int = 0
    in_flight: int = 0
    capacity: int = 0  # slots of the online servers that serve it
    servers: int = 0  # servers that serve it
    servers_online: int = 0


@dataclass(frozen=True, slots=True)
class Throughput:
    minutes: int
    finished: int
    failed: int

    @property
    def finished_per_min(self) -> float:
        return round(self.finished / self.minutes, 2)

    @property
    def failed_per_min(self) -> float:
        return round(self.failed / self.minutes, 2)


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    minute: int
    created: int = 0
    finished: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class ServerSummary:
    server: Server
    attempts: int
    failures: int
    latency: Percentiles


@dataclass(frozen=True, slots=True)
class Overview:
    generated_at: int
    by_status: dict[str, int]
    models: list[ModelLoad]
    throughput: dict[str, Throughput]
    per_minute: list[MinuteCounts]
    attempt_outcomes: dict[str, int]
    queue_wait: Percentiles
    processing: Percentiles
    servers: list[ServerSummary]
    unserved: dict[str, int]  # model → WAITING tasks, for models no server serves


@dataclass(frozen=True, slots=True)
class HourCounts:
    hour: int
    created: int = 0
    finished: int = 0
    failed: int = 0
    mean_processing_ms: float | None = None


@dataclass(frozen=True, slots=True)
class ServerStats:
    server: Server
    window_min: int
    attempts: int
    successes: int
    failures: dict[str, int] = field(default_factory=dict)
    latency: Percentiles = Percentiles(None, None, 0)


@dataclass(frozen=True, slots=True)
class RecentAttempt:
    task_id: str
    attempt: AttemptRecord


class Stats:
    """Reads the statistics from a `Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def overview(self, *, now: int) -> Overview:
        hour_ago = _minute(now) - (60 - 1) * MINUTE_MS
        counts = await self.store.tally_sums(
            since=hour_ago,
            events=(Event.CREATED, Event.FINISHED, Event.FAILED),
            group_by=("period", "event"),
        )
        attempts = await self.store.tally_sums(
            since=_minute(now) - (ATTEMPTS_WINDOW_MIN - 1) * MINUTE_MS,
            events=(Event.ATTEMPT,),
            group_by=("server_id", "code", "bucket"),
        )
        durations = await self.store.tally_sums(
            since=_minute(now) - (LATENCY_WINDOW_MIN - 1) * MINUTE_MS,
            events=(Event.QUEUE_WAIT, Event.PROCESSING),
            group_by=("event", "bucket"),
        )
        servers = await self.store.list_servers()
        queues = await self.store.queue_by_model(now=now)
        by_status = {s.value: 0 for s in TaskStatus} | await self.store.count_tasks()
        return Overview(
            generated_at=now,
            by_status=by_status,
            models=_model_loads(queues, await self.store.processing_by_model(), servers),
            throughput=_throughput(counts, now),
            per_minute=_per_minute(counts, now),
            attempt_outcomes=_outcomes(attempts),
            queue_wait=Percentiles.of([d for d in durations if d.event == Event.QUEUE_WAIT]),
            processing=Percentiles.of([d for d in durations if d.event == Event.PROCESSING]),
            servers=[_server_summary(s, attempts) for s in servers],
            unserved={q.model: q.waiting for q in queues if unserved_models([q.model], servers)},
        )

    async def hourly(self, *, now: int) -> list[HourCounts]:
        """The last 24 hours, oldest first, the current one included."""
        first = _hour(now) - (HOURS - 1) * HOUR_MS
        sums = await self.store.tally_sums(
            since=first,
            events=(Event.CREATED, Event.FINISHED, Event.FAILED, Event.PROCESSING),
            group_by=("period", "event"),
            period_ms=HOUR_MS,
        )
        by_hour: dict[int, dict[str, TallySum]] = defaultdict(dict)
        for item in sums:
            by_hour[item.period][item.event] = item
        hours = []
        for hour in range(first, _hour(now) + 1, HOUR_MS):
            got = by_hour.get(hour, {})
            processed = got.get(Event.PROCESSING)
            hours.append(
                HourCounts(
                    hour=hour,
                    created=_count(got, Event.CREATED),
                    finished=_count(got, Event.FINISHED),
                    failed=_count(got, Event.FAILED),
                    mean_processing_ms=(
                        round(processed.total_ms / processed.count, 1) if processed else None
                    ),
                )
            )
        return hours

    async def server(self, server: Server, *, now: int, window_min: int) -> ServerStats:
        sums = await self.store.tally_sums(
            since=_minute(now) - (window_min - 1) * MINUTE_MS,
            events=(Event.ATTEMPT,),
            group_by=("code", "bucket"),
            server_id=server.id,
        )
        failures: dict[str, int] = defaultdict(int)
        for item in sums:
            if item.code != OK:
                failures[item.code] += item.count
        return ServerStats(
            server=server,
            window_min=window_min,
            attempts=sum(item.count for item in sums),
            successes=sum(item.count for item in sums if item.code == OK),
            failures=dict(sorted(failures.items())),
            latency=Percentiles.of([item for item in sums if item.code == OK]),
        )

    async def recent_attempts(
        self, server_id: str, *, limit: int = RECENT_ATTEMPTS
    ) -> list[RecentAttempt]:
        """The server's newest attempts, newest first. A task's `server_id` names only the
        server of its last attempt, and a retry clears it: a task that failed here and then
        waits in its backoff, or ran again elsewhere, no longer names this server. So its
        attempts are looked for among the newest tasks that name it and among the newest
        tasks of any server."""
        own = await self.store.search_tasks(TaskQuery(limit=RECENT_OWN_TASKS, server_id=server_id))
        newest = await self.store.search_tasks(TaskQuery(limit=RECENT_ANY_TASKS))
        tasks = {task.id: task for task in (*own, *newest)}
        found = [
            RecentAttempt(task.id, attempt)
            for task in tasks.values()
            for attempt in task.attempts
            if attempt.server_id == server_id
        ]
        found.sort(key=lambda r: (r.attempt.started_at, r.task_id, r.attempt.number), reverse=True)
        return found[:limit]


def _minute(ms: int) -> int:
    return ms - ms % MINUTE_MS


def _hour(ms: int) -> int:
    return ms - ms % HOUR_MS


def _count(got: dict[str, TallySum], event: Event) -> int:
    found = got.get(event)
    return found.count if found else 0


def _model_loads(
    queues: Sequence[ModelQueue], processing: dict[str, int], servers: Sequence[Server]
) -> list[ModelLoad]:
    """One entry per model that has tasks waiting or running, or a server that names it."""
    waiting = {q.model: q for q in queues}
    models = set(waiting) | set(processing) | {m for s in servers for m in s.models}
    loads = []
    for model in sorted(models):
        serving = [s for s in servers if s.serves(model)]
        online = [s for s in serving if s.status is ServerStatus.ONLINE]
        queue = waiting.get(model)
        loads.append(
            ModelLoad(
                model=model,
                waiting=queue.waiting if queue else 0,
                due=queue.due if queue else 0,
                in_flight=processing.get(model, 0),
                capacity=sum(s.max_concurrency for s in online),
                servers=len(serving),
                servers_online=len(online),
            )
        )
    return loads


def _throughput(counts: Sequence[TallySum], now: int) -> dict[str, Throughput]:
    windows = {}
    for name, minutes in THROUGHPUT_WINDOWS.items():
        since = _minute(now) - (minutes - 1) * MINUTE_MS
        inside = [c for c in counts if c.period >= since]
        windows[name] = Throughput(
            minutes=minutes,
            finished=sum(c.count for c in inside if c.event == Event.FINISHED),
            failed=sum(c.count for c in inside if c.event == Event.FAILED),
        )
    return windows


def _per_minute(counts: Sequence[TallySum], now: int) -> list[MinuteCounts]:
    by_minute: dict[int, dict[str, int]] = defaultdict(dict)
    for c in counts:
        by_minute[c.period][c.event] = c.count
    first = _minute(now) - 59 * MINUTE_MS
    return [
        MinuteCounts(
            minute=minute,
            created=by_minute[minute].get(Event.CREATED, 0),
            finished=by_minute[minute].get(Event.FINISHED, 0),
            failed=by_minute[minute].get(Event.FAILED, 0),
        )
        for minute in range(first, _minute(now) + 1, MINUTE_MS)
    ]


def _outcomes(attempts: Sequence[TallySum]) -> dict[str, int]:
    outcomes: dict[str, int] = defaultdict(int)
    for item in attempts:
        outcomes[item.code] += item.count
    return dict(sorted(outcomes.items()))


def _server_summary(server: Server, attempts: Sequence[TallySum]) -> ServerSummary:
    mine = [a for a in attempts if a.server_id == server.id]
    return ServerSummary(
        server=server,
        attempts=sum(a.count for a in mine),
        failures=sum(a.count for a in mine if a.code != OK),
        latency=Percentiles.of([a for a in mine if a.code == OK]),
    )
