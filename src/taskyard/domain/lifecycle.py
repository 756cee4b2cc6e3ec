"""A task's state changes, as conditional updates. Pure: no I/O, time and randomness passed in.

Each function takes the task as last read and returns a `TaskUpdate` that applies only if the
task is still in that state, so a stale actor's write matches nothing.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from taskyard.domain.changes import UNSET, TaskPatch, evolve_task
from taskyard.domain.dispatch import retry_delay_s
from taskyard.domain.models import AttemptRecord, ErrorCode, SlotHold, Task, TaskStatus
from taskyard.domain.ports import TaskUpdate
from taskyard.domain.tallies import CANCELLED, OK, Event, Tally

RUNNING = (TaskStatus.PROCESSING,)
OPEN = (TaskStatus.WAITING, TaskStatus.PROCESSING)


def start_attempt(
    task: Task, *, server_id: str, node_id: str, callback_url: str, now: int
) -> tuple[TaskUpdate, Task]:
    """WAITING → PROCESSING on `server_id`; returns the update and the task as it will be."""
    number = task.attempt + 1
    patch = TaskPatch(
        status=TaskStatus.PROCESSING,
        server_id=server_id,
        attempt=number,
        node_id=node_id,
        acked=False,
        deadline_at=now + int(task.timeout_s * 1000),
        started_at=task.started_at or now,
        callback_url=callback_url,
        updated_at=now,
        attempts=(*task.attempts, AttemptRecord(number, server_id, now, node_id=node_id)),
    )
    # Waiting since it was created, or since its last attempt ended (backoff included).
    waiting_since = task.attempts[-1].ended_at if task.attempts else None
    waited = Tally(Event.QUEUE_WAIT, now, task.model, ms=now - (waiting_since or task.created_at))
    update = TaskUpdate(
        task.id,
        patch,
        expect_status=(TaskStatus.WAITING,),
        expect_attempt=task.attempt,
        tallies=(waited,),
    )
    return update, evolve_task(task, patch)


def finish(task: Task, *, result: Any, now: int) -> tuple[TaskUpdate, Task]:
    """The running attempt returned a result: FINISHED."""
    patch = TaskPatch(
        status=TaskStatus.FINISHED,
        result=result,
        progress=100.0,
        finished_at=now,
        attempts=_closed(task, now=now),
        deadline_at=None,
        updated_at=now,
    )
    tallies = (
        Tally(Event.FINISHED, now, task.model),
        *_attempt_ended(task, now, OK),
        *_processed(task, now),
    )
    return _on_attempt(task, patch, tallies), evolve_task(task, patch)


def fail(
    task: Task,
    *,
    error: str,
    code: ErrorCode,
    now: int,
    result: Any = None,
    attempt_error: str | None = None,
    attempt_code: ErrorCode | None = None,
) -> tuple[TaskUpdate, Task]:
    """The running attempt failed for good: FAILED, no retry. `attempt_error` and
    `attempt_code` (default `error`, `code`) go into the attempt's record, those onto the task."""
    patch = TaskPatch(
        status=TaskStatus.FAILED,
        error=error,
        error_code=code.value,
        finished_at=now,
        result=UNSET if result is None else result,
        attempts=_closed(task, now=now, error=attempt_error or error, code=attempt_code or code),
        deadline_at=None,
        updated_at=now,
    )
    tallies = (
        Tally(Event.FAILED, now, task.model, code=code.value),
        *_attempt_ended(task, now, (attempt_code or code).value),
        *_processed(task, now),
    )
    return _on_attempt(task, patch, tallies), evolve_task(task, patch)


def retry_or_fail(
    task: Task,
    *,
    error: str,
    code: ErrorCode,
    now: int,
    rng: random.Random,
    retry_base_s: float,
    retry_max_s: float,
) -> tuple[TaskUpdate, Task]:
    """The running attempt failed: back to WAITING after a backoff, or FAILED when out of tries."""
    if task.attempts_left <= 0:
        summary = f"{error} (after {task.attempt} attempts)"
        return fail(task, error=summary, code=code, now=now, attempt_error=error)
    delay = retry_delay_s(task.attempt, base_s=retry_base_s, max_s=retry_max_s, rng=rng)
    patch = _requeued(task, now=now, error=error, code=code, due=now + int(delay * 1000))
    return _on_attempt(task, patch, _attempt_ended(task, now, code.value)), evolve_task(task, patch)


def reject(
    task: Task, *, server_id: str, error: str, now: int, others_serve: bool
) -> tuple[TaskUpdate, Task]:
    """The running attempt was refused (a 4xx that is not 408/409/429) by `server_id`.

    Once is the server's word: the task goes back to the queue at once, never to that server
    again, if another server serves its model and attempts remain. Refused by two different
    servers, it fails as its own fault (`rejected`); refused by the only server there is, it
    fails `backend_rejected`. Each refusal stays in the attempt history.
    """
    refusers = task.rejected_by | {server_id}
    code = ErrorCode.BACKEND_REJECTED
    if len(refusers) >= 2:
        answers = "; ".join(
            f"{a.server_id}: {a.error}"
            for a in task.attempts[task.attempt_base :]
            if a.error_code == ErrorCode.BACKEND_REJECTED
        )
        summary = f"rejected by {len(refusers)} servers ({answers}; {error})"
        return fail(
            task,
            error=summary,
            code=ErrorCode.REJECTED,
            now=now,
            attempt_error=error,
            attempt_code=code,
        )
    if not others_serve or task.attempts_left <= 0:
        return fail(task, error=error, code=code, now=now)
    patch = _requeued(task, now=now, error=error, code=code, due=now)
    return _on_attempt(task, patch, _attempt_ended(task, now, code.value)), evolve_task(task, patch)


