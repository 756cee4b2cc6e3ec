"""Mutable runtime state of the mock backend: controls plus what happened."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Records are capped so a long benchmark cannot grow the process without bound.
MAX_RECORDS = 100_000


@dataclass(frozen=True, slots=True)
class MockConfig:
    """Start-up configuration; `POST /control/reset` returns the controls to these values."""

    server_id: str
    delay_ms: float = 0
    error_rate: float = 0.0
    force_async: bool = False
    callback_retries: int = 5
    callback_retry_delay_s: float = 0.5
    seed: int | None = None
    api_key: str | None = None  # when set, /predict, /health and /cancel want `Bearer <key>`

    def __post_init__(self) -> None:
        if not self.server_id:
            raise ValueError("server_id must not be empty")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty (leave it unset for no key)")
        if self.delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.callback_retries < 0:
            raise ValueError("callback_retries must be >= 0")
        if self.callback_retry_delay_s < 0:
            raise ValueError("callback_retry_delay_s must be >= 0")


@dataclass(frozen=True, slots=True)
class AuthSeen:
    """What a call carried in `Authorization`, as booleans: the key itself is never recorded."""

    header: bool = False  # an Authorization header was sent
    matched: bool = False  # it was `Bearer <the key in force>` (never true when no key is set)

    def to_json(self) -> dict[str, Any]:
        return {"auth_header": self.header, "auth_matched": self.matched}


@dataclass(frozen=True, slots=True)
class ReceivedCall:
    """One `POST /predict` as it arrived (refused ones too: see `auth_matched`)."""

    task_id: str
    attempt: int
    at: float
    callback_token: str | None = None  # kept so tests can check it never leaks (e.g. to logs)
    auth: AuthSeen = AuthSeen()

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "attempt": self.attempt,
            "at": self.at,
            "callback_token": self.callback_token,
            **self.auth.to_json(),
        }


@dataclass(frozen=True, slots=True)
class CallbackRecord:
    """Final outcome of delivering one result callback."""

    task_id: str
    attempt: int
    url: str
    status: int | None
    error: str | None
    tries: int
    at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "attempt": self.attempt,
            "url": self.url,
            "status": self.status,
            "error": self.error,
            "tries": self.tries,
            "at": self.at,
        }


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One `GET /health` as it arrived: which coordinator node sent it (if it said), when, and
    the path with its query string (so several registrations of one backend can be told apart)."""

    node: str | None
    at: float
    path: str
    auth: AuthSeen = AuthSeen()

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "at": self.at, "path": self.path, **self.auth.to_json()}


@dataclass(slots=True)
class CancelRecord:
    """One `POST /cancel`. Recorded when it arrives and completed when it is answered, so a
    hanging cancel shows up with `status` null."""

    task_id: str
    attempt: int
    at: float
    auth: AuthSeen
    matched: bool  # an attempt of that task was running here (when answered, or on arrival)
    stopped: bool = False  # this cancel stopped it
    status: int | None = None  # the HTTP status answered; null while unanswered

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "attempt": self.attempt,
            "at": self.at,
            "matched": self.matched,
            "stopped": self.stopped,
            "status": self.status,
            **self.auth.to_json(),
        }


@dataclass(eq=False, slots=True)
class RunningAttempt:
    """A predict the mock has not let go of yet: from its arrival until its answer is written,
    its callback is delivered or given up, or a cancel stops it."""

    task_id: str
    attempt: int
    # Sync predicts: whether the client is still connected. None once in the background.
    is_connected: Callable[[], bool] | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)  # set by a cancel
    holds_slot: bool = True  # counted in `in_flight` (not while a callback PUT is on the wire)


