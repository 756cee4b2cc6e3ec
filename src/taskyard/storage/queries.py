"""The statements and query builders `SqlStore` runs: built once where they are hot (building and
cache-keying a statement per call costs more than running it), each walking the index
tests/storage/test_query_plans.py checks it walks, on both databases."""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any, get_args

from sqlalchemy import (
    Connection,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    func,
    insert,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)

from taskyard.domain.changes import ServerCounter
from taskyard.domain.models import (
    ServerStatus,
    Task,
    TaskStatus,
)
from taskyard.domain.ports import TaskQuery, TaskUpdate
from taskyard.storage import holds, rollups
from taskyard.storage import rows as rowmap  # (`rows` is a common local name here)
from taskyard.storage.direct import Statement
from taskyard.storage.tables import (
    IS_PROCESSING,
    IS_UNFINISHED,
    IS_WAITING,
    servers,
    tasks,
)

# Hot statements are built once: building and cache-keying a statement per call costs more
# than running it.
GET_TASK = Statement(select(tasks).where(tasks.c.id == bindparam("task_id")))
# Each server with its count of running tasks, in one round trip (ix_tasks_server).
IN_FLIGHT = (
    select(func.count())
    .where(tasks.c.server_id == servers.c.id, IS_PROCESSING)
    .scalar_subquery()
    .label("in_flight")
)
DISPATCH_LOCK = select(func.pg_advisory_xact_lock(0x7461736B))  # "task" in ASCII


# How many WAITING or PROCESSING tasks :owner has, counted no further than :cap. Built once:
# it runs at every capped create, inside the write batch, where building and compiling a
# statement per call cost four times what SQLite takes to run it.
UNFINISHED_COUNT = select(func.count()).select_from(
    select(literal_column("1"))
    .where(tasks.c.owner == bindparam("owner"), IS_UNFINISHED)
    .limit(bindparam("cap", type_=Integer))
    .subquery()
)


OWNER_LOCK = 0x6F776E72  # "ownr": with hashtext(owner), the lock of one owner's creates

# PostgreSQL: the transaction's lock on one owner's creates (`owner` bound).
LOCK_OWNER = select(func.pg_advisory_xact_lock(OWNER_LOCK, func.hashtext(bindparam("owner"))))

# The queries on WAITING or PROCESSING tasks say so with `IS_WAITING` / `IS_PROCESSING`, the
# predicates of the partial indexes they walk (tables.py); tests/storage/test_query_plans.py
# checks both databases' plans for each of them.
QUEUE_ORDER = (tasks.c.priority.desc(), tasks.c.created_at, tasks.c.id)  # ix_tasks_waiting
# The first due task in claim order: the claim's walk, stopped at one. (The ORDER BY also keeps
# PostgreSQL from a sequential scan that hopes to meet a due row early, while a week of
# finished tasks lies ahead of the waiting ones in the table.)
ANY_DUE = (
    select(tasks.c.id)
    .where(IS_WAITING, tasks.c.next_attempt_at <= bindparam("now"))
    .order_by(*QUEUE_ORDER)
    .limit(1)
)
ANY_DUE_DIRECT = Statement(ANY_DUE)
# Reads all of ix_tasks_waiting, not the table: the WAITING rows, in no order. (An index led by
# next_attempt_at would answer at once, but misled claims; the dispatcher does not ask this.)
NEXT_DUE = select(func.min(tasks.c.next_attempt_at)).where(IS_WAITING)
LIST_SERVERS = select(servers, IN_FLIGHT, holds.HELD).order_by(servers.c.id)
LIST_SERVERS_DIRECT = Statement(LIST_SERVERS)
GET_SERVER = LIST_SERVERS.where(servers.c.id == bindparam("server_id"))
GET_SERVER_DIRECT = Statement(GET_SERVER)
OFFLINE_SERVERS = Statement(
    LIST_SERVERS.where(
        servers.c.status == ServerStatus.OFFLINE.value,
        servers.c.offline_since < bindparam("before"),
    )
)
GET_SERVERS = LIST_SERVERS.where(servers.c.id.in_(bindparam("server_ids", expanding=True)))


def waiting_query(now: Any, limit: Any, models: Collection[Any] | None) -> Select[Any]:
    """Due WAITING tasks, by priority then FIFO; only `models` when given (values, or bound
    parameters as the claim's statement has them).

    It walks ix_tasks_waiting in this very order and stops after `limit` matches, so a claim
    costs the same with 1,000 or 50,000 tasks waiting (no sort of the whole queue). Tasks in
    retry backoff or for models no free server serves are skipped on the way.
    """
    query = (
        select(tasks)
        .where(IS_WAITING, tasks.c.next_attempt_at <= now)
        .order_by(*QUEUE_ORDER)
        .limit(limit)
    )
    if models is not None:
        query = query.where(tasks.c.model.in_(list(models)))
    return query


SUMMARY_COLUMNS = [c for c in tasks.c if c.name not in ("request", "result")]


