"""Rows and domain objects: the one place that knows how a `Task` or a `Server` is stored, and
how a change of one (`TaskPatch`, `ServerPatch`) is written.

Domain fields and columns share their names; JSON fields (a task's request, result and
attempts; a server's models, extra fields and reported load) are stored as JSON text, and
statuses as their values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from sqlalchemy import Result, Row

from taskyard.domain.changes import ServerPatch, TaskPatch
from taskyard.domain.models import AttemptRecord, Server, ServerStatus, Task, TaskStatus
from taskyard.domain.tallies import TallySum

JSON_TASK_FIELDS = ("request", "result")


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def task_patch_row(patch: TaskPatch) -> dict[str, Any]:
    """The columns a task's change writes, with their values as stored, in the patch's field
    order (a statement per set of columns: `queries.update_statement`)."""
    return _task_columns(patch.changed())


def _task_columns(row: dict[str, Any]) -> dict[str, Any]:
    """Encode, in place, the JSON fields among a task's fields."""
    for key in JSON_TASK_FIELDS:
        if key in row and row[key] is not None:
            row[key] = dumps(row[key])
    if "attempts" in row:
        row["attempts"] = dumps([a.to_json() for a in row["attempts"]])
    return row


# Domain fields and columns share their names; only these differ in representation.
TASK_FIELDS = tuple(f.name for f in dataclasses.fields(Task))
SERVER_FIELDS = tuple(
    f.name for f in dataclasses.fields(Server) if f.name not in ("in_flight", "held")
)


def task_row(task: Task) -> dict[str, Any]:
    return _task_columns({name: getattr(task, name) for name in TASK_FIELDS})


def dicts(result: Result[Any]) -> list[dict[str, Any]]:
    """The rows as plain dicts, for dict lookups: a Row's attribute or mapping `.get` per
    column cost five times as much (measured: 18 vs 3.5 us for 30 columns), and so did
    `Row._fields`, which builds a new view of the keys for every row."""
    keys = tuple(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


def task_from_columns(columns: dict[str, Any]) -> Task:
    """A task from its row; a summary row (no request or result column) gives `{}` and
    None for those."""
    fields: dict[str, Any] = {name: columns.get(name) for name in TASK_FIELDS}
    request, result = columns.get("request"), columns.get("result")
    fields["request"] = orjson.loads(request) if request is not None else {}
    fields["status"] = TaskStatus(columns["status"])
    fields["result"] = orjson.loads(result) if result is not None else None
    attempts = orjson.loads(columns["attempts"])
    fields["attempts"] = tuple(AttemptRecord.from_json(a) for a in attempts)
    return Task(**fields)


def tally_sum(row: Row[Any]) -> TallySum:
    fields = row._asdict()
    # PostgreSQL's SUM of a bigint is a numeric (Decimal); a period may be too.
    for name in ("count", "total_ms", "period", "bucket"):
        if name in fields:
            fields[name] = int(fields[name] or 0)
    return TallySum(**fields)


def server_patch_row(patch: ServerPatch) -> dict[str, Any]:
    """The columns a server's change writes (or, as an `expect`, compares), with their values
    as stored, in the patch's field order."""
    return _server_columns(patch.changed())


def _server_columns(row: dict[str, Any]) -> dict[str, Any]:
    """Encode, in place, the JSON fields and the status among a server's fields."""
    for key in ("models", "extra", "reported_load"):
        if key in row and row[key] is not None:
            row[key] = dumps(list(row[key]) if key == "models" else row[key])
    if "status" in row:
        row["status"] = ServerStatus(row["status"]).value
    return row


def server_row(server: Server) -> dict[str, Any]:
    return _server_columns({name: getattr(server, name) for name in SERVER_FIELDS})


def server_from_columns(columns: dict[str, Any]) -> Server:
    fields = {name: columns[name] for name in SERVER_FIELDS}
    fields["models"] = tuple(orjson.loads(columns["models"]))
    fields["extra"] = orjson.loads(columns["extra"])
    fields["status"] = ServerStatus(columns["status"])
    load = columns["reported_load"]
    fields["reported_load"] = orjson.loads(load) if load else None
    # A held slot is as busy as a running task: the backend may still be working on it.
    held = columns["held"]
    return Server(**fields, in_flight=columns["in_flight"] + held, held=held)
