"""Option bags shared by `Client` and `AsyncClient` (keyword arguments, all optional)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypedDict


class SubmitOptions(TypedDict, total=False):
    """How a task runs (`POST /api/task` query parameters)."""

    priority: int  # -1000..1000, higher first (default 0)
    timeout_s: float  # processing deadline per attempt (default: the node's)
    max_attempts: int  # 1..100 (default: the node's)
    queue_timeout_s: float  # fail with `no_capacity_deadline` if not started by then


class TaskFilters(TypedDict, total=False):
    """Which tasks a search or a bulk change covers; every given filter must match.
    Times are epoch milliseconds or aware datetimes, both exclusive."""

    status: str | Sequence[str]  # any of these statuses
    model: str
    server_id: str
    owner: str  # admin only: a user sees only its own tasks
    error_code: str
    created_after: int | datetime
    created_before: int | datetime


class ServerFields(TypedDict, total=False):
    """What `register_server` sends besides the id and predict URL."""

    health: str  # health URL (GET, 2xx = healthy)
    cancel: str  # cancel URL, called when a running task is cancelled
    name: str
    provider: str
    is_async: bool  # the backend answers 202 and calls back
    callback: bool
    max_concurrency: int  # default 1
    models: Sequence[str]  # empty: serves any model
    weight: float
    auto_remove: bool  # remove it once it has been offline for long
    api_key: str  # sent to the backend with each call; never returned
    extra: Mapping[str, Any]  # further registration fields, stored as they are
