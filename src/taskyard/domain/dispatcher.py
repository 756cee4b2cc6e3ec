"""The dispatcher: moves WAITING tasks onto servers, sends them, and records what came back.

One loop per coordinator. Each pass reads the servers with free slots and a batch of due tasks
(two queries, whatever the batch size), assigns them in memory, claims them with conditional
updates in one transaction, then sends each claimed attempt concurrently. It also sweeps
attempts past their deadline. It sleeps until woken (a new task, a freed slot, a server coming
online) or until the poll interval passes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from typing import Any

from taskyard.domain import dispatch, lifecycle
from taskyard.domain.accounting import ServerAccounts
from taskyard.domain.cancels import CancelSender
from taskyard.domain.changes import UNSET
from taskyard.domain.clock import Clock
from taskyard.domain.events import TaskEvents
from taskyard.domain.loops import FailureLog, Wakeable
from taskyard.domain.models import (
    FINAL_STATUSES,
    ErrorCode,
    Server,
    SlotHold,
    Task,
    TaskStatus,
)
from taskyard.domain.policies import DispatchPolicy
from taskyard.domain.ports import (
    BackendClient,
    PredictReply,
    ReplyKind,
    Store,
    TaskUpdate,
    TokenIssuer,
    WaitingReader,
)

log = logging.getLogger(__name__)

CALLBACK_TOKEN_GRACE_S = 60.0  # a callback token outlives its attempt's deadline by this much
RECORD_RETRY_BASE_S = 0.1  # a reply that failed to be recorded is tried again after this,
RECORD_RETRY_MAX_S = 2.0  # doubling up to this, until the attempt's deadline


class Dispatcher(Wakeable):
    def __init__(
        self,
        *,
        store: Store,
        client: BackendClient,
        tokens: TokenIssuer,
        policy: DispatchPolicy,
        clock: Clock,
        events: TaskEvents | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(clock)
        self.store = store
        self.client = client
        self.tokens = tokens
        self.policy = policy
        self.events = events or TaskEvents()
        self.rng = rng or random.Random()
        self._sending: set[asyncio.Task[None]] = set()
        self._hurry = asyncio.Event()  # set by `hurry`: `close` waits no longer
        self._last_sweep = 0.0
        self._next_retry_at: int | None = None  # earliest backoff this node set, epoch ms
        self._record_failures = FailureLog("recording backend replies", clock=clock, logger=log)
        self._cancels_due = False  # a cancel was recorded here: send it without waiting
        # The last claim left free slots (see claim_alongside); until a claim says, assume so.
        self._slots_to_spare = True
        self._claiming_alongside = False
        self._claim_again = False  # a create came while a claim beside creates ran
        self._running = False
        self.accounts = ServerAccounts(store=store, policy=policy.ejection, clock=clock)
        self.cancels = CancelSender(
            store=store, client=client, policy=policy, spawn=self._spawn, freed=self.wake
        )

    async def run(self) -> None:
        self._running = True  # passes driven by hand (tests) get no claims beside creates
        await self.repeat("dispatcher", self.step)

    async def close(self, *, grace_s: float = 5.0) -> None:
        """Stop taking tasks; give sends in flight `grace_s` to finish, then cancel them.

        A cancelled send loses nothing: its task stays PROCESSING in the database until a
        callback, the deadline sweep or the lost-node recovery moves it on.
        """
        self.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        # A second stop signal (`hurry`) may come while this waits: it ends the wait.
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            while self._sending and not hurry.done() and (left := deadline - loop.time()) > 0:
                await asyncio.wait(
                    {*self._sending, hurry}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            hurry.cancel()
        pending = list(self._sending)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def hurry(self) -> None:
        """Cut the grace of `close` short, now or when it comes: sends still in flight are
        cancelled (their tasks are recovered as after a crash)."""
        self._hurry.set()

    async def sends_recorded(self) -> None:
        """Wait until every attempt sent so far has its reply recorded: the end of a pass
        driven by hand (`dispatch_due`, `sweep`) with no loop running, as tests drive it."""
        while pending := [job for job in self._sending if not job.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def step(self) -> float:
        """One pass; returns how long to sleep before the next."""
        # Let a burst of wake-ups (creates, finished tasks) accumulate into one pass.
        await asyncio.sleep(self.policy.coalesce_s)
        now = self.clock.now_ms()
        if now - self._last_sweep >= self.policy.poll_s * 1000:
            self._last_sweep = now
            await self.sweep(now)
            self._cancels_due = True
        if self._cancels_due:
            self._cancels_due = False
            await self.send_cancels(now)
        if await self.dispatch_due(now):
            return 0.0  # a full batch went out: there may be more
        return self._idle_pause(now)

    def _idle_pause(self, now: int) -> float:
        pause = self.policy.poll_s
        if self._next_retry_at is not None:
            if self._next_retry_at <= now:
                self._next_retry_at = None
            else:
                pause = min(pause, (self._next_retry_at - now) / 1000)
        return pause

    async def dispatch_due(self, now: int) -> bool:
        """Assign and send due WAITING tasks; return whether a full batch was taken."""
        if not await self.store.has_due_tasks(now=now):
            return False  # the common idle case: one indexed probe, no server list
        return await self._claim_and_send(now)

    async def _claim_and_send(self, now: int) -> bool:
        claim = _Claim(self, now)
        won = await self.store.claim_tasks(now=now, plan=claim.plan)
        for ok, (update, task), server in zip(won, claim.starts, claim.servers, strict=True):
            if ok:
                self.observer.tallied(update.tallies)
                self._spawn(self._send(task, server))
        self._slots_to_spare = claim.slots_left > 0
        return claim.full_batch and any(won)

    def claim_alongside(self) -> None:
        """New tasks are about to be stored: when the last claim left servers with free slots,
        claim now rather than after their commit and a pass's coalescing pause. A store that
        groups writes runs this claim in the same transaction as the inserts queued before it
        (SQLite: one commit on the way from create to send, not two). One such claim at a
        time: creates meanwhile get one more right after it. A saturated fleet takes none;
        the woken pass claims whatever these did not."""
        if not (self._slots_to_spare and self._running) or self._stopping.is_set():
            return
        if self._claiming_alongside:
            self._claim_again = True
            return
        self._claiming_alongside = True
        self._spawn(self._claim_beside_creates())

    async def _claim_beside_creates(self) -> None:
        try:
            while True:
                self._claim_again = False
                await self._claim_and_send(self.clock.now_ms())
                if not (self._claim_again and self._slots_to_spare):
                    return
        except Exception:  # the woken pass claims the tasks; say why this one could not
            log.warning("claiming beside new tasks failed", exc_info=True)
        finally:
            self._claiming_alongside = False

    async def apply(self, updates: list[TaskUpdate], *, wake: bool = True) -> list[bool]:
        """Commit conditional task updates; tell waiters; wake the loop if anything changed.

        Every task state change on this node goes through here.
        """
        won = await self.store.update_tasks(updates)
        for update, ok in zip(updates, won, strict=True):
            if ok:
                self.observer.tallied(update.tallies)
                if update.patch.status is TaskStatus.FAILED:
                    _log_failed(update)
        if any(won):
            # Waiters (GET ?wait=) only care about final states.
            self.events.changed(
                u.task_id
                for u, ok in zip(updates, won, strict=True)
                if ok and u.patch.status in FINAL_STATUSES
            )
            for update, ok in zip(updates, won, strict=True):
                due = update.patch.next_attempt_at
                if ok and due is not UNSET and (self._next_retry_at or due + 1) > due:
                    self._next_retry_at = due
                if ok and update.hold is not None and update.hold.cancel_due_at is not None:
                    self._cancels_due = True
            if wake:
                self.wake()
        return won

    def _spawn(self, coro: Any) -> None:
        job = asyncio.get_running_loop().create_task(coro)
        self._sending.add(job)
        job.add_done_callback(self._sending.discard)

    async def _send(self, task: Task, server: Server) -> None:
        token = self.tokens.callback_token(
            server_id=server.id,
            task_id=task.id,
            attempt=task.attempt,
            ttl_s=task.timeout_s + CALLBACK_TOKEN_GRACE_S,
            registration=server.revision,  # dies with the registration (auth.py)
        )
        payload = {
            "task_id": task.id,
            "request": task.request,
            "async": server.is_async,
            "callback_url": task.callback_url,
            "callback_token": token,
            "attempt": task.attempt,
        }
        reply = await self.client.predict(
            server.predict_url, payload, timeout_s=task.timeout_s, api_key=server.api_key
        )
        await self._record_until_done(task, server, reply)

    async def _record_until_done(self, task: Task, server: Server, reply: PredictReply) -> None:
        """Record `reply`, trying again (backing off up to RECORD_RETRY_MAX_S) while the
        database fails, until the attempt's deadline: a synchronous result exists only in
        this process, and if it is not stored, the deadline sweep sends the task again."""
        delay_s = RECORD_RETRY_BASE_S
        while True:
            try:
                await self.record_reply(task, server, reply)
            except Exception:
                self._record_failures.failed(task_id=task.id, server_id=server.id)
                retry_at = self.clock.now_ms() + delay_s * 1000
                if task.deadline_at is None or retry_at >= task.deadline_at:
                    return  # the task is safe in the database; the sweep moves it on
                await asyncio.sleep(delay_s)
                delay_s = min(RECORD_RETRY_MAX_S, delay_s * 2)
            else:
                self._record_failures.succeeded()
                return

    async def record_reply(self, task: Task, server: Server, reply: PredictReply) -> None:
        now = self.clock.now_ms()
        update: TaskUpdate | None
        if reply.kind is ReplyKind.OK and reply.body is not None:
            update = _update_for_result(task, reply.body, now)
        elif reply.kind is ReplyKind.ACCEPTED:
            update, _ = lifecycle.acknowledge(task, progress=None, now=now)
        elif reply.kind is ReplyKind.REJECTED:
            error = f"rejected by {server.id}: {reply.error}"
            others = await self._others_serve(task, server.id)
            update, _ = lifecycle.reject(
                task, server_id=server.id, error=error, now=now, others_serve=others
            )
        elif reply.kind is ReplyKind.TOO_LARGE:
            error = f"{server.id}: {reply.error}"
            code = ErrorCode.RESPONSE_TOO_LARGE
            update, _ = lifecycle.fail(task, error=error, code=code, now=now)
        else:
            timed_out = reply.kind is ReplyKind.TIMEOUT
            code = ErrorCode.TIMEOUT if timed_out else ErrorCode.BACKEND_ERROR
            update, _ = self._retry(task, error=f"{server.id}: {reply.error}", code=code, now=now)
            if timed_out:  # the backend may still be running it: hold its slot, cancel it
                update = dataclasses.replace(update, hold=self._hold(task, now))
        # The server's account first: ejected before the task's update frees its slot, a
        # failing server is not handed the next task in the meantime.
        await self.accounts.record(server, reply)
        recorded = (await self.apply([update]))[0]  # frees a slot, or the task waits again
        # If it was cancelled (or timed out) meanwhile, the backend's answer is its letting go;
        # the client giving up (or a 202) is not, and the slot stays held until its cancel.
        let_go = not recorded and reply.let_go
        if let_go and await self.store.release_holds(task.id, attempt=task.attempt):
            self.wake()

    async def _others_serve(self, task: Task, server_id: str) -> bool:
        """Whether a server other than those that refused the task serves its model."""
        refusers = task.rejected_by | {server_id}
        return any(
            s.serves(task.model) and s.id not in refusers for s in await self.store.list_servers()
        )

    def _hold(self, task: Task, now: int, *, until: int | None = None) -> SlotHold | None:
        """Keep the slot of the task's ended attempt counted (see `SlotHold`), and cancel it."""
        grace_ms = int(self.policy.slot_grace_s * 1000)
        return lifecycle.hold_slot(task, until=(until or now) + grace_ms, cancel_at=now)

    def _retry(
        self, task: Task, *, error: str, code: ErrorCode, now: int
    ) -> tuple[TaskUpdate, Task]:
        return lifecycle.retry_or_fail(
            task,
            error=error,
            code=code,
            now=now,
            rng=self.rng,
            retry_base_s=self.policy.retry_base_s,
            retry_max_s=self.policy.retry_max_s,
        )

    async def sweep(self, now: int) -> None:
        """Abandon attempts past their deadline; fail tasks past their queue deadline."""
        updates: list[TaskUpdate] = []
        for task in await self.store.expired_attempts(now=now, limit=self.policy.batch):
            error = f"no result from {task.server_id} within {task.timeout_s:g} s"
            update = self._retry(task, error=error, code=ErrorCode.TIMEOUT, now=now)[0]
            # The backend may still be running it: its slot stays held, and it is cancelled.
            updates.append(dataclasses.replace(update, hold=self._hold(task, now)))
        for task in await self.store.expired_in_queue(now=now, limit=self.policy.batch):
            updates.append(lifecycle.expire_in_queue(task, now=now))
        if updates:
            await self.apply(updates)

    async def requeue(
        self, tasks: list[Task], *, error: str, code: ErrorCode, hold: bool = False
    ) -> None:
        """Move running attempts back to the queue (their server or coordinator is gone).
        `hold`: their backend may still be running them (their coordinator died): keep their
        slots counted until a grace past their deadline, and cancel them."""
        now = self.clock.now_ms()
        updates = [self._retry(t, error=error, code=code, now=now)[0] for t in tasks]
        if hold:
            updates = [
                dataclasses.replace(u, hold=self._hold(t, now, until=t.deadline_at))
                for u, t in zip(updates, tasks, strict=True)
            ]
        if not updates:
            return
        won = await self.apply(updates)  # those out of attempts are FAILED, and logged so
        for task, update, ok in zip(tasks, updates, won, strict=True):
            if ok and update.patch.status is TaskStatus.WAITING:
                sent_by = task.attempts[-1].node_id if task.attempts else None
                log.warning(
                    "task %s re-queued (attempt %d of %d on %s%s): %s",
                    task.id,
                    task.attempt,
                    task.max_attempts,
                    task.server_id,
                    f", sent by node {sent_by}" if sent_by else "",
                    error,
                    extra={"task_id": task.id, "server_id": task.server_id},
                )

    async def send_cancels(self, now: int) -> None:
        """Send the cancels owed to backends that are due (see `CancelSender`)."""
        await self.cancels.send_due(now)


