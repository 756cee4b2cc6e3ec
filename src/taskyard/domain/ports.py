"""What the domain needs from the outside world: storage (conditional task updates and plain
reads), the backend HTTP client and its replies, tokens for backends, and change notices
between nodes.

Dependencies point inward: the adapters import these protocols, the domain never imports an
adapter. `SqlStore` (storage/sql.py) implements `Store`, and so does `MemoryStore` (testing.py)
for fast domain tests; `AiohttpBackendClient` (backends.py) the `BackendClient`; `JwtIssuer`
(auth.py) the `TokenIssuer`; `PgBus` (storage/notify.py) the `ClusterBus`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from taskyard.domain.changes import ServerCounter, ServerPatch, TaskPatch
from taskyard.domain.models import Node, Server, SlotHold, Task, TaskStatus
from taskyard.domain.tallies import Event, Tally, TallySum

# ---- storage ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """Write `patch` on a task only if it is still in the expected state.

    Every state change is such a compare-and-set, so two actors racing on one task (a callback
    and the deadline sweep, two coordinators) can never both win. A patch that writes nothing
    still tells whether the task is in that state.
    """

    task_id: str
    patch: TaskPatch = field(default_factory=TaskPatch)
    expect_status: Collection[TaskStatus] | None = None
    expect_attempt: int | None = None
    expect_server: str | None = None
    # What the change counts for the statistics; recorded with it, only if it matched.
    tallies: tuple[Tally, ...] = ()
    # A backend slot that stays counted after the attempt ends; stored with it, if it matched.
    hold: SlotHold | None = None


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """A search of stored tasks, newest first (`created_at`, then `id`, descending).

    Every given filter must hold; `statuses` matches any of them. `before` is the keyset
    cursor: only tasks that sort after it (older) are returned.
    """

    limit: int
    statuses: Collection[TaskStatus] = ()
    model: str | None = None
    server_id: str | None = None
    owner: str | None = None
    error_code: str | None = None
    created_after: int | None = None  # epoch ms, exclusive
    created_before: int | None = None  # epoch ms, exclusive
    before: tuple[int, str] | None = None  # (created_at, id) of the last task already seen


@dataclass(frozen=True, slots=True)
class ModelQueue:
    """WAITING tasks of one model: all of them, and those due now (not in retry backoff)."""

    model: str
    waiting: int
    due: int


WaitingReader = Callable[[int, Collection[str] | None], list[Task]]
"""(limit, models or None for any) → due WAITING tasks, by priority then FIFO."""

ClaimPlan = Callable[[list[Server], WaitingReader], list[TaskUpdate]]
"""Given every server (with exact in-flight counts) and a reader of due tasks, the updates
that start attempts. Runs inside the claim transaction: pure, quick, no I/O of its own."""


class Store(Protocol):
    """The storage the domain uses. Reads return domain values; writes are durable on return."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...

    # tasks
    async def add_task(self, task: Task, *, unfinished_cap: int = 0) -> None:
        """Store a new task; it counts as `created` in the tallies. Raise `errors.TaskExists`
        if its id is taken. With a cap: raise `errors.QuotaExceeded`, storing nothing, if its
        owner would then have more than `unfinished_cap` WAITING or PROCESSING tasks (counted
        atomically with the insert)."""
        ...

    async def add_tasks(self, batch: Iterable[Task], *, unfinished_cap: int = 0) -> None:
        """Store new tasks of one owner in one transaction, as `add_task` each: all of them,
        or none (`TaskExists` for an id taken before or twice in the batch; `QuotaExceeded`
        past the cap counted with the batch)."""
        ...

    async def get_task(self, task_id: str) -> Task | None: ...

    async def claim_tasks(self, *, now: int, plan: ClaimPlan) -> list[bool]:
        """Run `plan` under the cluster-wide dispatch lock and apply the updates it returns;
        each reports whether it matched."""
        ...

    async def has_due_tasks(self, *, now: int) -> bool: ...

    async def next_due_at(self) -> int | None:
        """When the earliest WAITING task becomes due, if any."""
        ...

    async def expired_attempts(self, *, now: int, limit: int) -> list[Task]:
        """PROCESSING tasks whose attempt deadline is before `now`, by (deadline, id)."""
        ...

    async def expired_in_queue(self, *, now: int, limit: int) -> list[Task]:
        """WAITING tasks whose queue deadline is before `now`, by (queue deadline, id)."""
        ...

    async def processing_on(self, server_ids: Iterable[str]) -> list[Task]: ...

    async def orphaned_attempts(self, *, limit: int) -> list[Task]:
        """Unanswered attempts whose node is no longer recorded in `nodes`, by id."""
        ...

    async def update_tasks(self, updates: list[TaskUpdate]) -> list[bool]:
        """Apply conditional updates together; each reports whether it matched."""
        ...

    async def update_task(self, change: TaskUpdate) -> bool: ...

    async def purge_tasks(self, *, finished_before: int, limit: int) -> int:
        """Delete at most `limit` final tasks that finished before `finished_before`, in a
        short transaction of its own (not in a group-commit batch); return how many."""
        ...

    async def count_tasks(self) -> dict[str, int]:
        """Tasks per status (statuses with none are left out)."""
        ...

    async def search_tasks(self, query: TaskQuery) -> list[Task]:
        """Up to `query.limit` tasks matching it, newest first. Summaries: their `request`
        is `{}` and their `result` None (a page of large results would be huge)."""
        ...

    async def queue_by_model(self, *, now: int) -> list[ModelQueue]:
        """WAITING tasks per model, by model."""
        ...

    async def processing_by_model(self) -> dict[str, int]:
        """PROCESSING tasks per model."""
        ...

    async def queue_position(self, task: Task, *, limit: int) -> int:
        """How many WAITING tasks of the task's model come before it in claim order,
        counted up to `limit`."""
        ...

    # statistics: per-minute rollups of the tallies (domain/tallies.py)
    async def tally_sums(
        self,
        *,
        since: int,
        events: Collection[Event],
        group_by: Collection[str],
        period_ms: int = 60_000,
        server_id: str | None = None,
    ) -> list[TallySum]:
        """Tallies of `events` from the minutes starting at or after `since`, summed over
        every node and grouped by the `group_by` fields of `TallySum` (`period` groups by
        `period_ms`-long periods); only those of `server_id` when given."""
        ...

    async def prune_tallies(self, *, before: int) -> int:
        """Delete rollups of the minutes before `before`; return how many rows."""
        ...

    # servers
    async def put_server(self, server: Server) -> None: ...

    async def get_server(self, server_id: str) -> Server | None: ...

    async def get_servers(self, server_ids: Collection[str]) -> list[Server]:
        """Those of `server_ids` that exist (any order), with their in-flight counts."""
        ...

    async def list_servers(self) -> list[Server]:
        """Every server, with its in-flight count filled in."""
        ...

    async def offline_servers(self, *, since_before: int) -> list[Server]:
        """The servers OFFLINE since before `since_before` (epoch ms), as `list_servers`."""
        ...

    async def update_server(
        self,
        server_id: str,
        patch: ServerPatch,
        *,
        revision: str | None = None,
        expect: ServerPatch | None = None,
        lazy: bool = False,
    ) -> bool:
        """Write `patch` on a server; only on its registration `revision`, and only if its
        fields still have the values `expect` gives (None among them), when given; whether it
        matched. `lazy`: the write may wait a little to share a commit with others (a health
        check's outcome)."""
        ...

    async def increment_server(
        self, server_id: str, counter: ServerCounter, *, revision: str
    ) -> int | None:
        """Add one to a counter in the database (never read-modify-write, so that nodes
        counting at once lose nothing); the new value, or None if the registration is gone.
        Raises ValueError for a field that is not a counter."""
        ...

    async def delete_servers(self, server_ids: Collection[str]) -> list[str]:
        """Delete servers (and their held slots); return the ids that existed."""
        ...

    # held slots (SlotHold) and the cancels owed to backends
    async def due_cancels(self, *, now: int, limit: int) -> list[SlotHold]: ...

    async def claim_cancel(self, hold: SlotHold, *, next_try_at: int | None) -> bool:
        """Take the cancel of `hold` to send it now: count a try and set when to try again
        (None: never) if no one else took it since `hold` was read."""
        ...

    async def release_holds(
        self, task_id: str, *, attempt: int | None = None, server_id: str | None = None
    ) -> int:
        """The backend let go: stop counting these slots; return how many there were."""
        ...

    async def prune_holds(self, *, now: int) -> int:
        """Stop counting slots whose grace is over; return how many."""
        ...

    # coordinator nodes
    async def touch_node(self, *, node_id: str, host: str, now: int) -> None: ...

    async def list_nodes(self) -> list[Node]: ...

    async def delete_nodes(self, node_ids: Collection[str]) -> None: ...

    # leases: cluster duties held by one node at a time
    async def acquire_lease(self, name: str, *, holder: str, now: int, ttl_ms: int) -> bool:
        """Take or renew `name` for `holder` unless someone else holds it unexpired."""
        ...

    async def release_leases(self, *, holder: str) -> None: ...


