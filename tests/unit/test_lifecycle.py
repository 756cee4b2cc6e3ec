"""Task state changes as conditional updates (pure functions)."""

from __future__ import annotations

import random
from typing import Any

from taskyard.domain import lifecycle
from taskyard.domain.models import ErrorCode, Task, TaskStatus
from tests.unit.factories import make_task


def _running(**overrides: Any) -> Task:
    """A task as it is once its next attempt started on s1 at t = 5 s."""
    _, task = lifecycle.start_attempt(
        make_task(**overrides), server_id="s1", node_id="n1", callback_url="http://cb", now=5_000
    )
    return task


def test_start_attempt_claims_a_waiting_task() -> None:
    """Starting an attempt is conditional on WAITING and the attempt count read."""
    update, task = lifecycle.start_attempt(
        make_task(attempt=1), server_id="s1", node_id="n1", callback_url="http://cb", now=5_000
    )
    assert update.expect_status == (TaskStatus.WAITING,)
    assert update.expect_attempt == 1
    assert task.status is TaskStatus.PROCESSING
    assert task.attempt == 2
    assert task.deadline_at == 5_000 + 10_000
    assert task.attempts[-1].server_id == "s1"
    assert task.attempts[-1].number == 2


def test_finish_is_conditional_on_the_running_attempt() -> None:
    """A result applies only to the attempt and server that hold the task."""
    running = _running()
    update, done = lifecycle.finish(running, result={"ok": 1}, now=6_000)
    assert update.expect_status == (TaskStatus.PROCESSING,)
    assert update.expect_attempt == 1
    assert update.expect_server == "s1"
    assert done.status is TaskStatus.FINISHED
    assert done.finished_at == 6_000
    assert done.attempts[-1].ended_at == 6_000
    assert done.deadline_at is None


def test_retry_goes_back_to_waiting_with_backoff() -> None:
    """A failed attempt with tries left returns to WAITING, due after the backoff."""
    running = _running()
    _, retried = lifecycle.retry_or_fail(
        running,
        error="boom",
        code=ErrorCode.BACKEND_ERROR,
        now=6_000,
        rng=random.Random(0),
        retry_base_s=1.0,
        retry_max_s=10.0,
    )
    assert retried.status is TaskStatus.WAITING
    assert retried.server_id is None
    assert 6_500 <= retried.next_attempt_at <= 7_000
    assert retried.attempts[-1].error == "boom"
    assert retried.attempts[-1].error_code == "backend_error"


def test_last_attempt_failure_fails_the_task() -> None:
    """When the attempt limit is reached the task is FAILED with the error code."""
    running = _running(attempt=2, max_attempts=3)
    _, failed = lifecycle.retry_or_fail(
        running,
        error="late",
        code=ErrorCode.TIMEOUT,
        now=6_000,
        rng=random.Random(0),
        retry_base_s=1.0,
        retry_max_s=10.0,
    )
    assert failed.status is TaskStatus.FAILED
    assert failed.error_code == "timeout"
    assert failed.error is not None and "3 attempts" in failed.error


def test_queue_deadline_only_applies_to_waiting() -> None:
    """Expiring in the queue is conditional on the task still WAITING at that attempt."""
    update = lifecycle.expire_in_queue(make_task(attempt=1), now=9_000)
    assert update.expect_status == (TaskStatus.WAITING,)
    assert update.patch.error_code == "no_capacity_deadline"


def test_cancel_a_running_task_closes_its_attempt() -> None:
    """Cancelling a PROCESSING task ends its current attempt record."""
    running = _running()
    _, cancelled = lifecycle.cancel(running, now=7_000, grace_ms=0)
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.attempts[-1].ended_at == 7_000