def _log_failed(update: TaskUpdate) -> None:
    """A task just ended FAILED: which, where, why (the error is the task's, never a payload)."""
    patch = update.patch
    log.warning(
        "task %s FAILED (%s): %s",
        update.task_id,
        patch.error_code if patch.error_code is not UNSET else None,
        patch.error if patch.error is not UNSET else None,
        extra={"task_id": update.task_id, "server_id": update.expect_server},
    )


class _Claim:
    """One dispatch pass's plan, made inside the store's claim transaction."""

    def __init__(self, dispatcher: Dispatcher, now: int) -> None:
        self.policy, self.rng, self.now = dispatcher.policy, dispatcher.rng, now
        self.starts: list[tuple[TaskUpdate, Task]] = []
        self.servers: list[Server] = []
        self.full_batch = False
        self.slots_left = 0  # free slots the plan left free

    def plan(self, servers: list[Server], waiting: WaitingReader) -> list[TaskUpdate]:
        # A store may run a plan twice (a group commit retried write by write): start afresh.
        self.starts, self.servers, self.full_batch, self.slots_left = [], [], False, 0
        usable = [s for s in servers if s.in_rotation and s.free_slots > 0]
        free = sum(s.free_slots for s in usable)
        if free == 0:
            return []
        models = (
            None if any(not s.models for s in usable) else {m for s in usable for m in s.models}
        )
        limit = min(self.policy.batch, free * 2 + 16)
        tasks = waiting(limit, models)
        self.full_batch = len(tasks) == limit
        assignments = dispatch.assign(
            tasks,
            servers,  # all of them: the panic threshold counts the ejected too
            self.rng,
            now=self.now,
            max_ejected_share=self.policy.ejection.max_share,
        )
        self.slots_left = free - len(assignments)
        for assignment in assignments:
            self.servers.append(assignment.server)
            self.starts.append(
                lifecycle.start_attempt(
                    assignment.task,
                    server_id=assignment.server.id,
                    node_id=self.policy.node_id,
                    callback_url=f"{self.policy.callback_base_url}/api/task/{assignment.task.id}",
                    now=self.now,
                )
            )
        return [update for update, _ in self.starts]


def _update_for_result(task: Task, body: dict[str, Any], now: int) -> TaskUpdate:
    """A 200 from a backend: normally the result, but it may say FAILED or 'still running'."""
    metadata = body.get("metadata")
    status = metadata.get("status") if isinstance(metadata, dict) else None
    if status == TaskStatus.FAILED:
        message = metadata.get("message") if isinstance(metadata, dict) else None
        error = str(message or "backend reported FAILED")[:500]
        return lifecycle.fail(
            task, error=error, code=ErrorCode.BACKEND_FAILED, now=now, result=body
        )[0]
    if status in (TaskStatus.WAITING, TaskStatus.PROCESSING):
        return lifecycle.acknowledge(task, progress=None, now=now)[0]
    return lifecycle.finish(task, result=body, now=now)[0]