def retry_manually(task: Task, *, now: int) -> tuple[TaskUpdate, Task]:
    """FAILED or CANCELLED → WAITING, by its owner or an admin: the same task with a fresh
    attempt budget and queue timeout; its earlier attempts stay in the history."""
    queue_deadline = task.queue_deadline_at
    patch = TaskPatch(
        status=TaskStatus.WAITING,
        attempt_base=task.attempt,
        server_id=None,
        node_id=None,
        acked=False,
        result=None,
        progress=None,
        error=None,
        error_code=None,
        finished_at=None,
        deadline_at=None,
        next_attempt_at=now,
        updated_at=now,
        queue_deadline_at=(
            UNSET if queue_deadline is None else now + (queue_deadline - task.created_at)
        ),
    )
    update = TaskUpdate(
        task.id,
        patch,
        expect_status=(TaskStatus.FAILED, TaskStatus.CANCELLED),
        expect_attempt=task.attempt,
        tallies=(Tally(Event.RETRIED, now, task.model),),
    )
    return update, evolve_task(task, patch)


def hold_slot(task: Task, *, until: int, cancel_at: int | None) -> SlotHold | None:
    """The slot of the task's running attempt, kept counted until `until` (or until its
    backend lets go), with a cancel to send from `cancel_at`; None if nothing runs."""
    if task.status is not TaskStatus.PROCESSING or task.server_id is None:
        return None
    return SlotHold(
        task_id=task.id,
        attempt=task.attempt,
        server_id=task.server_id,
        held_until=until,
        cancel_due_at=cancel_at,
    )


def acknowledge(task: Task, *, progress: float | None, now: int) -> tuple[TaskUpdate, Task]:
    """The backend took the attempt (202) or reported progress; it will call back."""
    patch = TaskPatch(acked=True, updated_at=now, progress=UNSET if progress is None else progress)
    return _on_attempt(task, patch), evolve_task(task, patch)


def expire_in_queue(task: Task, *, now: int) -> TaskUpdate:
    """Still WAITING at its queue deadline: FAILED with no_capacity_deadline."""
    return TaskUpdate(
        task.id,
        TaskPatch(
            status=TaskStatus.FAILED,
            error="no server took the task before its queue deadline",
            error_code=ErrorCode.NO_CAPACITY_DEADLINE.value,
            finished_at=now,
            updated_at=now,
        ),
        expect_status=(TaskStatus.WAITING,),
        expect_attempt=task.attempt,
        tallies=(Tally(Event.FAILED, now, task.model, code=ErrorCode.NO_CAPACITY_DEADLINE.value),),
    )


def cancel(task: Task, *, now: int, grace_ms: int) -> tuple[TaskUpdate, Task]:
    """WAITING or PROCESSING → CANCELLED. A running attempt's slot stays held (and its
    backend is sent a cancel) until the backend lets go, or `grace_ms` past its deadline."""
    running = task.status is TaskStatus.PROCESSING
    patch = TaskPatch(
        status=TaskStatus.CANCELLED,
        finished_at=now,
        updated_at=now,
        deadline_at=None,
        attempts=_closed(task, now=now, error="cancelled") if running else UNSET,
    )
    tallies = [Tally(Event.CANCELLED, now, task.model)]
    if running:
        tallies += _attempt_ended(task, now, CANCELLED)
    update = TaskUpdate(
        task.id,
        patch,
        expect_status=OPEN,
        expect_attempt=task.attempt,
        tallies=tuple(tallies),
        hold=hold_slot(task, until=(task.deadline_at or now) + grace_ms, cancel_at=now),
    )
    return update, evolve_task(task, patch)


def _on_attempt(task: Task, patch: TaskPatch, tallies: tuple[Tally, ...] = ()) -> TaskUpdate:
    """Condition an update on the task still running this very attempt on this server."""
    return TaskUpdate(
        task.id,
        patch,
        expect_status=RUNNING,
        expect_attempt=task.attempt,
        expect_server=task.server_id,
        tallies=tallies,
    )


def _attempt_ended(task: Task, now: int, outcome: str) -> tuple[Tally, ...]:
    """The tally of the running attempt ending now with `outcome`, if one is running."""
    current = task.attempts[-1] if task.attempts else None
    if current is None or current.number != task.attempt or current.ended_at is not None:
        return ()
    ms = now - current.started_at
    return (Tally(Event.ATTEMPT, now, task.model, current.server_id, outcome, ms),)


def _processed(task: Task, now: int) -> tuple[Tally, ...]:
    """The processing time of a task ending now: from its first start, if it started."""
    if task.started_at is None:
        return ()
    return (Tally(Event.PROCESSING, now, task.model, ms=now - task.started_at),)


def _requeued(task: Task, *, now: int, error: str, code: ErrorCode, due: int) -> TaskPatch:
    """Back to WAITING, due again at `due`: the attempt closed, its server let go."""
    return TaskPatch(
        status=TaskStatus.WAITING,
        server_id=None,
        node_id=None,
        deadline_at=None,
        next_attempt_at=due,
        attempts=_closed(task, now=now, error=error, code=code),
        updated_at=now,
    )


def _closed(
    task: Task, *, now: int, error: str | None = None, code: ErrorCode | None = None
) -> tuple[AttemptRecord, ...]:
    """The task's attempt history with its current attempt marked as ended."""
    attempts = list(task.attempts)
    if attempts and attempts[-1].number == task.attempt and attempts[-1].ended_at is None:
        attempts[-1] = replace(
            attempts[-1], ended_at=now, error=error, error_code=code.value if code else None
        )
    return tuple(attempts)
