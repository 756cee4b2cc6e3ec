"""`MemoryStore`: the domain's `Store` in plain Python, shipped with the package for tests.

It keeps SqlStore's semantics (conditional updates, claims on fresh data with exact in-flight
counts, the queue and sweep orders, leases, nodes), so domain logic can be tested in
milliseconds without a database; `tests/storage/contract/` runs the same tests on
both to keep it honest. What only a database shows (locking, several processes, durability,
query plans) stays with the real stores and processes.

Each operation runs whole, with no await inside it, which makes it atomic as a transaction is;
before it, it gives other tasks one turn of the event loop, as a real store's I/O would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, get_args

import orjson

from taskyard import errors
from taskyard.domain.changes import (
    UNSET,
    ServerCounter,
    ServerPatch,
    evolve_server,
    evolve_task,
)
from taskyard.domain.models import (
    FINAL_STATUSES,
    Node,
    Server,
    ServerStatus,
    SlotHold,
    Task,
    TaskStatus,
)
from taskyard.domain.ports import ClaimPlan, ModelQueue, Store, TaskQuery, TaskUpdate
from taskyard.domain.tallies import GROUPABLE, Event, Tally, TallySum

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _TaskRow:
    task: Task
    node_id: str | None = None  # the coordinator that sent the current attempt
    acked: bool = False  # whether the backend answered that send


@dataclass(frozen=True, slots=True)
class _Lease:
    holder: str
    expires_at: int


class MemoryStore:
    """The `Store` in dictionaries, for one process. Not durable, not shared, not thread-safe."""

    def __init__(self) -> None:
        self._tasks: dict[str, _TaskRow] = {}
        self._servers: dict[str, Server] = {}  # as registered: in_flight is counted on read
        self._nodes: dict[str, Node] = {}  # without leases: those are joined on read
        self._leases: dict[str, _Lease] = {}
        self._tallies: list[Tally] = []  # every tally recorded, in order
        self._holds: dict[tuple[str, int], SlotHold] = {}  # (task id, attempt) → hold

    async def ping(self) -> None:
        await _turn()

    async def close(self) -> None:
        await _turn()

    # ---- tasks -------------------------------------------------------------------------

    async def add_task(self, task: Task, *, unfinished_cap: int = 0) -> None:
        await self.add_tasks([task], unfinished_cap=unfinished_cap)

    async def add_tasks(self, batch: Iterable[Task], *, unfinished_cap: int = 0) -> None:
        """Insert many tasks at once (as `SqlStore.add_tasks`); a taken id inserts none, and
        none is inserted past the owner's cap of unfinished tasks."""
        await _turn()
        tasks = list(batch)
        if unfinished_cap and tasks:
            owner = tasks[0].owner
            unfinished = sum(
                1
                for row in self._tasks.values()
                if row.task.owner == owner
                and row.task.status in (TaskStatus.WAITING, TaskStatus.PROCESSING)
            )
            unfinished = min(unfinished, unfinished_cap)  # as SqlStore counts: up to the cap
            if unfinished + len(tasks) > unfinished_cap:
                raise errors.QuotaExceeded.unfinished(owner, unfinished, unfinished_cap)
        taken = errors.TaskExists.among((task.id for task in tasks), self._tasks.keys())
        if taken is not None:
            raise taken
        self._tasks |= {task.id: _TaskRow(_stored_task(task)) for task in tasks}
        self._tallies += [Tally(Event.CREATED, t.created_at, t.model) for t in tasks]

    async def get_task(self, task_id: str) -> Task | None:
        await _turn()
        row = self._tasks.get(task_id)
        return row.task if row else None

    async def claim_tasks(self, *, now: int, plan: ClaimPlan) -> list[bool]:
        """Run `plan` on the current servers and queue, then apply its updates: all in one
        step, so the in-flight counts it sees are exact until its updates land."""
        await _turn()

        def waiting(limit: int, models: Collection[str] | None) -> list[Task]:
            return self._waiting(now, limit, models)

        return [self._apply(update) for update in plan(self._server_list(), waiting)]

    async def has_due_tasks(self, *, now: int) -> bool:
        await _turn()
        return bool(self._waiting(now, 1, None))

    async def next_due_at(self) -> int | None:
        await _turn()
        return min((t.next_attempt_at for t in self._in(TaskStatus.WAITING)), default=None)

    async def expired_attempts(self, *, now: int, limit: int) -> list[Task]:
        await _turn()
        return self._expired(TaskStatus.PROCESSING, lambda t: t.deadline_at, now, limit)

    async def expired_in_queue(self, *, now: int, limit: int) -> list[Task]:
        await _turn()
        return self._expired(TaskStatus.WAITING, lambda t: t.queue_deadline_at, now, limit)

    async def processing_on(self, server_ids: Iterable[str]) -> list[Task]:
        await _turn()
        ids = set(server_ids)
        return [t for t in self._in(TaskStatus.PROCESSING) if t.server_id in ids]

    async def orphaned_attempts(self, *, limit: int) -> list[Task]:
        await _turn()
        lost = [
            row.task
            for row in self._tasks.values()
            if row.task.status is TaskStatus.PROCESSING
            and not row.acked
            and row.node_id is not None
            and row.node_id not in self._nodes
        ]
        return sorted(lost, key=lambda t: t.id)[:limit]

    async def update_tasks(self, updates: list[TaskUpdate]) -> list[bool]:
        await _turn()
        return [self._apply(update) for update in updates]

    async def update_task(self, change: TaskUpdate) -> bool:
        return (await self.update_tasks([change]))[0]

    async def purge_tasks(self, *, finished_before: int, limit: int) -> int:
        await _turn()
        old = [
            row.task.id
            for row in self._tasks.values()
            if row.task.status in FINAL_STATUSES
            and row.task.finished_at is not None
            and row.task.finished_at < finished_before
        ][:limit]
        for task_id in old:
            del self._tasks[task_id]
        return len(old)

    async def count_tasks(self) -> dict[str, int]:
        await _turn()
        counts: dict[str, int] = {}
        for row in self._tasks.values():
            counts[row.task.status.value] = counts.get(row.task.status.value, 0) + 1
        return counts

    async def search_tasks(self, query: TaskQuery) -> list[Task]:
        await _turn()
        found = [
            replace(t, request={}, result=None)
            for t in (row.task for row in self._tasks.values())
            if _matches(t, query)
        ]
        return sorted(found, key=lambda t: (t.created_at, t.id), reverse=True)[: query.limit]

    async def queue_by_model(self, *, now: int) -> list[ModelQueue]:
        await _turn()
        counts: dict[str, list[int]] = {}
        for t in self._in(TaskStatus.WAITING):
            waiting_due = counts.setdefault(t.model, [0, 0])
            waiting_due[0] += 1
            waiting_due[1] += t.next_attempt_at <= now
        return [ModelQueue(m, n, d) for m, (n, d) in sorted(counts.items())]

    async def processing_by_model(self) -> dict[str, int]:
        await _turn()
        counts: dict[str, int] = {}
        for t in self._in(TaskStatus.PROCESSING):
            counts[t.model] = counts.get(t.model, 0) + 1
        return counts

    async def queue_position(self, task: Task, *, limit: int) -> int:
        await _turn()
        mine = (-task.priority, task.created_at, task.id)
        ahead = sum(
            1
            for t in self._in(TaskStatus.WAITING)
            if t.model == task.model and (-t.priority, t.created_at, t.id) < mine
        )
        return min(ahead, limit)

    def _in(self, status: TaskStatus) -> list[Task]:
        return [row.task for row in self._tasks.values() if row.task.status is status]

    def _expired(
        self, status: TaskStatus, deadline: Callable[[Task], int | None], now: int, limit: int
    ) -> list[Task]:
        """Tasks in `status` whose `deadline` is before `now`, by (deadline, id), as both
        sweeps read them."""
        expired = [
            (due, t.id, t)
            for t in self._in(status)
            if (due := deadline(t)) is not None and due < now
        ]
        return [t for _, _, t in sorted(expired)][:limit]

    def _waiting(self, now: int, limit: int, models: Collection[str] | None) -> list[Task]:
        """Due WAITING tasks in the claim's order: priority, then FIFO, then id."""
        due = [
            t
            for t in self._in(TaskStatus.WAITING)
            if t.next_attempt_at <= now and (models is None or t.model in models)
        ]
        return sorted(due, key=lambda t: (-t.priority, t.created_at, t.id))[:limit]

    def _apply(self, change: TaskUpdate) -> bool:
        """One conditional update, with the WHERE clause of `SqlStore`'s."""
        row = self._tasks.get(change.task_id)
        if row is None:
            return False
        task = row.task
        if change.expect_status and task.status not in change.expect_status:
            return False
        if change.expect_attempt is not None and task.attempt != change.expect_attempt:
            return False
        if change.expect_server is not None and task.server_id != change.expect_server:
            return False
        patch = change.patch
        row.task = _stored_task(evolve_task(task, patch))
        if patch.node_id is not UNSET:
            row.node_id = patch.node_id
        if patch.acked is not UNSET:
            row.acked = patch.acked
        self._tallies += change.tallies
        if change.hold is not None:
            self._holds.setdefault((change.hold.task_id, change.hold.attempt), change.hold)
        return True

    # ---- statistics --------------------------------------------------------------------

    async def tally_sums(
        self,
        *,
        since: int,
        events: Collection[Event],
        group_by: Collection[str],
        period_ms: int = 60_000,
        server_id: str | None = None,
    ) -> list[TallySum]:
        await _turn()
        unknown = set(group_by) - GROUPABLE
        if unknown:
            raise ValueError(f"tallies cannot be grouped by {sorted(unknown)}")
        sums: dict[tuple[tuple[str, Any], ...], list[int]] = {}
        for t in self._tallies:
            if t.minute < since or t.event not in events:
                continue
            if server_id is not None and t.server_id != server_id:
                continue
            fields = {
                "period": t.minute - t.minute % period_ms,
                "event": t.event.value,
                "model": t.model,
                "server_id": t.server_id,
                "code": t.code,
                "bucket": t.bucket,
            }
            key = tuple((name, fields[name]) for name in sorted(group_by))
            counted = sums.setdefault(key, [0, 0])
            counted[0] += 1
            counted[1] += t.ms or 0
        return [
            TallySum(count=count, total_ms=total, **dict(key))
            for key, (count, total) in sums.items()
        ]

    async def prune_tallies(self, *, before: int) -> int:
        await _turn()
        kept = [t for t in self._tallies if t.minute >= before]
        # SqlStore counts rollup rows: one per minute and group, however many tallies.
        pruned = {_rollup_key(t) for t in self._tallies if t.minute < before}
        self._tallies = kept
        return len(pruned)

    # ---- servers -----------------------------------------------------------------------

    async def put_server(self, server: Server) -> None:
        """Insert or replace a server registration."""
        await _turn()
        self._servers[server.id] = _stored_server(server)

    async def get_server(self, server_id: str) -> Server | None:
        await _turn()
        server = self._servers.get(server_id)
        return self._with_in_flight(server) if server else None

    async def get_servers(self, server_ids: Collection[str]) -> list[Server]:
        await _turn()
        found = (self._servers.get(server_id) for server_id in set(server_ids))
        return [self._with_in_flight(server) for server in found if server is not None]

    async def list_servers(self) -> list[Server]:
        await _turn()
        return self._server_list()

    async def offline_servers(self, *, since_before: int) -> list[Server]:
        await _turn()
        return [
            s
            for s in self._server_list()
            if s.status is ServerStatus.OFFLINE
            and s.offline_since is not None
            and s.offline_since < since_before
        ]

    async def update_server(
        self,
        server_id: str,
        patch: ServerPatch,
        *,
        revision: str | None = None,
        expect: ServerPatch | None = None,
        lazy: bool = False,
    ) -> bool:
        await _turn()
        server = self._servers.get(server_id)
        if server is None or (revision is not None and server.revision != revision):
            return False
        expected = expect.changed() if expect is not None else {}
        if any(getattr(server, k) != v for k, v in expected.items()):
            return False
        self._servers[server_id] = _stored_server(evolve_server(server, patch))
        return True

    async def increment_server(
        self, server_id: str, counter: ServerCounter, *, revision: str
    ) -> int | None:
        await _turn()
        if counter not in get_args(ServerCounter):
            raise ValueError(f"servers.{counter} is not a counter")
        server = self._servers.get(server_id)
        if server is None or server.revision != revision:
            return None
        value: int = getattr(server, counter) + 1
        changed: dict[str, Any] = {counter: value}
        self._servers[server_id] = replace(server, **changed)
        return value

    async def delete_servers(self, server_ids: Collection[str]) -> list[str]:
        """Delete servers and their held slots; return the ids that existed."""
        await _turn()
        removed = [sid for sid in dict.fromkeys(server_ids) if self._servers.pop(sid, None)]
        self._holds = {k: h for k, h in self._holds.items() if h.server_id not in removed}
        return removed

    # ---- held slots and cancels --------------------------------------------------------

    async def due_cancels(self, *, now: int, limit: int) -> list[SlotHold]:
        await _turn()
        due = [
            h
            for h in self._holds.values()
            if h.cancel_due_at is not None and h.cancel_due_at <= now
        ]
        return sorted(due, key=lambda h: (h.cancel_due_at or 0, h.task_id))[:limit]

    async def claim_cancel(self, hold: SlotHold, *, next_try_at: int | None) -> bool:
        await _turn()
        key = (hold.task_id, hold.attempt)
        current = self._holds.get(key)
        if current is None or current.cancel_due_at != hold.cancel_due_at:
            return False
        self._holds[key] = replace(
            current, cancel_due_at=next_try_at, cancel_tries=current.cancel_tries + 1
        )
        return True

    async def release_holds(
        self, task_id: str, *, attempt: int | None = None, server_id: str | None = None
    ) -> int:
        await _turn()
        gone = [
            key
            for key, h in self._holds.items()
            if h.task_id == task_id
            and (attempt is None or h.attempt == attempt)
            and (server_id is None or h.server_id == server_id)
        ]
        for key in gone:
            del self._holds[key]
        return len(gone)

    async def prune_holds(self, *, now: int) -> int:
        await _turn()
        kept = {k: h for k, h in self._holds.items() if h.held_until >= now}
        pruned = len(self._holds) - len(kept)
        self._holds = kept
        return pruned

    def _server_list(self) -> list[Server]:
        return [self._with_in_flight(self._servers[sid]) for sid in sorted(self._servers)]

    def _with_in_flight(self, server: Server) -> Server:
        running = sum(1 for t in self._in(TaskStatus.PROCESSING) if t.server_id == server.id)
        held = sum(1 for h in self._holds.values() if h.server_id == server.id)
        return replace(server, in_flight=running + held, held=held)

    # ---- nodes and leases --------------------------------------------------------------

    async def touch_node(self, *, node_id: str, host: str, now: int) -> None:
        """Record that `node_id` is alive; its host and start are kept from the first touch."""
        await _turn()
        known = self._nodes.get(node_id)
        self._nodes[node_id] = (
            replace(known, last_seen_at=now)
            if known
            else Node(id=node_id, host=host, started_at=now, last_seen_at=now)
        )

    async def list_nodes(self) -> list[Node]:
        """Every recorded node, by start time, with the leases it holds (by name)."""
        await _turn()
        held: dict[str, list[str]] = {}
        for name in sorted(self._leases):
            held.setdefault(self._leases[name].holder, []).append(name)
        return [
            replace(node, leases=tuple(held.get(node.id, ())))
            for node in sorted(self._nodes.values(), key=lambda n: (n.started_at, n.id))
        ]

    async def delete_nodes(self, node_ids: Collection[str]) -> None:
        await _turn()
        for node_id in node_ids:
            self._nodes.pop(node_id, None)

    async def acquire_lease(self, name: str, *, holder: str, now: int, ttl_ms: int) -> bool:
        """Take or renew the lease `name` unless another holder's is still valid."""
        await _turn()
        lease = self._leases.get(name)
        if lease is not None and lease.holder != holder and lease.expires_at >= now:
            return False
        self._leases[name] = _Lease(holder, now + ttl_ms)
        return True

    async def release_leases(self, *, holder: str) -> None:
        await _turn()
        for name in [n for n, lease in self._leases.items() if lease.holder == holder]:
            del self._leases[name]


