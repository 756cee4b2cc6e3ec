"""The queue's hot queries walk an index in their own order, on both databases.

A claim reads the first few hundred due WAITING tasks by priority, then FIFO. Over an index in
that order it stops after them; over any other plan it sorts every due task first, and dispatch
slows down as the queue grows (issue 7: half the rate with 50,000 tasks waiting). The same goes
for the "anything due?" probe, which runs every dispatcher pass, and the sweeps.

The statements are the store's own (`taskyard.storage.sql`), compiled for the database at hand,
so this follows the code. The database is migrated (the schema deployments get) and holds a
backlog with a little of everything: priorities, models, retry backoffs, queue deadlines, running
tasks and many more finished ones, as a week of retention leaves them.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, cast

import asyncpg
import pytest
from sqlalchemy import ClauseElement, Connection, Executable, Select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from taskyard.domain.models import Task, TaskStatus
from taskyard.domain.ports import TaskQuery
from taskyard.storage import queries
from taskyard.storage.migrate import upgrade
from taskyard.storage.sql import SqlStore
from tests import pg
from tests.support import fresh_database
from tests.unit.factories import make_task

NOW = 50_000_000
LIMIT = 256  # the dispatcher's default batch
MODELS = [f"m{i}" for i in range(5)]


@dataclass(frozen=True)
class Case:
    """One hot statement, the parameters it runs with, and the index that must serve it.

    `sweep`: it reads expired tasks only, which PostgreSQL may read as a bitmap of the index
    and sort when it expects few (it does here, not knowing that most tasks with an attempt
    deadline are running ones); with sorting priced out it must still find the index's order.
    `ordered=False`: it needs no order at all (an aggregate), only no rows but the index's.
    """

    name: str
    statement: Select[Any]
    index: str
    params: dict[str, Any] | None = None
    sweep: bool = False
    ordered: bool = True
    starts_at_cursor: bool = False  # a keyset page: the index is entered at the cursor


def _claim(model_count: int | None) -> Select[Any]:
    return cast(Select[Any], queries.claim_statement(model_count).stmt)


def cases() -> list[Case]:
    served = MODELS[:3]  # a claim for the models the free servers serve
    return [
        Case("claim", queries.waiting_query(NOW, LIMIT, None), "ix_tasks_waiting"),
        Case("claim for models", queries.waiting_query(NOW, LIMIT, served), "ix_tasks_waiting"),
        # As claims run: FOR UPDATE SKIP LOCKED on PostgreSQL (nothing more on SQLite).
        # The statement a claim runs, with its parameters bound (`limit` too).
        Case("claim, locking", _claim(None), "ix_tasks_waiting", {"now": NOW, "limit": LIMIT}),
        Case(
            "claim for models, locking",
            _claim(len(served)),
            "ix_tasks_waiting",
            {"now": NOW, "limit": LIMIT} | {f"model_{i}": m for i, m in enumerate(served)},
        ),
        Case("any due", queries.ANY_DUE, "ix_tasks_waiting", {"now": NOW}),
        Case("next due", queries.NEXT_DUE, "ix_tasks_waiting", ordered=False),
        Case(
            "queue-deadline sweep",
            queries.expired_in_queue_query(NOW, LIMIT),
            "ix_tasks_queue_deadline",
            sweep=True,
        ),
        Case(
            "attempt-deadline sweep",
            queries.expired_attempts_query(NOW, LIMIT),
            "ix_tasks_attempt_deadline",
            sweep=True,
        ),
        # Search pages (GET /api/tasks), newest first; a deep page starts at its cursor.
        Case("search, first page", queries.search_query(TaskQuery(limit=51)), "ix_tasks_created"),
        Case(
            "search, deep page",
            queries.search_query(TaskQuery(limit=51, before=(NOW // 2, "t-50000"))),
            "ix_tasks_created",
            starts_at_cursor=True,
        ),
        Case(
            "search, one owner",
            queries.search_query(TaskQuery(limit=51, owner="alice", before=(NOW // 2, "t"))),
            "ix_tasks_owner_created",
        ),
        # A capped create counts its owner's unfinished tasks (TASKYARD_MAX_UNFINISHED_TASKS).
        Case(
            "unfinished of one owner",
            queries.UNFINISHED_COUNT.params(owner="alice", cap=10_000),
            "ix_tasks_owner_unfinished",
            ordered=False,
        ),
    ]


CASES = cases()


def backlog() -> Iterator[Task]:
    """A deep queue as production has it, and the running and finished tasks around it."""
    rng = random.Random(7)
    for i in range(6_000):
        task = make_task(
            id=f"w{i:05}",
            model=rng.choice(MODELS),
            priority=rng.choice([0, 0, 0, 0, 1, 2, -1]),
            created_at=1_000_000 + i,
            updated_at=1_000_000 + i,
        )
        if i % 20 == 0:  # in retry backoff: not due yet
            task = replace(task, attempt=1, next_attempt_at=NOW + rng.randint(1, 60_000))
        if i % 3 == 0:  # a queue deadline; many passed (no capacity for a while)
            task = replace(task, queue_deadline_at=NOW + rng.randint(-600_000, 300_000))
        yield task
    for i in range(1_000):  # running; most past their deadline (backends that hung)
        yield make_task(
            id=f"p{i:05}",
            status=TaskStatus.PROCESSING,
            attempt=1,
            server_id=f"gpu{i % 10}",
            started_at=NOW - 30_000,
            deadline_at=NOW + rng.randint(-20_000, 5_000),
        )
    for i in range(30_000):
        yield make_task(
            id=f"f{i:05}", status=TaskStatus.FINISHED, attempt=1, finished_at=NOW - i, result={}
        )


# SQLite without statistics, as taskyard runs it (it never runs ANALYZE), and with them.
# PostgreSQL with them only: without, it cannot tell how few rows a partial index holds and
# guesses at every plan; autovacuum analyzes a table once a tenth of it has changed.
SETUPS = {"sqlite": False, "sqlite, analyzed": True, "postgresql, analyzed": True}


@pytest.fixture(scope="module", params=list(SETUPS))
def backlog_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database holding `backlog()`, made once for the module's tests."""
    kind = request.param.split(",")[0]
    with fresh_database(kind, tmp_path_factory.mktemp("plans")) as url:
        asyncio.run(_load_backlog(url, analyze=SETUPS[request.param]))
        yield url


