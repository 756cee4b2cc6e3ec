"""`TaskService`: what changes tasks from outside the dispatcher. Creates (one or a batch, with
the cap on unfinished tasks), cancels, manual retries, the admins' bulk retries and cancels,
and the reports backends send (`PUT /api/task/{id}`). Every change goes through the
dispatcher's `apply`, so that waiters hear of it and the loop wakes."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from enum import StrEnum

from taskyard import errors
from taskyard.domain import lifecycle, reports
from taskyard.domain.clock import Clock
from taskyard.domain.dispatcher import Dispatcher
from taskyard.domain.models import JSON, Task, TaskOptions, TaskStatus
from taskyard.domain.policies import CoordinatorConfig
from taskyard.domain.ports import ClusterBus, Observer, Store, TaskQuery
from taskyard.domain.principal import Principal
from taskyard.domain.reads import TaskReads
from taskyard.domain.reports import Report
from taskyard.domain.tallies import Event, Tally

log = logging.getLogger(__name__)


class BulkAction(StrEnum):
    RETRY = "retry"
    CANCEL = "cancel"


_BULK_STATUSES = {
    BulkAction.RETRY: (TaskStatus.FAILED, TaskStatus.CANCELLED),
    BulkAction.CANCEL: (TaskStatus.WAITING, TaskStatus.PROCESSING),
}


class TaskService:
    def __init__(
        self,
        *,
        store: Store,
        dispatcher: Dispatcher,
        reads: TaskReads,
        bus: ClusterBus,
        observer: Observer,
        config: CoordinatorConfig,
        clock: Clock,
        work_appeared: Callable[[], None],
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.reads = reads
        self.bus = bus
        self.observer = observer
        self.config = config
        self.clock = clock
        self._work_appeared = work_appeared  # wakes the dispatchers here and elsewhere

    async def create_task(
        self, *, owner: str, request: JSON, options: TaskOptions, capped: bool = False
    ) -> Task:
        """Store a new WAITING task durably and wake the dispatcher; never waits for dispatch.
        `capped` (users, not admins): refuse it (QuotaExceeded) when `owner` already has
        `max_unfinished_tasks` WAITING or PROCESSING tasks."""
        (task,) = await self.create_tasks(owner=owner, items=[(request, options)], capped=capped)
        return task

    async def create_tasks(
        self, *, owner: str, items: list[tuple[JSON, TaskOptions]], capped: bool = False
    ) -> list[Task]:
        """Store many new tasks of one owner in one transaction: all of them or, past the cap
        on unfinished tasks, none (QuotaExceeded)."""
        now = self.clock.now_ms()
        tasks = [self._new_task(owner, request, options, now=now) for request, options in items]
        cap = self.config.max_unfinished_tasks if capped else 0
        # The claim beside the inserts (`claim_alongside`) starts as a task of its own, which
        # runs only once this one waits for the inserts' commit: queued behind them, it can
        # run in their transaction.
        self.dispatcher.claim_alongside()
        await self.store.add_tasks(tasks, unfinished_cap=cap)
        self.observer.tallied([Tally(Event.CREATED, now, task.model) for task in tasks])
        self.dispatcher.wake()
        self.bus.work()
        return tasks

    def _new_task(self, owner: str, request: JSON, options: TaskOptions, *, now: int) -> Task:
        return Task(
            id=str(uuid.uuid4()),
            owner=owner,
            model=str(request["model"]),
            request=request,
            status=TaskStatus.WAITING,
            priority=options.priority,
            attempt=0,
            max_attempts=options.max_attempts or self.config.max_attempts,
            timeout_s=options.timeout_s or self.config.task_timeout_s,
            created_at=now,
            updated_at=now,
            queue_deadline_at=(
                now + int(options.queue_timeout_s * 1000) if options.queue_timeout_s else None
            ),
        )

    async def cancel_task(self, task_id: str, *, principal: Principal) -> Task:
        """WAITING or PROCESSING → CANCELLED; a running attempt's backend is sent a cancel
        (durably: see `SlotHold`) and its slot stays counted until the backend lets go."""
        task = await self.reads.get_task(task_id, principal=principal)
        if task.status.is_final:
            raise errors.TaskFinal(f"Task {task_id} is already {task.status}")
        now = self.clock.now_ms()
        update, cancelled = lifecycle.cancel(task, now=now, grace_ms=self._grace_ms)
        if not (await self.dispatcher.apply([update]))[0]:
            raise errors.Conflict(f"Task {task_id} changed meanwhile; read it and try again")
        return cancelled

    async def retry_task(self, task_id: str, *, principal: Principal) -> Task:
        """FAILED or CANCELLED → WAITING: same id, a fresh attempt budget, history kept."""
        task = await self.reads.get_task(task_id, principal=principal)
        if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            raise errors.Conflict(
                f"Task {task_id} is {task.status}: only a FAILED or CANCELLED task is retried"
            )
        update, retried = lifecycle.retry_manually(task, now=self.clock.now_ms())
        if not (await self.dispatcher.apply([update]))[0]:
            raise errors.Conflict(f"Task {task_id} changed meanwhile; read it and try again")
        self.bus.work()
        log.info("task %s retried by %s", task_id, principal.sub, extra={"task_id": task_id})
        return retried

    async def bulk_change(
        self, action: BulkAction, query: TaskQuery, *, principal: Principal
    ) -> tuple[list[str], bool]:
        """Retry or cancel up to `query.limit` tasks matching a search (admins only): the ids
        changed, and whether more matching tasks remain. Only tasks the action applies to are
        searched (FAILED/CANCELLED to retry, WAITING/PROCESSING to cancel)."""
        if not principal.is_admin:
            raise errors.Forbidden("Only an admin may retry or cancel tasks in bulk")
        applicable = _BULK_STATUSES[action]
        statuses = [s for s in query.statuses or applicable if s in applicable]
        if not statuses:
            return [], False
        limit = query.limit
        found = await self.store.search_tasks(
            dataclasses.replace(query, statuses=tuple(statuses), limit=limit + 1)
        )
        now = self.clock.now_ms()
        page = found[:limit]
        if action is BulkAction.RETRY:
            updates = [lifecycle.retry_manually(t, now=now)[0] for t in page]
        else:
            updates = [lifecycle.cancel(t, now=now, grace_ms=self._grace_ms)[0] for t in page]
        won = await self.dispatcher.apply(updates)
        changed = [t.id for t, ok in zip(page, won, strict=True) if ok]
        if changed:
            self.bus.work()
            log.info(
                "%d task(s) %s in bulk by %s",
                len(changed),
                "retried" if action is BulkAction.RETRY else "cancelled",
                principal.sub,
            )
        return changed, len(found) > limit

    @property
    def _grace_ms(self) -> int:
        return int(self.dispatcher.policy.slot_grace_s * 1000)

    async def report(self, task_id: str, report: Report, *, principal: Principal) -> Task:
        """Record a backend's progress or result (PUT /api/task/{id})."""
        task = await self.store.get_task(task_id)
        if task is None:
            raise errors.TaskNotFound(task_id)
        expect_server, expect_attempt = reports.reporter_claim(
            principal, task_id, report, allow_unbound=self.config.allow_unbound_service_tokens
        )
        if report.status.is_final and expect_server is not None:
            # A final report is the backend letting go of that attempt: if it was cancelled
            # or timed out here, its slot stops being held (the report itself may be stale).
            released = await self.store.release_holds(
                task_id, attempt=expect_attempt, server_id=expect_server
            )
            if released:
                self._work_appeared()
        if task.status.is_final:
            raise errors.TaskFinal(f"Task {task_id} is already {task.status}; report ignored")
        if not principal.is_admin:
            if task.status is not TaskStatus.PROCESSING or task.server_id != expect_server:
                raise errors.StaleReport(
                    f"Server {expect_server} does not hold task {task_id}; report ignored"
                )
            if expect_attempt is not None and expect_attempt != task.attempt:
                raise errors.StaleReport(
                    f"Attempt {expect_attempt} of task {task_id} was superseded; report ignored"
                )
        update, updated = reports.apply_report(task, report, now=self.clock.now_ms())
        if not (await self.dispatcher.apply([update], wake=updated.status.is_final))[0]:
            raise errors.StaleReport(f"Task {task_id} changed meanwhile; report ignored")
        return updated
