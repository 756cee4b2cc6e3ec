"""`Coordinator`: the one facade the API and CLI use. It owns the background loops.

Reads and writes go to the database (the only source of truth); the loops keep no state that a
restart would lose. Authorization rules that depend on a task's state (who may report on it)
live here, next to the state they depend on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import socket
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from taskyard import auth, errors
from taskyard.domain import lifecycle, registry, reports, waiting
from taskyard.domain.changes import UNSET
from taskyard.domain.chores import Chores
from taskyard.domain.cluster import Membership
from taskyard.domain.dispatcher import Dispatcher, DispatchPolicy
from taskyard.domain.events import TaskEvents
from taskyard.domain.health import HealthMonitor, HealthPolicy
from taskyard.domain.models import (
    JSON,
    ErrorCode,
    Node,
    Server,
    Task,
    TaskOptions,
    TaskStatus,
    now_ms,
)
from taskyard.domain.ports import (
    BackendClient,
    ClusterBus,
    ClusterHandlers,
    LocalBus,
    NullObserver,
    Observer,
    Store,
    TaskQuery,
    TokenIssuer,
)
from taskyard.domain.reports import Report
from taskyard.domain.stats import Stats
from taskyard.domain.tallies import Event, Tally

log = logging.getLogger(__name__)

WAIT_FALLBACK_S = 1.0  # a waiting GET re-reads the task at least this often...
WAIT_FALLBACK_LISTENING_S = 5.0  # ...or this often while other nodes' notices arrive
# A loop failing this many iterations in a row makes /ready fail: one failure is a blip (a
# lost connection, retried a second later), three mean the node is not doing its work.
LOOP_FAILURES_NOT_READY = 3
SERVED_MODELS_TTL_S = 1.0  # a create's "no server serves this model" check reuses a list


class BulkAction(StrEnum):
    RETRY = "retry"
    CANCEL = "cancel"


_BULK_STATUSES = {
    BulkAction.RETRY: (TaskStatus.FAILED, TaskStatus.CANCELLED),
    BulkAction.CANCEL: (TaskStatus.WAITING, TaskStatus.PROCESSING),
}


STOP_RESERVE_S = 0.5  # of the shutdown grace, kept for the steps after the sends in flight


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    callback_base_url: str
    task_timeout_s: float = 300.0
    max_attempts: int = 3
    dispatch: DispatchPolicy | None = None
    health: HealthPolicy = field(default_factory=HealthPolicy)
    result_retention_s: float = 7 * 24 * 3600.0
    chores_interval_s: float = 5.0
    node_timeout_s: float = 30.0
    # A seed-style `service` token (no server binding) may report for the server named in the
    # report's metadata.server_id: any running task. Off unless the operator allows it.
    allow_unbound_service_tokens: bool = False
    # From the stop signal to the end: sends in flight have this long to be answered.
    shutdown_grace_s: float = 20.0
    max_unfinished_tasks: int = 0  # per owner, for creates made with `capped`; 0 = no cap


class Coordinator:
    def __init__(
        self,
        *,
        store: Store,
        client: BackendClient,
        tokens: TokenIssuer,
        config: CoordinatorConfig,
        bus: ClusterBus | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.observer: Observer = observer or NullObserver()
        self.tokens = tokens
        self.bus: ClusterBus = bus or LocalBus()
        self.config = config
        self.rng = random.Random()
        # Set at the first stop signal (`begin_shutdown`): no new claims, long polls answer.
        self.shutting_down = asyncio.Event()
        self._stop_by: float | None = None  # monotonic time the shutdown must be done by
        policy = config.dispatch or DispatchPolicy(
            node_id=self.new_node_id(),
            callback_base_url=config.callback_base_url,
        )
        self.node_id = policy.node_id
        self.membership = Membership(self.node_id)
        self.events = TaskEvents(publish=self.bus.tasks_final)
        self.dispatcher = Dispatcher(
            store=store,
            client=client,
            tokens=tokens,
            policy=policy,
            events=self.events,
            rng=self.rng,
        )
        self.health = HealthMonitor(
            store=store,
            client=client,
            policy=config.health,
            on_online=lambda _id: self._capacity_appeared(),
            on_expired=self._remove_expired,
            membership=self.membership,
        )
        self.chores = Chores(self)
        for loop in (self.dispatcher, self.health, self.chores):
            loop.observer = self.observer
        self.stats = Stats(store)
        self._loops: list[asyncio.Task[None]] = []
        self._servers_seen: tuple[float, list[Server]] | None = None  # (monotonic, servers)

    def failing_loops(self) -> dict[str, str]:
        """The background loops that failed their last `LOOP_FAILURES_NOT_READY` iterations
        or more, each with its failures and the last error's type (for `/ready`)."""
        loops = {"dispatcher": self.dispatcher, "health": self.health, "chores": self.chores}
        return {
            name: f"{loop.failures_in_a_row} failures in a row, last: {loop.last_error}"
            for name, loop in loops.items()
            if loop.failures_in_a_row >= LOOP_FAILURES_NOT_READY
        }

    @staticmethod
    def new_node_id() -> str:
        """A fresh identity for this coordinator process (host name + random suffix)."""
        return f"{socket.gethostname()[:40]}-{uuid.uuid4().hex[:12]}"

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Register this node and start the dispatcher, health monitor and chores."""
        await self.store.touch_node(node_id=self.node_id, host=socket.gethostname(), now=now_ms())
        await self.bus.start(
            ClusterHandlers(
                tasks_final=self.events.changed_elsewhere,
                work=self.dispatcher.wake,
                servers=self.health.resync_soon,
                nodes=self.chores.wake,
            )
        )
        self.bus.nodes()  # the others re-read who is alive and hand servers over
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self.dispatcher.run(), name="dispatcher"),
            loop.create_task(self.health.run(), name="health"),
            loop.create_task(self.chores.run(), name="chores"),
        ]

    def begin_shutdown(self, *, hurry: bool = False) -> None:
        """The first stage of a stop, at the signal itself (before the HTTP server waits for
        open requests): claim no more tasks, and answer every long poll now with the task as
        it is. Sends in flight go on; `stop` gives them what is left of the grace. `hurry`
        (a second signal) leaves them no time at all."""
        now = time.monotonic()
        if self._stop_by is None:
            # The last moments of the grace are kept for what follows the sends (leases, the
            # node record, closing): the process must be gone within the grace plus a second.
            grace = self.config.shutdown_grace_s
            self._stop_by = now + max(0.0, grace - min(STOP_RESERVE_S, grace / 4))
        if hurry:
            self._stop_by = now
            self.dispatcher.hurry()  # also when `stop` already gives the sends their grace
        self.dispatcher.stop()
        self.shutting_down.set()

    async def stop(self) -> None:
        """Stop the loops in stages: no new work, then in-flight sends (within what is left of
        the shutdown grace), then the rest."""
        self.begin_shutdown()
        assert self._stop_by is not None
        self.chores.stop()
        await self.dispatcher.close(grace_s=max(0.0, self._stop_by - time.monotonic()))
        await self.health.close()
        for loop_task in self._loops:
            loop_task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        # Leave at once rather than by timing out: the others take over the duties now.
        await self.store.release_leases(holder=self.node_id)
        await self.store.delete_nodes([self.node_id])
        self.bus.nodes()
        await self.bus.close()

    # ---- tasks -------------------------------------------------------------------------

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
        now = now_ms()
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

    async def create_warnings(self, task: Task) -> list[str]:
        """What the creator of `task` should know (see `model_warnings`)."""
        return await self.model_warnings(task.model)

    async def model_warnings(self, model: str) -> list[str]:
        """What the creator of a task for `model` should know: no registered server serves
        it (the task is kept: servers may register later). Judged from a list of servers at
        most `SERVED_MODELS_TTL_S` old, so that creates do not each read every server."""
        if waiting.unserved_models([model], await self._recent_servers()):
            return [
                f"no registered server serves model {model!r}: the task waits until one"
                " registers (check the model name)"
            ]
        return []

    async def _recent_servers(self) -> list[Server]:
        seen = self._servers_seen
        if seen is None or time.monotonic() - seen[0] > SERVED_MODELS_TTL_S:
            seen = (time.monotonic(), await self.store.list_servers())
            self._servers_seen = seen
        return seen[1]

    async def why_waiting(self, task: Task) -> waiting.Waiting | None:
        """Why a WAITING task has not started yet (None for other states)."""
        if task.status is not TaskStatus.WAITING:
            return None
        reason = waiting.why_waiting(task, await self.store.list_servers(), now=now_ms())
        if waiting.needs_position(reason):
            position = await self.store.queue_position(task, limit=waiting.POSITION_LIMIT)
            reason = dataclasses.replace(reason, position=position)
        return reason

    async def search_tasks(self, query: TaskQuery, *, principal: auth.Principal) -> list[Task]:
        """A page of tasks, newest first: a user's own only, anyone's for an admin."""
        if not principal.is_admin:
            if query.owner is not None and query.owner != principal.sub:
                raise errors.Forbidden("Only an admin may search another owner's tasks")
            query = dataclasses.replace(query, owner=principal.sub)
        return await self.store.search_tasks(query)

    async def get_task(self, task_id: str, *, principal: auth.Principal) -> Task:
        """A task as its owner or an admin (or its backend) may see it; others get 404."""
        task = await self.store.get_task(task_id)
        if task is None or not reports.may_read(principal, task):
            raise errors.TaskNotFound(task_id)
        return task

    async def wait_task(self, task_id: str, *, principal: auth.Principal, wait_s: float) -> Task:
        """The task once it is final, or as it is after `wait_s` seconds (long polling)."""
        deadline = time.monotonic() + wait_s
        while True:
            with self.events.watch(task_id) as changed:
                task = await self.get_task(task_id, principal=principal)
                left = deadline - time.monotonic()
                if task.status.is_final or left <= 0 or self.shutting_down.is_set():
                    return task  # a node that is stopping answers with the task as it is
                # Woken by a change here or a notice from another node; the fallback re-read
                # covers notices lost while the bus was not listening.
                fallback = WAIT_FALLBACK_LISTENING_S if self.bus.listening else WAIT_FALLBACK_S
                stopping = asyncio.ensure_future(self.shutting_down.wait())
                try:
                    await asyncio.wait(
                        (changed, stopping),
                        timeout=min(left, fallback),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    stopping.cancel()

    async def cancel_task(self, task_id: str, *, principal: auth.Principal) -> Task:
        """WAITING or PROCESSING → CANCELLED; a running attempt's backend is sent a cancel
        (durably: see `SlotHold`) and its slot stays counted until the backend lets go."""
        task = await self.get_task(task_id, principal=principal)
        if task.status.is_final:
            raise errors.TaskFinal(f"Task {task_id} is already {task.status}")
        update, cancelled = lifecycle.cancel(task, now=now_ms(), grace_ms=self._grace_ms)
        if not (await self.dispatcher.apply([update]))[0]:
            raise errors.Conflict(f"Task {task_id} changed meanwhile; read it and try again")
        return cancelled

    async def retry_task(self, task_id: str, *, principal: auth.Principal) -> Task:
        """FAILED or CANCELLED → WAITING: same id, a fresh attempt budget, history kept."""
        task = await self.get_task(task_id, principal=principal)
        if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            raise errors.Conflict(
                f"Task {task_id} is {task.status}: only a FAILED or CANCELLED task is retried"
            )
        update, retried = lifecycle.retry_manually(task, now=now_ms())
        if not (await self.dispatcher.apply([update]))[0]:
            raise errors.Conflict(f"Task {task_id} changed meanwhile; read it and try again")
        self.bus.work()
        log.info("task %s retried by %s", task_id, principal.sub, extra={"task_id": task_id})
        return retried

    async def bulk_change(
        self, action: BulkAction, query: TaskQuery, *, principal: auth.Principal
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
        now = now_ms()
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

    async def report(self, task_id: str, report: Report, *, principal: auth.Principal) -> Task:
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
                self._capacity_appeared()
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
        update, updated = reports.apply_report(task, report, now=now_ms())
        if not (await self.dispatcher.apply([update], wake=updated.status.is_final))[0]:
            raise errors.StaleReport(f"Task {task_id} changed meanwhile; report ignored")
        return updated

    # ---- servers -----------------------------------------------------------------------

    async def register_server(self, reg: registry.Registration) -> tuple[Server, str]:
        """Register or replace a server; check its health at once. Returns it and its token."""
        server = registry.new_server(
            reg,
            now=now_ms(),
            interval_s=self.config.health.interval_min_s,
            replaces=await self.store.get_server(reg.id),
        )
        await self.store.put_server(server)
        self._servers_seen = None
        log.info(
            "server %s registered: %s",
            server.id,
            "offline until its first health check passes"
            if server.health_url
            else "online (no health URL: judged by heartbeats and dispatch results)",
            extra={"server_id": server.id},
        )
        if server.health_url and self.membership.owns(server.id):
            self.health.schedule(server.id)
        else:
            self.health.forget(server.id)
        if not server.health_url:
            self._capacity_appeared()
        self.bus.servers()  # its owner (maybe another node) schedules its checks
        return server, self.tokens.server_token(server.id, registration=server.revision)

    async def check_registration(self, principal: auth.Principal) -> None:
        """Refuse a token issued for a server registration that is gone: the server was
        deleted or registered again (its `revision` changed). One primary-key read."""
        if principal.server_id is None or principal.registration is None:
            return
        server = await self.store.get_server(principal.server_id)
        if server is None or server.revision != principal.registration:
            raise errors.Unauthorized(
                "Token revoked: its server was deleted or registered again since it was issued"
            )

    def renewed_server_token(self, server: Server, principal: auth.Principal) -> str:
        """A fresh server token for a heartbeat's answer: of the caller's own registration
        when its token names one (a heartbeat racing a new registration must not hand the old
        holder a token of the new one), else of the server's current one."""
        registration = principal.registration or server.revision
        return self.tokens.server_token(server.id, registration=registration)

    async def list_servers(self) -> list[Server]:
        return await self.store.list_servers()

    async def get_server(self, server_id: str) -> Server:
        server = await self.store.get_server(server_id)
        if server is None:
            raise errors.ServerNotFound(server_id)
        return server

    async def heartbeat(
        self, server_id: str, *, principal: auth.Principal, load: JSON | None
    ) -> Server:
        if not principal.is_admin and principal.server_id != server_id:
            # Only the server's own token: an unbound one could keep any server looking alive.
            raise errors.Forbidden(f"This token may not send heartbeats for {server_id}")
        server = await self.get_server(server_id)
        values = registry.heartbeat_values(server, now=now_ms(), load=load)
        if not await self.store.update_server(server_id, values):
            raise errors.ServerNotFound(server_id)
        if values.status is not UNSET:
            log.info("server %s online: heartbeat", server_id, extra={"server_id": server_id})
            self._capacity_appeared()
        return await self.get_server(server_id)

    async def set_maintenance(self, server_id: str, *, enabled: bool, reason: str | None) -> Server:
        """Take a server out of rotation (its running tasks finish; it shows `draining`, then
        `maintenance`) or bring it back after its next passing health check. Stored, so every
        node and a restart see it; a server in maintenance is never removed automatically."""
        server = await self.get_server(server_id)
        values = registry.maintenance_values(server, enabled=enabled, reason=reason, now=now_ms())
        if not await self.store.update_server(server_id, values, revision=server.revision):
            raise errors.Conflict(f"Server {server_id} was re-registered meanwhile; try again")
        self._servers_seen = None
        if enabled:
            log.info(
                "server %s in maintenance: no new tasks%s",
                server_id,
                f" ({reason})" if reason else "",
                extra={"server_id": server_id},
            )
        else:
            log.info(
                "server %s out of maintenance: back in rotation %s",
                server_id,
                "after its next passing health check" if server.health_url else "now",
                extra={"server_id": server_id},
            )
            if server.health_url and self.membership.owns(server_id):
                self.health.schedule(server_id)
            self._capacity_appeared()
        self.bus.servers()  # the node that checks it re-reads its schedule
        return await self.get_server(server_id)

    async def delete_server(self, server_id: str) -> None:
        removed = await self.remove_servers(
            [server_id], reason="deleted by an admin", level=logging.INFO
        )
        if not removed:
            raise errors.ServerNotFound(server_id)

    async def cleanup(self, *, max_age_s: float) -> list[str]:
        """Remove servers with no sign of life for `max_age_s`."""
        now = now_ms()
        stale = [
            s.id
            for s in await self.store.list_servers()
            if registry.may_remove(s)
            and registry.is_stale(s, now=now, max_age_ms=int(max_age_s * 1000))
        ]
        return await self.remove_servers(stale, reason="stale: no heartbeat")

    async def remove_servers(
        self, server_ids: list[str], *, reason: str, level: int = logging.WARNING
    ) -> list[str]:
        """Delete servers, stop checking them and re-queue the tasks they were running.
        `level`: how the removal is logged (an admin's deletion is no cause for alarm)."""
        removed = await self.store.delete_servers(server_ids)
        self._servers_seen = None
        for server_id in removed:
            self.health.forget(server_id)
            log.log(
                level, "server %s removed: %s", server_id, reason, extra={"server_id": server_id}
            )
        if removed:
            running = await self.store.processing_on(removed)
            await self.dispatcher.requeue(  # logs each task it re-queues
                running, error=f"server removed ({reason})", code=ErrorCode.SERVER_REMOVED
            )
            self.bus.servers()
        return removed

    async def list_nodes(self) -> list[tuple[Node, bool]]:
        """Every recorded coordinator node, and whether it is alive."""
        now, timeout_ms = now_ms(), int(self.config.node_timeout_s * 1000)
        return [(n, n.alive(now=now, timeout_ms=timeout_ms)) for n in await self.store.list_nodes()]

    def _capacity_appeared(self) -> None:
        self.dispatcher.wake()
        self.bus.work()

    async def _remove_expired(self, server_id: str) -> None:
        await self.remove_servers([server_id], reason=self.offline_too_long)

    @property
    def offline_too_long(self) -> str:
        """Why a long-offline server is removed, as the log and its tasks' errors say it."""
        return f"offline for over {self.config.health.offline_removal_s:g} s"


__all__ = ["BulkAction", "Coordinator", "CoordinatorConfig", "Report"]