async def _load_backlog(url: str, *, analyze: bool) -> None:
    await upgrade(url)
    store = SqlStore.open(url)
    try:
        await store.add_tasks(backlog())
        if analyze:
            await store.runner.read(lambda conn: conn.execute(text("ANALYZE")))
    finally:
        await store.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hot_query_walks_its_index_in_order(backlog_url: str, case: Case) -> None:
    store = SqlStore.open(backlog_url)
    try:
        plan = await store.runner.read(lambda conn: _plan(conn, case))
        if not store.is_postgres:
            _check(case, plan, sqlite_problems(plan, case))
            return
        _check(case, plan, postgres_problems(plan, case, may_sort=case.sweep))
        # With sorting priced out, PostgreSQL walks an index in the query's order if there is
        # one: the sweeps' indexes must have it, for a mass expiry (many more than a batch).
        plan = await store.runner.read(lambda conn: _plan(conn, case, sorting=False))
        _check(case, plan, postgres_problems(plan, case))
    finally:
        await store.close()
    # asyncpg prepares every statement, and PostgreSQL may then switch to a generic plan, made
    # without the parameters' values (`now`, the limit): the indexes must serve that plan too.
    plan = await _generic_plan(backlog_url, case)
    _check(case, plan, postgres_problems(plan, case, may_sort=case.sweep))


# ---- plans -------------------------------------------------------------------------------


class Explain(Executable, ClauseElement):
    """EXPLAIN of a statement, compiled by SQLAlchemy like the statement itself would be."""

    inherit_cache = False

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement


@compiles(Explain, "sqlite")
def _explain_sqlite(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN QUERY PLAN " + compiler.process(element.statement, **kw)


@compiles(Explain, "postgresql")
def _explain_postgresql(element: Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.statement, **kw)


def _plan(conn: Connection, case: Case, *, sorting: bool = True) -> Any:
    """SQLite: the plan's detail lines. PostgreSQL: the plan as JSON."""
    if not sorting:
        conn.execute(text("SET enable_sort = off"))
    try:
        rows = conn.execute(Explain(case.statement), case.params or {}).all()
    finally:
        if not sorting:
            conn.execute(text("RESET enable_sort"))
    if conn.dialect.name == "sqlite":
        return [row[3] for row in rows]  # (id, parent, notused, detail)
    found = rows[0][0]
    return json.loads(found) if isinstance(found, str) else found


async def _generic_plan(url: str, case: Case) -> Any:
    """PostgreSQL's plan for the statement prepared once, for any parameters."""
    compiled = case.statement.compile(
        dialect=postgresql.dialect(paramstyle="numeric_dollar"),  # type: ignore[no-untyped-call]
        compile_kwargs={"render_postcompile": True},
    )
    params = compiled.construct_params(case.params)
    args = [params[name] for name in compiled.positiontup or ()]
    conn = await asyncpg.connect(pg.dsn(url))
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE hot AS {compiled}")
        values = f"({', '.join(_literal(arg) for arg in args)})" if args else ""
        return json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE hot{values}"))
    finally:
        await conn.close()


def _literal(value: object) -> str:
    """A parameter value as SQL (EXECUTE takes no bound parameters): numbers and strings."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no literal for {value!r}")


def sqlite_problems(details: list[str], case: Case) -> list[str]:
    """A sort (a temp b-tree), or no use of the case's index."""
    problems = [f"sorts: {d!r}" for d in details if "TEMP B-TREE" in d]
    if not any(f"INDEX {case.index} " in f"{d} " for d in details):
        problems.append(f"does not use {case.index}")
    if case.starts_at_cursor and not any(d.startswith("SEARCH") for d in details):
        problems.append("scans up to the cursor instead of starting there")
    return problems


_ORDERED_SCANS = {"Index Scan", "Index Only Scan"}
_INDEX_READS = _ORDERED_SCANS | {"Bitmap Heap Scan"}  # table rows by a bitmap of entries


def postgres_problems(explained: Any, case: Case, *, may_sort: bool = False) -> list[str]:
    """Reading tasks other than through the case's index, and, where the case needs an order
    (unless `may_sort`), a sort or a scan of the index out of its order (a bitmap)."""
    nodes = list(_nodes(explained[0]["Plan"]))
    problems = [
        f"reads tasks by {n['Node Type']} {n.get('Index Name', '')}".strip()
        for n in nodes
        if (n.get("Relation Name") == "tasks" and n["Node Type"] not in _INDEX_READS)
        or n.get("Index Name", case.index) != case.index
    ]
    scans = {n["Node Type"] for n in nodes if n.get("Index Name") == case.index}
    if not scans:
        problems.append(f"does not use {case.index}")
    if case.ordered and not may_sort:
        problems += [f"sorts: {n['Node Type']}" for n in nodes if "Sort" in n["Node Type"]]
        if not scans <= _ORDERED_SCANS:
            problems.append(f"reads {case.index} out of order: {sorted(scans)}")
    return problems


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _check(case: Case, plan: Any, problems: list[str]) -> None:
    assert not problems, f"{case.name}: {'; '.join(problems)}\nplan: {json.dumps(plan, indent=1)}"