# ---- what this node saw (metrics) ----------------------------------------------------------


class Observer(Protocol):
    """Told what this node did, as it happens: the per-node counters of `/metrics`.

    The statistics in the database count the same tallies for the whole cluster; this is the
    per-process view Prometheus scrapes and sums. Calls must be quick and never raise.
    """

    def tallied(self, tallies: Iterable[Tally]) -> None:
        """State changes this node committed (only those that matched)."""
        ...

    def health_checked(self, server_id: str, *, healthy: bool) -> None: ...

    def loop_ran(self, loop: str, *, ok: bool) -> None:
        """One iteration of a background loop ended, well or with an error."""
        ...


class NullObserver:
    def tallied(self, tallies: Iterable[Tally]) -> None:
        pass

    def health_checked(self, server_id: str, *, healthy: bool) -> None:
        pass

    def loop_ran(self, loop: str, *, ok: bool) -> None:
        pass


# ---- tokens --------------------------------------------------------------------------------


class TokenIssuer(Protocol):
    """Signs the `service` tokens the domain hands to backends; the domain never sees a key.

    Both kinds are bound to a server; a callback token also to one attempt of one task, so a
    late or foreign report can be told from the current one.
    """

    def server_token(self, server_id: str, *, registration: str | None = None) -> str:
        """The token a backend gets at registration and with each heartbeat (heartbeats,
        reports); bound to that `registration` (the server's `revision`), it dies with it."""
        ...

    def callback_token(
        self,
        *,
        server_id: str,
        task_id: str,
        attempt: int,
        ttl_s: float,
        registration: str | None = None,
    ) -> str:
        """The token sent with one attempt, valid for `ttl_s` seconds."""
        ...


