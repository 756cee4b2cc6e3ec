"""`SqlStore`: tasks, servers and nodes in SQL. Queries are written once for SQLite and
PostgreSQL; where they run (and every other dialect difference) is `runners.py`'s business."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import sqlalchemy.exc
from sqlalchemy import (
    Connection,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from taskyard import errors
from taskyard.domain.changes import ServerCounter, ServerPatch
from taskyard.domain.models import (
    Node,
    Server,
    SlotHold,
    Task,
)
from taskyard.domain.ports import ClaimPlan, ModelQueue, TaskQuery, TaskUpdate
from taskyard.domain.tallies import GROUPABLE, Event, Tally, TallySum
from taskyard.jsonsafe import storable_text
from taskyard.storage import holds, queries, rollups
from taskyard.storage import rows as rowmap  # (`rows` is a common local name here)
from taskyard.storage.batcher import GroupCommitter
from taskyard.storage.direct import Statement
from taskyard.storage.runners import (
    Runner,
    Synchronous,
    async_url,
    create_engine,
    open_runner,
)
from taskyard.storage.tables import (
    IS_PROCESSING,
    IS_WAITING,
    leases,
    nodes,
    servers,
    tasks,
)

__all__ = ["SqlStore", "async_url", "create_engine"]


def _setting_default(name: str) -> Any:
    # Imported when needed only: the settings' dependencies (pydantic-settings, PyJWT, limits)
    # take half a second to load, and a node has loaded them already when it gets here.
    from taskyard.config import default_of

    return default_of(name)


_UNFINISHED = "taskyard_unfinished"  # Connection.info: owner → unfinished tasks, this transaction


def _stored_ids(conn: Connection, ids: list[str]) -> set[str]:
    """Those of `ids` that are stored."""
    return set(conn.execute(select(tasks.c.id).where(tasks.c.id.in_(ids))).scalars())


def _begin(conn: Connection) -> None:
    """What a write transaction starts afresh: its tallies and its owners' counts."""
    rollups.begin(conn)
    conn.info[_UNFINISHED] = {}