def search_query(query: TaskQuery) -> Select[Any]:
    """A search page, newest first: it walks ix_tasks_created (or ix_tasks_owner_created
    for one owner) backwards from the cursor and stops after `limit` matches."""
    stmt = (
        select(*SUMMARY_COLUMNS)
        .order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
        .limit(query.limit)
    )
    if query.statuses:
        stmt = stmt.where(tasks.c.status.in_([s.value for s in query.statuses]))
    for column, value in (
        (tasks.c.model, query.model),
        (tasks.c.server_id, query.server_id),
        (tasks.c.owner, query.owner),
        (tasks.c.error_code, query.error_code),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if query.created_after is not None:
        stmt = stmt.where(tasks.c.created_at > query.created_after)
    if query.created_before is not None:
        stmt = stmt.where(tasks.c.created_at < query.created_before)
    if query.before is not None:
        # A row-value comparison, which both databases turn into a range of the index (the
        # same condition spelled with OR is a filter on every row before the cursor).
        created_at, task_id = query.before
        stmt = stmt.where(tuple_(tasks.c.created_at, tasks.c.id) < tuple_(created_at, task_id))
    return stmt


def ahead_of(task: Task) -> Any:
    """Tasks before `task` in claim order: higher priority, or older, or the same with a
    smaller id (the order of ix_tasks_waiting)."""
    c = tasks.c
    return or_(
        c.priority > task.priority,
        and_(c.priority == task.priority, c.created_at < task.created_at),
        and_(c.priority == task.priority, c.created_at == task.created_at, c.id < task.id),
    )


@functools.lru_cache(maxsize=64)
def claim_statement(model_count: int | None) -> Statement:
    """`waiting_query` as a claim reads it, with parameters (`now`, `limit`, `model_<i>`):
    one compiled statement per number of models. Rows another writer holds are skipped, not
    awaited (PostgreSQL; SQLite has one writer and no row locks)."""
    models: list[Any] | None = (
        None if model_count is None else [bindparam(f"model_{i}") for i in range(model_count)]
    )
    query = waiting_query(bindparam("now"), bindparam("limit"), models)
    return Statement(query.with_for_update(skip_locked=True))


# Both sweeps read expired tasks in the order of their index: (deadline, id). Every node sweeps
# in that one total order (a deadline does not change while the task is in the swept state), so
# two nodes updating the same rows take their locks in the same order and never deadlock.


def expired_attempts_query(now: int, limit: int) -> Select[Any]:
    """PROCESSING tasks past their attempt deadline, earliest first (ix_tasks_attempt_deadline)."""
    return (
        select(tasks)
        .where(IS_PROCESSING, tasks.c.deadline_at < now)
        .order_by(tasks.c.deadline_at, tasks.c.id)
        .limit(limit)
    )


def expired_in_queue_query(now: int, limit: int) -> Select[Any]:
    """WAITING tasks past their queue deadline, earliest first (ix_tasks_queue_deadline)."""
    return (
        select(tasks)
        .where(IS_WAITING, tasks.c.queue_deadline_at < now)
        .order_by(tasks.c.queue_deadline_at, tasks.c.id)
        .limit(limit)
    )


FINAL = (TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.CANCELLED)
FINAL_VALUES = [s.value for s in FINAL]


# The parameters of the expected statuses, by position (w_s0, w_s1...).
_EXPECTED_STATUS = tuple(f"w_s{i}" for i in range(len(TaskStatus)))


def apply(conn: Connection, change: TaskUpdate) -> bool:
    # The SET parameters are named by their columns; the WHERE ones start with w_.
    params = rowmap.task_patch_row(change.patch)
    statuses = change.expect_status or ()
    stmt = update_statement(
        tuple(params),  # in the patch's field order: one statement per set of columns
        len(statuses),
        change.expect_attempt is not None,
        change.expect_server is not None,
    )
    for name, status in zip(_EXPECTED_STATUS, statuses, strict=False):
        params[name] = status.value
    params["w_id"] = change.task_id
    params["w_attempt"] = change.expect_attempt
    params["w_server"] = change.expect_server
    matched = stmt.rowcount(conn, params) > 0
    if matched and change.tallies:
        rollups.record(conn, change.tallies)
    if matched and change.hold is not None:
        holds.insert_hold(conn, change.hold)
    return matched


@functools.lru_cache(maxsize=128)
def update_statement(
    columns: tuple[str, ...], statuses: int, by_attempt: bool, by_server: bool
) -> Statement:
    """One compiled shape per kind of state change, reused with new parameters."""
    stmt = update(tasks).where(tasks.c.id == bindparam("w_id"))
    if statuses:
        stmt = stmt.where(
            tasks.c.status.in_([bindparam(_EXPECTED_STATUS[i]) for i in range(statuses)])
        )
    if by_attempt:
        stmt = stmt.where(tasks.c.attempt == bindparam("w_attempt"))
    if by_server:
        stmt = stmt.where(tasks.c.server_id == bindparam("w_server"))
    return Statement(stmt.values(_set(tasks, {c: bindparam(c) for c in columns})))


@functools.lru_cache(maxsize=8)
def insert_tasks(columns: tuple[str, ...]) -> Statement:
    return Statement(insert(tasks).values({column: bindparam(column) for column in columns}))


SERVER_COUNTERS = frozenset(get_args(ServerCounter))


@functools.lru_cache(maxsize=256)
def server_update(
    columns: tuple[str, ...], by_revision: bool, expect: tuple[str, ...]
) -> Statement:
    """The UPDATE of these server columns, built once per shape and run with parameters:
    building it per call cost more than running it (a health check writes one per check)."""
    stmt = update(servers).where(servers.c.id == bindparam("_server_id"))
    if by_revision:
        stmt = stmt.where(servers.c.revision == bindparam("_revision"))
    for column in expect:
        # NULL-safe: an expected None is a value like any other.
        stmt = stmt.where(servers.c[column].is_not_distinct_from(bindparam(f"_expect_{column}")))
    return Statement(stmt.values(_set(servers, {c: bindparam(c) for c in columns})))


def _set(table: Table, values: dict[Any, Any]) -> dict[Any, Any]:
    """An UPDATE's SET clause; `id = id` for a change of nothing, which then still tells
    whether its conditions matched (an empty SET is no SQL)."""
    return values or {table.c.id: table.c.id}