# ---- backends -----------------------------------------------------------------------------


class ReplyKind(StrEnum):
    OK = "ok"  # 200 with a JSON object: a synchronous result
    ACCEPTED = "accepted"  # 202: the backend will call back
    REJECTED = "rejected"  # a 4xx that retrying elsewhere will not fix
    RETRYABLE = "retryable"  # connect error, 5xx, 408/409/429, a 2xx that is not a result
    TIMEOUT = "timeout"  # no answer before the attempt's deadline
    # A 2xx larger than the response size cap: another server would give the same answer, so
    # the task fails without a retry, and the server, which did answer, is not counted down.
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class PredictReply:
    kind: ReplyKind
    status: int | None = None
    body: dict[str, Any] | None = None
    error: str | None = None
    connect_failed: bool = False  # the server could not be reached at all

    @property
    def let_go(self) -> bool:
        """Whether the backend is known to run this attempt no more: it answered with a
        result or an error, or was never reached. A timeout or a cut connection says nothing
        (it may still be computing), and a 202 says it goes on in the background."""
        if self.kind in (ReplyKind.TIMEOUT, ReplyKind.ACCEPTED):
            return False
        return self.status is not None or self.connect_failed


@dataclass(frozen=True, slots=True)
class HealthReply:
    healthy: bool
    network_error: bool  # worth retrying: the request never got an answer
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class CancelReply:
    let_go: bool  # a 2xx: the backend has stopped the attempt (or never had it)
    error: str | None = None


class BackendClient(Protocol):
    async def predict(
        self,
        url: str,
        payload: dict[str, Any],
        *,
        timeout_s: float,
        api_key: str | None = None,
    ) -> PredictReply:
        """POST a task to a backend's predict endpoint and classify the answer."""
        ...

    async def health(
        self, url: str, *, timeout_s: float, api_key: str | None = None
    ) -> HealthReply:
        """GET a backend's health endpoint."""
        ...

    async def cancel(
        self, url: str, payload: dict[str, Any], *, timeout_s: float, api_key: str | None = None
    ) -> CancelReply:
        """POST a cancel to a backend's cancel endpoint."""
        ...


@dataclass(frozen=True, slots=True)
class ClusterHandlers:
    """What a node does when another node announces a change."""

    tasks_final: Callable[[list[str]], None]  # wake long polls waiting on these tasks
    work: Callable[[], None]  # new tasks or capacity: wake the dispatcher
    servers: Callable[[], None]  # servers registered or removed: re-read the health schedule
    nodes: Callable[[], None]  # a node left: re-read who is alive


class ClusterBus(Protocol):
    """Change notices between nodes sharing a database (PostgreSQL LISTEN/NOTIFY).

    Best effort: a notice saves a wait, it is never the only way a change is seen; every
    loop also polls the database. With one node (SQLite) it does nothing.
    """

    @property
    def listening(self) -> bool:
        """Whether notices from other nodes are arriving now."""
        ...

    async def start(self, handlers: ClusterHandlers) -> None: ...

    async def close(self) -> None: ...

    def tasks_final(self, task_ids: Iterable[str]) -> None: ...

    def work(self) -> None: ...

    def servers(self) -> None: ...

    def nodes(self) -> None: ...


class LocalBus:
    """One node alone (SQLite): nothing to tell, and no change it can miss."""

    listening = True

    async def start(self, handlers: ClusterHandlers) -> None:
        pass

    async def close(self) -> None:
        pass

    def tasks_final(self, task_ids: Iterable[str]) -> None:
        pass

    def work(self) -> None:
        pass

    def servers(self) -> None:
        pass

    def nodes(self) -> None:
        pass