def _matches(task: Task, query: TaskQuery) -> bool:
    """`query`'s filters, as SqlStore's search applies them."""
    if query.statuses and task.status not in query.statuses:
        return False
    for wanted, value in (
        (query.model, task.model),
        (query.server_id, task.server_id),
        (query.owner, task.owner),
        (query.error_code, task.error_code),
    ):
        if wanted is not None and value != wanted:
            return False
    if query.created_after is not None and task.created_at <= query.created_after:
        return False
    if query.created_before is not None and task.created_at >= query.created_before:
        return False
    return query.before is None or (task.created_at, task.id) < query.before


def _rollup_key(tally: Tally) -> tuple[Any, ...]:
    """The statistics row a tally is summed into (one node: the node is left out)."""
    return (tally.minute, tally.event, tally.model, tally.server_id, tally.code, tally.bucket)


async def _turn() -> None:
    await asyncio.sleep(0)


def _json_copy(value: Any) -> Any:
    """What a JSON column gives back: a fresh copy, JSON's types, or an error where SqlStore's
    orjson would raise one."""
    return orjson.loads(orjson.dumps(value))


def _stored_task(task: Task) -> Task:
    """`task` as a read would return it after a write: its JSON columns copied, its status an
    enum (a `Task` built by hand may carry the plain string)."""
    return replace(
        task,
        status=TaskStatus(task.status),
        request=_json_copy(task.request),
        result=_json_copy(task.result) if task.result is not None else None,
        attempts=tuple(task.attempts),
    )


def _stored_server(server: Server) -> Server:
    return replace(
        server,
        status=ServerStatus(server.status),
        models=tuple(server.models),
        extra=_json_copy(server.extra),
        reported_load=(
            _json_copy(server.reported_load) if server.reported_load is not None else None
        ),
        in_flight=0,
        held=0,
    )


if TYPE_CHECKING:
    _conforms: Store = MemoryStore()  # mypy checks the fake against the protocol
