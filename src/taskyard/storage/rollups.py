"""The statistics' rollups in SQL: tallies gathered during a transaction, written at its end.

Store operations call `record` for each matched change; `SqlStore._transaction` runs `begin`
first and writes `pending_rows` last, in the same transaction, summed per rollup row. So a
group-commit batch of 500 finished tasks adds a few upserts, not 500, and a batch that fails
(and is retried one by one) leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Delete,
    Insert,
    Select,
    bindparam,
    delete,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from taskyard.domain.tallies import Tally
from taskyard.storage.tables import stat_rollups

_PENDING = "taskyard.tallies"  # key in the connection's info: tallies of this transaction
_KEY = ("minute", "node_id", "event", "model", "server_id", "code", "bucket")


def begin(conn: Connection) -> None:
    """Start a transaction's tallies afresh (a failed one may have left some behind)."""
    conn.info[_PENDING] = []


def record(conn: Connection, tallies: Iterable[Tally]) -> None:
    conn.info.setdefault(_PENDING, []).extend(tallies)


def pending_rows(conn: Connection, *, node_id: str) -> list[dict[str, Any]]:
    """This transaction's tallies as rollup rows, one per key, in key order (so that two
    transactions touching the same rows lock them in the same order)."""
    tallies: list[Tally] = conn.info.pop(_PENDING, [])
    sums: dict[tuple[Any, ...], list[int]] = {}
    for t in tallies:
        key = (t.minute, node_id, t.event.value, t.model, t.server_id, t.code, t.bucket)
        counted = sums.setdefault(key, [0, 0])
        counted[0] += 1
        counted[1] += t.ms or 0
    return [
        dict(zip(_KEY, key, strict=True)) | {"count": count, "total_ms": total}
        for key, (count, total) in sorted(sums.items())
    ]


def upsert_statement(dialect: str) -> Insert:
    """Add to a rollup row, creating it if needed (the same ON CONFLICT on both databases)."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    columns = (*_KEY, "count", "total_ms")
    stmt = insert(stat_rollups).values({name: bindparam(name) for name in columns})
    return stmt.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={
            "count": stat_rollups.c.count + stmt.excluded.count,
            "total_ms": stat_rollups.c.total_ms + stmt.excluded.total_ms,
        },
    )


def sums_query(
    *,
    since: int,
    events: Sequence[str],
    group_by: Sequence[str],
    period_ms: int,
    server_id: str | None,
) -> Select[Any]:
    """SUM(count), SUM(total_ms) of the rows since `since`, grouped by `group_by` (of
    TallySum's fields; `period` is the minute rounded down to `period_ms`)."""
    r = stat_rollups.c
    columns: dict[str, Any] = {
        # A literal, not a parameter: PostgreSQL matches GROUP BY expressions textually, and
        # two placeholders for one value do not match.
        "period": (r.minute - r.minute % literal_column(str(int(period_ms)))),
        "event": r.event,
        "model": r.model,
        "server_id": r.server_id,
        "code": r.code,
        "bucket": r.bucket,
    }
    grouped = [columns[name].label(name) for name in group_by]
    query = (
        select(
            func.sum(r.count).label("count"),
            func.sum(r.total_ms).label("total_ms"),
            *grouped,
        )
        .where(r.minute >= since, r.event.in_(list(events)))
        .group_by(*(columns[name] for name in group_by))
    )
    if server_id is not None:
        query = query.where(r.server_id == server_id)
    return query


def prune_statement(before: int) -> Delete:
    return delete(stat_rollups).where(stat_rollups.c.minute < before)