class SqlStore:
    """The `Store` in SQL. Reads run directly; writes go through group commit."""

    def __init__(self, runner: Runner, *, node_id: str = "") -> None:
        self.runner = runner
        self.node_id = node_id  # whose rollup rows this store's tallies go to
        self.writes = GroupCommitter(self._transaction)
        self.is_postgres = runner.dialect == "postgresql"
        self._upsert_rollups = Statement(rollups.upsert_statement(runner.dialect))

    @classmethod
    def open(
        cls,
        url: str,
        *,
        pool_size: int | None = None,
        node_id: str = "",
        sqlite_synchronous: Synchronous | None = None,
    ) -> SqlStore:
        """The store at `url`. A node passes its settings (TASKYARD_DB_POOL_SIZE,
        TASKYARD_SQLITE_SYNCHRONOUS); a test or a tool that leaves one out gets its default."""
        runner = open_runner(
            url,
            pool_size=pool_size if pool_size is not None else _setting_default("db_pool_size"),
            sqlite_synchronous=sqlite_synchronous or _setting_default("sqlite_synchronous"),
        )
        return cls(runner, node_id=node_id)

    async def _transaction(self, ops: list[Any]) -> list[Any]:
        """Run `ops` in one transaction, and with them the rollups of the tallies their
        matched updates recorded (`rollups.record`)."""
        results = await self.runner.transaction([_begin, *ops, self._write_rollups])
        return results[1:-1]

    def _write_rollups(self, conn: Connection) -> None:
        rows = rollups.pending_rows(conn, node_id=self.node_id)
        if rows:
            self._upsert_rollups.many(conn, rows)

    async def close(self) -> None:
        await self.writes.close()
        await self.runner.close()

    async def ping(self) -> None:
        await self.runner.read(lambda conn: conn.execute(text("SELECT 1")).scalar())

    # ---- tasks -------------------------------------------------------------------------

    async def add_task(self, task: Task, *, unfinished_cap: int = 0) -> None:
        await self.add_tasks([task], unfinished_cap=unfinished_cap)

    async def add_tasks(self, batch: Iterable[Task], *, unfinished_cap: int = 0) -> None:
        """Insert many tasks in one transaction, each counted as created. With a cap, none is
        stored (QuotaExceeded) if their owner would then have more than `unfinished_cap`
        WAITING or PROCESSING tasks, counted in the same transaction."""
        stored = list(batch)
        if not stored:
            return

        def insert_and_count(conn: Connection, batch: list[Task]) -> int | None:
            if not batch:
                return None
            if unfinished_cap:
                unfinished = self._unfinished_count(conn, batch[0].owner, unfinished_cap)
                if unfinished + len(batch) > unfinished_cap:
                    return unfinished  # refused: nothing written, the batch's others go on
            rows = [rowmap.task_row(task) for task in batch]
            queries.insert_tasks(tuple(rows[0])).many(conn, rows)
            if unfinished_cap:
                conn.info[_UNFINISHED][batch[0].owner] += len(batch)
            rollups.record(conn, [Tally(Event.CREATED, t.created_at, t.model) for t in batch])
            return None

        ids = [task.id for task in stored]

        def replay(conn: Connection) -> int | None:
            # After a COMMIT that got no answer: store (and count) only what did not make it.
            found = _stored_ids(conn, ids)
            return insert_and_count(conn, [task for task in stored if task.id not in found])

        try:
            refused = await self.writes.run(
                lambda conn: insert_and_count(conn, stored), replay=replay, shed=True
            )
        except sqlalchemy.exc.IntegrityError as exc:
            # The domain's error when it is a taken id (the primary key); the driver's for
            # anything else.
            found = await self.runner.read(lambda conn: _stored_ids(conn, ids))
            taken = errors.TaskExists.among(ids, found)
            if taken is None:
                raise
            raise taken from exc
        if refused is not None:
            raise errors.QuotaExceeded.unfinished(stored[0].owner, refused, unfinished_cap)

    def _unfinished_count(self, conn: Connection, owner: str, cap: int) -> int:
        """`owner`'s WAITING + PROCESSING tasks, counted up to `cap` (no further: past it the
        answer is the same). On PostgreSQL a per-owner advisory lock first, so that creates of
        one owner on several nodes count one after the other and cannot both take the last
        place; other owners do not wait.

        Once per owner and transaction: the lock holds until the commit, so the count stays
        right with this transaction's own inserts added (`insert_and_count`); a group commit of
        many creates by one user paid a lock and a count each (two round trips a task on
        PostgreSQL). A task of the owner finished later in the same transaction is still
        counted: the cap is then kept a task early, never overrun."""
        counts: dict[str, int] = conn.info[_UNFINISHED]
        if owner not in counts:
            if self.is_postgres:
                conn.execute(queries.LOCK_OWNER, {"owner": owner})
            found = conn.execute(queries.UNFINISHED_COUNT, {"owner": owner, "cap": cap})
            counts[owner] = int(found.scalar_one())
        return counts[owner]

    async def get_task(self, task_id: str) -> Task | None:
        if not storable_text(task_id):
            return None  # no stored id has a NUL in it; PostgreSQL would refuse the query

        rows = await self.runner.fetch(queries.GET_TASK, {"task_id": task_id})
        return rowmap.task_from_columns(rows[0]) if rows else None

    async def claim_tasks(self, *, now: int, plan: ClaimPlan) -> list[bool]:
        """Run `plan` on fresh data under the cluster-wide dispatch lock; apply its updates.

        On PostgreSQL the transaction first takes an advisory lock that only claims take, so
        the in-flight counts `plan` sees are exact across every node until this commits: a
        server's max_concurrency holds cluster-wide. The due tasks are read `FOR UPDATE SKIP
        LOCKED`, so a claim never waits on a task another writer holds (a cancel, say).
        SQLite has one writer, which serializes claims by itself.
        """

        def op(conn: Connection) -> list[bool]:
            if self.is_postgres:
                conn.execute(queries.DISPATCH_LOCK)
            servers = [
                rowmap.server_from_columns(row)
                for row in queries.LIST_SERVERS_DIRECT.rows(conn, {})
            ]

            def waiting(limit: int, models: Collection[str] | None) -> list[Task]:
                names = sorted(models) if models is not None else None
                if names == []:
                    return []  # no model is served: nothing can match
                query = queries.claim_statement(None if names is None else len(names))
                params: dict[str, Any] = {"now": now, "limit": limit}
                params |= {f"model_{i}": name for i, name in enumerate(names or ())}
                return [rowmap.task_from_columns(row) for row in query.rows(conn, params)]

            return [queries.apply(conn, update) for update in plan(servers, waiting)]

        if self.is_postgres:
            # A transaction of its own: in a group commit, the dispatch lock would be taken
            # between creates' per-owner locks, in either order (a deadlock across nodes).
            won: list[bool] = (await self._transaction([op]))[0]
        else:  # with the writes queued before it (creates: `Dispatcher.claim_alongside`)
            won = await self.writes.run(op)
        return won

    async def has_due_tasks(self, *, now: int) -> bool:
        """Whether any WAITING task is due: the dispatcher's cheap first question."""
        return bool(await self.runner.fetch(queries.ANY_DUE_DIRECT, {"now": now}))

    async def next_due_at(self) -> int | None:
        """When the earliest WAITING task becomes due (retry backoff), if any."""
        value = await self.runner.read(lambda conn: conn.execute(queries.NEXT_DUE).scalar())
        return int(value) if value is not None else None

    async def expired_attempts(self, *, now: int, limit: int) -> list[Task]:
        return await self._tasks(queries.expired_attempts_query(now, limit))

    async def expired_in_queue(self, *, now: int, limit: int) -> list[Task]:
        return await self._tasks(queries.expired_in_queue_query(now, limit))

    async def processing_on(self, server_ids: Iterable[str]) -> list[Task]:
        query = select(tasks).where(IS_PROCESSING, tasks.c.server_id.in_(list(server_ids)))
        return await self._tasks(query)

    async def orphaned_attempts(self, *, limit: int) -> list[Task]:
        """Attempts that no backend answered yet, sent by a node that is no longer recorded
        (declared dead, or stopped before its sends finished)."""
        query = (
            select(tasks)
            .where(
                IS_PROCESSING,
                tasks.c.acked.is_(False),
                tasks.c.node_id.not_in(select(nodes.c.id)),
            )
            .order_by(tasks.c.id)
            .limit(limit)
        )
        return await self._tasks(query)

    async def update_tasks(self, updates: list[TaskUpdate]) -> list[bool]:
        """Apply conditional updates in one transaction; each reports whether it matched."""
        if not updates:
            return []
        return await self.writes.run(lambda conn: [queries.apply(conn, u) for u in updates])

    async def update_task(self, change: TaskUpdate) -> bool:
        return (await self.update_tasks([change]))[0]

    async def purge_tasks(self, *, finished_before: int, limit: int) -> int:
        # Its own short transaction, between the group-commit batches rather than inside one:
        # a large backlog of old results is deleted a chunk at a time, and the hot writes
        # never wait behind all of it.
        doomed = (
            select(tasks.c.id)
            .where(tasks.c.finished_at < finished_before, tasks.c.status.in_(queries.FINAL_VALUES))
            .order_by(tasks.c.finished_at)
            .limit(limit)
        )
        stmt = delete(tasks).where(tasks.c.id.in_(doomed.scalar_subquery()))
        [deleted] = await self.runner.transaction([lambda conn: conn.execute(stmt).rowcount])
        return int(deleted)

    async def count_tasks(self) -> dict[str, int]:
        query = select(tasks.c.status, func.count()).group_by(tasks.c.status)
        return await self.runner.scan(lambda conn: {r[0]: r[1] for r in conn.execute(query)})

    async def search_tasks(self, query: TaskQuery) -> list[Task]:
        return await self.runner.scan(
            lambda conn: [
                rowmap.task_from_columns(r)
                for r in rowmap.dicts(conn.execute(queries.search_query(query)))
            ]
        )

    async def queue_by_model(self, *, now: int) -> list[ModelQueue]:
        due = func.sum(case((tasks.c.next_attempt_at <= now, 1), else_=0))
        query = (
            select(tasks.c.model, func.count(), due)
            .where(IS_WAITING)
            .group_by(tasks.c.model)
            .order_by(tasks.c.model)
        )
        return await self.runner.scan(
            lambda conn: [ModelQueue(m, int(n), int(d or 0)) for m, n, d in conn.execute(query)]
        )

    async def processing_by_model(self) -> dict[str, int]:
        query = select(tasks.c.model, func.count()).where(IS_PROCESSING).group_by(tasks.c.model)
        return await self.runner.read(lambda conn: {m: int(n) for m, n in conn.execute(query)})

    async def queue_position(self, task: Task, *, limit: int) -> int:
        ahead = (
            select(tasks.c.id)
            .where(IS_WAITING, tasks.c.model == task.model, queries.ahead_of(task))
            .limit(limit)
            .subquery()
        )
        query = select(func.count()).select_from(ahead)
        return int(await self.runner.read(lambda conn: conn.execute(query).scalar() or 0))

    async def _tasks(self, query: Any) -> list[Task]:
        return await self.runner.read(
            lambda conn: [
                rowmap.task_from_columns(row) for row in rowmap.dicts(conn.execute(query))
            ]
        )

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
        unknown = set(group_by) - GROUPABLE
        if unknown:
            raise ValueError(f"tallies cannot be grouped by {sorted(unknown)}")
        query = rollups.sums_query(
            since=since,
            events=[e.value for e in events],
            group_by=sorted(group_by),
            period_ms=period_ms,
            server_id=server_id,
        )
        return await self.runner.scan(
            lambda conn: [rowmap.tally_sum(row) for row in conn.execute(query)]
        )

    async def prune_tallies(self, *, before: int) -> int:
        stmt = rollups.prune_statement(before)
        return await self.writes.run(lambda conn: conn.execute(stmt).rowcount)

    # ---- servers -----------------------------------------------------------------------

    async def put_server(self, server: Server) -> None:
        """Insert or replace a server registration."""
        row = rowmap.server_row(server)
        stmt = (pg_insert if self.is_postgres else sqlite_insert)(servers).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[servers.c.id], set_={k: stmt.excluded[k] for k in row if k != "id"}
        )
        await self.writes.run(lambda conn: conn.execute(stmt))

    async def get_server(self, server_id: str) -> Server | None:
        found = await self._servers(server_id)
        return found[0] if found else None

    async def get_servers(self, server_ids: Collection[str]) -> list[Server]:
        params = {"server_ids": list(server_ids)}
        return await self.runner.read(
            lambda conn: [
                rowmap.server_from_columns(row)
                for row in rowmap.dicts(conn.execute(queries.GET_SERVERS, params))
            ]
        )

    async def list_servers(self) -> list[Server]:
        return await self._servers(None)

    async def offline_servers(self, *, since_before: int) -> list[Server]:
        return await self.runner.read(
            lambda conn: [
                rowmap.server_from_columns(row)
                for row in queries.OFFLINE_SERVERS.rows(conn, {"before": since_before})
            ]
        )

    async def update_server(
        self,
        server_id: str,
        patch: ServerPatch,
        *,
        revision: str | None = None,
        expect: ServerPatch | None = None,
        lazy: bool = False,
    ) -> bool:
        params = rowmap.server_patch_row(patch)
        expected = rowmap.server_patch_row(expect) if expect is not None else {}
        stmt = queries.server_update(tuple(params), revision is not None, tuple(expected))
        params |= {f"_expect_{k}": v for k, v in expected.items()}
        params |= {"_server_id": server_id, "_revision": revision}
        return await self.writes.run(lambda conn: stmt.rowcount(conn, params) > 0, lazy=lazy)

    async def increment_server(
        self, server_id: str, counter: ServerCounter, *, revision: str
    ) -> int | None:
        if counter not in queries.SERVER_COUNTERS:
            raise ValueError(f"servers.{counter} is not a counter")
        column = servers.c[counter]
        stmt = (
            update(servers)
            .where(servers.c.id == server_id, servers.c.revision == revision)
            .values({column: column + 1})
            .returning(column)
        )

        def op(conn: Connection) -> int | None:
            row = conn.execute(stmt).first()
            return int(row[0]) if row else None

        return await self.writes.run(op)

    async def delete_servers(self, server_ids: Collection[str]) -> list[str]:
        """Delete servers and their held slots; return the ids that existed."""
        ids = list(server_ids)
        if not ids:
            return []
        stmt = delete(servers).where(servers.c.id.in_(ids)).returning(servers.c.id)

        def op(conn: Connection) -> list[str]:
            conn.execute(holds.of_servers(ids))
            return [row[0] for row in conn.execute(stmt)]

        return await self.writes.run(op)

    # ---- held slots and cancels --------------------------------------------------------

    async def due_cancels(self, *, now: int, limit: int) -> list[SlotHold]:
        query = holds.due_cancels(now, limit)
        return await self.runner.read(
            lambda conn: [holds.from_row(row) for row in conn.execute(query)]
        )

    async def claim_cancel(self, hold: SlotHold, *, next_try_at: int | None) -> bool:
        stmt = holds.claim_cancel(hold, next_try_at)
        return await self.writes.run(lambda conn: conn.execute(stmt).rowcount > 0)

    async def release_holds(
        self, task_id: str, *, attempt: int | None = None, server_id: str | None = None
    ) -> int:
        stmt = holds.release(task_id, attempt, server_id)
        return await self.writes.run(lambda conn: conn.execute(stmt).rowcount)

    async def prune_holds(self, *, now: int) -> int:
        return await self.writes.run(lambda conn: conn.execute(holds.PRUNE, {"now": now}).rowcount)

    async def _servers(self, server_id: str | None) -> list[Server]:
        query = queries.LIST_SERVERS_DIRECT if server_id is None else queries.GET_SERVER_DIRECT
        rows = await self.runner.fetch(query, {"server_id": server_id})
        return [rowmap.server_from_columns(row) for row in rows]

    # ---- nodes -------------------------------------------------------------------------

    async def touch_node(self, *, node_id: str, host: str, now: int) -> None:
        def op(conn: Connection) -> None:
            result = conn.execute(
                update(nodes).where(nodes.c.id == node_id).values(last_seen_at=now)
            )
            if result.rowcount == 0:
                conn.execute(
                    insert(nodes).values(id=node_id, host=host, started_at=now, last_seen_at=now)
                )

        await self.writes.run(op)

    async def list_nodes(self) -> list[Node]:
        """Every recorded node, with the leases it holds."""

        def op(conn: Connection) -> list[Node]:
            held: dict[str, list[str]] = {}
            for lease in conn.execute(select(leases).order_by(leases.c.name)):
                held.setdefault(lease.holder, []).append(lease.name)
            return [
                Node(
                    id=row.id,
                    host=row.host,
                    started_at=row.started_at,
                    last_seen_at=row.last_seen_at,
                    leases=tuple(held.get(row.id, ())),
                )
                for row in conn.execute(select(nodes).order_by(nodes.c.started_at, nodes.c.id))
            ]

        return await self.runner.read(op)

    async def delete_nodes(self, node_ids: Collection[str]) -> None:
        ids = list(node_ids)
        if ids:
            stmt = delete(nodes).where(nodes.c.id.in_(ids))
            await self.writes.run(lambda conn: conn.execute(stmt))

    async def notify(self, channel: str, payloads: list[str]) -> None:
        """PostgreSQL NOTIFY, sent when the next group commit is durable."""
        stmt = select(func.pg_notify(channel, bindparam("payload")))

        def op(conn: Connection) -> None:
            for payload in payloads:
                conn.execute(stmt, {"payload": payload})

        await self.writes.run(op)

    # ---- leases ------------------------------------------------------------------------

    async def acquire_lease(self, name: str, *, holder: str, now: int, ttl_ms: int) -> bool:
        """Take or renew the lease `name` unless another holder's is still valid."""
        values = {"holder": holder, "expires_at": now + ttl_ms}
        take = (
            update(leases)
            .where(
                leases.c.name == name,
                or_(leases.c.holder == holder, leases.c.expires_at < now),
            )
            .values(values)
        )
        create = (
            (pg_insert if self.is_postgres else sqlite_insert)(leases)
            .values(name=name, **values)
            .on_conflict_do_nothing(index_elements=[leases.c.name])
        )

        def op(conn: Connection) -> bool:
            return conn.execute(take).rowcount > 0 or conn.execute(create).rowcount > 0

        return await self.writes.run(op)

    async def release_leases(self, *, holder: str) -> None:
        stmt = delete(leases).where(leases.c.holder == holder)
        await self.writes.run(lambda conn: conn.execute(stmt))