def _released_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass(slots=True)
class MockState:
    """Runtime controls (changed through `/control`) and records of what was received."""

    config: MockConfig
    delay_ms: float = 0
    error_rate: float = 0.0
    force_async: bool = False
    unhealthy: bool = False
    hang: bool = False
    health_hang: bool = False
    fail_status: int | None = None
    crash_next: bool = False
    api_key: str | None = None
    cancel_fail_status: int | None = None
    cancel_hang: bool = False
    shutting_down: bool = False

    received: deque[ReceivedCall] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    received_total: int = 0
    callbacks: deque[CallbackRecord] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    health_checks: deque[HealthCheck] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    cancels: deque[CancelRecord] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    results: dict[str, bytes] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    completed: int = 0
    unauthorized: int = 0
    callback_retries: int = 0  # callback tries that failed and are to be tried again
    # Live, like in_flight: what a cancel can stop, by (task_id, attempt).
    running: dict[tuple[str, int], list[RunningAttempt]] = field(default_factory=dict)

    # Set while the corresponding hang switch is off, so waiters just await the event.
    predict_released: asyncio.Event = field(default_factory=_released_event)
    health_released: asyncio.Event = field(default_factory=_released_event)
    cancel_released: asyncio.Event = field(default_factory=_released_event)
    # Set once on shutdown, so bounded holds end early too.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_config(cls, config: MockConfig) -> MockState:
        state = cls(config=config)
        state.reset()
        return state

    def reset(self) -> None:
        """Clear all records and put the controls back to the config values."""
        self.delay_ms = self.config.delay_ms
        self.error_rate = self.config.error_rate
        self.force_async = self.config.force_async
        self.unhealthy = False
        self.set_hang(False)
        self.set_health_hang(False)
        self.fail_status = None
        self.crash_next = False
        self.api_key = self.config.api_key
        self.cancel_fail_status = None
        self.set_cancel_hang(False)
        self.received.clear()
        self.received_total = 0
        self.callbacks.clear()
        self.health_checks.clear()
        self.cancels.clear()
        self.results.clear()
        # in_flight is live, not a record: requests still running will decrement it.
        self.max_in_flight = self.in_flight
        self.completed = 0
        self.unauthorized = 0
        self.callback_retries = 0
        self.rng.seed(self.config.seed)

    def set_hang(self, value: bool) -> None:
        self.hang = value
        if value:
            self.predict_released.clear()
        else:
            self.predict_released.set()

    def set_health_hang(self, value: bool) -> None:
        self.health_hang = value
        if value:
            self.health_released.clear()
        else:
            self.health_released.set()

    def set_cancel_hang(self, value: bool) -> None:
        self.cancel_hang = value
        if value:
            self.cancel_released.clear()
        else:
            self.cancel_released.set()

    def release_all(self) -> None:
        """Wake every hung request (used on shutdown)."""
        self.stopping.set()
        self.predict_released.set()
        self.health_released.set()
        self.cancel_released.set()

    def record_received(
        self,
        task_id: str,
        attempt: int,
        at: float,
        callback_token: str | None = None,
        auth: AuthSeen = AuthSeen(),
    ) -> None:
        self.received.append(ReceivedCall(task_id, attempt, at, callback_token, auth))
        self.received_total += 1

    def record_health_check(
        self, node: str | None, at: float, path: str, auth: AuthSeen = AuthSeen()
    ) -> None:
        self.health_checks.append(HealthCheck(node, at, path, auth))

    # ---- Running attempts and their in_flight slots ----

    def begin(
        self, task_id: str, attempt: int, *, is_connected: Callable[[], bool] | None = None
    ) -> RunningAttempt:
        """Count a predict in flight from the moment it arrives; `finish` lets go of it."""
        run = RunningAttempt(task_id, attempt, is_connected)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.running.setdefault((task_id, attempt), []).append(run)
        return run

    def free_slot(self, run: RunningAttempt) -> None:
        if run.holds_slot:
            run.holds_slot = False
            self.in_flight -= 1

    def callback_failed(self, run: RunningAttempt) -> None:
        """A callback try of `run` failed and waits to be retried: count it, and hold the
        slot again meanwhile."""
        self.callback_retries += 1
        self.take_slot(run)

    def take_slot(self, run: RunningAttempt) -> None:
        """Count `run` in flight again (a callback that failed waits to be retried)."""
        if not run.holds_slot and not run.stopped.is_set():
            run.holds_slot = True
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def finish(self, run: RunningAttempt) -> None:
        """Let go of `run`; safe to call again (e.g. after a cancel stopped it)."""
        self.free_slot(run)
        key = (run.task_id, run.attempt)
        runs = self.running.get(key, [])
        if run in runs:
            runs.remove(run)
        if not runs:
            self.running.pop(key, None)

    def is_running(self, task_id: str, attempt: int) -> bool:
        return bool(self.running.get((task_id, attempt)))

    def stop(self, task_id: str, attempt: int) -> bool:
        """Stop every running copy of that attempt, freeing its slot now; False if none ran."""
        runs = self.running.pop((task_id, attempt), [])
        for run in runs:
            run.stopped.set()
            self.free_slot(run)
        return bool(runs)

    def abandoned(self) -> int:
        """Sync predicts still held here whose client has hung up."""
        return sum(
            1
            for runs in self.running.values()
            for run in runs
            if run.is_connected is not None and not run.is_connected()
        )

    def store_result(self, task_id: str, body: bytes) -> None:
        # Evict the oldest result (dicts keep insertion order) to respect the cap.
        if task_id not in self.results and len(self.results) >= MAX_RECORDS:
            del self.results[next(iter(self.results))]
        self.results[task_id] = body
        self.completed += 1

    def controls(self) -> dict[str, Any]:
        return {
            "delay_ms": self.delay_ms,
            "error_rate": self.error_rate,
            "async": self.force_async,
            "unhealthy": self.unhealthy,
            "hang": self.hang,
            "health_hang": self.health_hang,
            "fail_status": self.fail_status,
            "crash_next": self.crash_next,
            "cancel_fail_status": self.cancel_fail_status,
            "cancel_hang": self.cancel_hang,
            # Set with `api_key`; shown as a boolean so open endpoints never reveal the key.
            "api_key_set": self.api_key is not None,
        }
