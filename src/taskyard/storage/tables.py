"""SQLAlchemy Core tables: the schema, and Alembic's target. Times are epoch milliseconds."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    false,
    literal_column,
    or_,
    true,
)

metadata = MetaData()

ID = String(128)

tasks = Table(
    "tasks",
    metadata,
    Column("id", ID, primary_key=True),
    Column("owner", String(256), nullable=False),
    Column("model", String(256), nullable=False),
    Column("request", Text, nullable=False),  # JSON text
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer, nullable=False),
    Column("timeout_s", Float, nullable=False),
    Column("server_id", ID, nullable=True),
    Column("node_id", String(64), nullable=True),  # coordinator that sent the current attempt
    Column("acked", Boolean, nullable=False, server_default=false()),  # backend answered the send
    Column("result", Text, nullable=True),  # JSON text
    Column("progress", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("callback_url", Text, nullable=True),
    Column("attempts", Text, nullable=False, server_default="[]"),  # JSON list of attempts
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("started_at", BigInteger, nullable=True),
    Column("finished_at", BigInteger, nullable=True),
    Column("deadline_at", BigInteger, nullable=True),
    Column("next_attempt_at", BigInteger, nullable=False, server_default="0"),
    Column("queue_deadline_at", BigInteger, nullable=True),
    Column("attempt_base", Integer, nullable=False, server_default="0"),  # before a manual retry
    # In-flight counts per server, and re-queueing a removed server's tasks.
    Index("ix_tasks_server", "server_id", "status"),
    Index("ix_tasks_finished", "finished_at"),
    # Search (`GET /api/tasks`), newest first: everyone's tasks, and one owner's.
    Index("ix_tasks_created", "created_at", "id"),
    Index("ix_tasks_owner_created", "owner", "created_at", "id"),
)


def status_is(status: str) -> ColumnElement[bool]:
    """`tasks.status = '<status>'` with the status written into the SQL, not bound.

    A query can use a partial index only when the planner can prove from the query's own text
    that its rows satisfy the index's WHERE: PostgreSQL's generic plans (asyncpg prepares every
    statement) cannot see a bound parameter's value. The partial indexes below and the queries
    that rely on them share these expressions.
    """
    return tasks.c.status == literal_column(f"'{status}'")


IS_WAITING = status_is("WAITING")
IS_PROCESSING = status_is("PROCESSING")

# The hot queries each walk one of these partial indexes in the query's own ORDER BY, so their
# cost follows the rows they return, not the depth of the queue. They are partial, not led by
# `status`: without statistics (SQLite never runs ANALYZE here) SQLite's planner takes any
# `status = ?` index prefix for a few rows and would sort every WAITING row instead.

# The claim: due WAITING tasks by priority, then FIFO (`sql._waiting_query`), and the
# dispatcher's "anything due?" probe, the same walk stopped at the first due task. Nothing else
# indexes WAITING tasks by next_attempt_at: PostgreSQL's generic plans, which do not know `now`,
# took such an index's `<= now` range for selective and sorted the queue again.
Index(
    "ix_tasks_waiting",
    tasks.c.priority.desc(),
    tasks.c.created_at,
    tasks.c.id,
    sqlite_where=IS_WAITING,
    postgresql_where=IS_WAITING,
)
# The queue-deadline sweep; only tasks that have a queue deadline.
_HAS_QUEUE_DEADLINE = and_(IS_WAITING, tasks.c.queue_deadline_at.is_not(None))
Index(
    "ix_tasks_queue_deadline",
    tasks.c.queue_deadline_at,
    tasks.c.id,
    sqlite_where=_HAS_QUEUE_DEADLINE,
    postgresql_where=_HAS_QUEUE_DEADLINE,
)
# The cap on a user's unfinished tasks (`sql._unfinished_count`): counted at each create, so
# it walks only that owner's WAITING and PROCESSING tasks, never their history. `owner <> ''`
# is in its predicate only so that no other query can use it: PostgreSQL took it for the
# claim (every WAITING task, in no order, then a sort), as the predicate alone is implied by
# `status = 'WAITING'`. The count states both halves.
IS_UNFINISHED = and_(or_(IS_WAITING, IS_PROCESSING), tasks.c.owner != literal_column("''"))
Index(
    "ix_tasks_owner_unfinished",
    tasks.c.owner,
    sqlite_where=IS_UNFINISHED,
    postgresql_where=IS_UNFINISHED,
)
# The attempt-deadline sweep, and the scan for attempts of lost nodes.
Index(
    "ix_tasks_attempt_deadline",
    tasks.c.deadline_at,
    tasks.c.id,
    sqlite_where=IS_PROCESSING,
    postgresql_where=IS_PROCESSING,
)

servers = Table(
    "servers",
    metadata,
    Column("id", ID, primary_key=True),
    Column("name", String(256), nullable=False),
    Column("provider", String(256), nullable=False),
    Column("predict_url", String(2048), nullable=False),
    Column("health_url", String(2048), nullable=True),
    Column("is_async", Boolean, nullable=False),
    Column("callback", Boolean, nullable=False),
    Column("max_concurrency", Integer, nullable=False),
    Column("models", Text, nullable=False),  # JSON list
    Column("weight", Float, nullable=False),
    Column("extra", Text, nullable=False, server_default="{}"),  # other registration fields
    Column("status", String(16), nullable=False),
    Column("registered_at", BigInteger, nullable=False),
    Column("last_heartbeat", BigInteger, nullable=True),
    Column("last_check_at", BigInteger, nullable=True),
    Column("last_success_at", BigInteger, nullable=True),
    Column("offline_since", BigInteger, nullable=True),
    Column("consecutive_successes", Integer, nullable=False, server_default="0"),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("dispatch_failures", Integer, nullable=False, server_default="0"),
    Column("check_interval_s", Float, nullable=False),
    Column("next_check_at", BigInteger, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    Column("reported_load", Text, nullable=True),  # JSON from the last heartbeat
    Column("checked_by", String(64), nullable=True),  # node that ran the last health check
    # New at each registration: writes for an older registration match nothing.
    Column("revision", String(32), nullable=False, server_default="0"),
    Column("cancel_url", String(2048), nullable=True),
    Column("api_key", Text, nullable=True),  # the backend's credential; never shown
    Column("auto_remove", Boolean, nullable=False, server_default=true()),
    Column("maintenance", Boolean, nullable=False, server_default=false()),
    Column("maintenance_reason", Text, nullable=True),
    Column("maintenance_since", BigInteger, nullable=True),
    Column("consecutive_rejections", Integer, nullable=False, server_default="0"),
    Column("ejected", Boolean, nullable=False, server_default=false()),
    Column("ejected_until", BigInteger, nullable=True),
    Column("ejections", Integer, nullable=False, server_default="0"),
    Column("ejection_reason", String(32), nullable=True),
    Index("ix_servers_status", "status"),
)

# Backend slots still counted after their attempt ended here (domain SlotHold): cancelled or
# timed-out attempts the backend may still be running, and the cancels owed to it. A row is
# written with the state change that ends the attempt, so a crash cannot forget it.
slot_holds = Table(
    "slot_holds",
    metadata,
    Column("task_id", ID, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("server_id", ID, nullable=False),
    Column("held_until", BigInteger, nullable=False),
    Column("cancel_due_at", BigInteger, nullable=True),  # NULL: no cancel to send
    Column("cancel_tries", Integer, nullable=False, server_default="0"),
    # In-flight counts per server; the cancel sender's "what is due" and the grace sweep.
    Index("ix_slot_holds_server", "server_id"),
    Index("ix_slot_holds_cancel_due", "cancel_due_at"),
    Index("ix_slot_holds_held_until", "held_until"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("started_at", BigInteger, nullable=False),
    Column("last_seen_at", BigInteger, nullable=False),
    Column("host", String(256), nullable=False),
)

# Cluster-wide duties held by one node at a time (e.g. "chores"), renewed before they expire.
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

# Per-minute rollups of the statistics' tallies (domain/tallies.py), one row per minute, node
# and group. Each node writes only its own rows, so nodes never wait on each other's counters;
# reads sum over nodes. Empty strings, not NULLs, stand for "not applicable" so that the
# primary key (which the upserts conflict on) covers every row. Kept for a day and an hour.
stat_rollups = Table(
    "stat_rollups",
    metadata,
    Column("minute", BigInteger, primary_key=True),  # epoch ms of the minute's start
    Column("node_id", String(64), primary_key=True),
    Column("event", String(16), primary_key=True),
    Column("model", String(256), primary_key=True),
    Column("server_id", ID, primary_key=True),
    Column("code", String(64), primary_key=True),
    Column("bucket", Integer, primary_key=True),  # histogram bucket, -1 for plain counts
    Column("count", BigInteger, nullable=False),
    Column("total_ms", BigInteger, nullable=False),
    # Reads of a few events over many minutes (the hourly counts over a day) skip the rest.
    Index("ix_stat_rollups_event", "event", "minute"),
)
