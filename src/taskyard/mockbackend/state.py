"""Mutable runtime state of the mock backend: controls plus what happened."""

from __future__ import annotations

import asyncio
import random
from collections import deque
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

    def __post_init__(self) -> None:
        if not self.server_id:
            raise ValueError("server_id must not be empty")
        if self.delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.callback_retries < 0:
            raise ValueError("callback_retries must be >= 0")
        if self.callback_retry_delay_s < 0:
            raise ValueError("callback_retry_delay_s must be >= 0")


@dataclass(frozen=True, slots=True)
class ReceivedCall:
    """One `POST /predict` as it arrived."""

    task_id: str
    attempt: int
    at: float
    callback_token: str | None = None  # kept so tests can check it never leaks (e.g. to logs)

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "attempt": self.attempt,
            "at": self.at,
            "callback_token": self.callback_token,
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

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "at": self.at, "path": self.path}


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
    shutting_down: bool = False

    received: deque[ReceivedCall] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    received_total: int = 0
    callbacks: deque[CallbackRecord] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    health_checks: deque[HealthCheck] = field(default_factory=lambda: deque(maxlen=MAX_RECORDS))
    results: dict[str, bytes] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    completed: int = 0

    # Set while the corresponding hang switch is off, so waiters just await the event.
    predict_released: asyncio.Event = field(default_factory=_released_event)
    health_released: asyncio.Event = field(default_factory=_released_event)
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
        self.received.clear()
        self.received_total = 0
        self.callbacks.clear()
        self.health_checks.clear()
        self.results.clear()
        # in_flight is live, not a record: requests still running will decrement it.
        self.max_in_flight = self.in_flight
        self.completed = 0
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

    def release_all(self) -> None:
        """Wake every hung request (used on shutdown)."""
        self.predict_released.set()
        self.health_released.set()

    def record_received(
        self, task_id: str, attempt: int, at: float, callback_token: str | None = None
    ) -> None:
        self.received.append(ReceivedCall(task_id, attempt, at, callback_token))
        self.received_total += 1

    def record_health_check(self, node: str | None, at: float, path: str) -> None:
        self.health_checks.append(HealthCheck(node, at, path))

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
        }
