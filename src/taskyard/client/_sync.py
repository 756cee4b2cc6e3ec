"""`Client`: the blocking taskyard client (made from `_async.py` by tests/sdk/unasync.py)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import httpx

from taskyard.client import _calls as calls
from taskyard.client import _models as m
from taskyard.client import _stats_models as sm
from taskyard.client._options import ServerFields, SubmitOptions, TaskFilters

T = TypeVar("T")


class Client:
    """A blocking client of one taskyard node (or a load balancer in front of several).

    Args:
        url: the node's base URL.
        token: a JWT (role `user` for tasks, `admin` for everything); sent as a Bearer token.
        timeout_s: per request, except long polls, which get their wait plus a margin.
        headers: extra headers for every request.
        transport: an httpx transport, e.g. `httpx.MockTransport` in tests.

    Every method raises a `TaskyardError`: an `APIError` subclass for an error status
    (`NotFound`, `Conflict`, ...), `TransportError` when the node does not answer.
    """

    def __init__(
        self,
        url: str = calls.DEFAULT_URL,
        token: str | None = None,
        *,
        timeout_s: float = calls.DEFAULT_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        options = calls.http_options(url, token, timeout_s=timeout_s, headers=headers)
        self.url = options["base_url"]
        self._http = httpx.Client(transport=transport, **options)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"  # never the token

    def close(self) -> None:
        """Close the connections; the client cannot be used afterwards."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, call: calls.Call[T]) -> T:
        request = calls.build(self._http, call)
        with calls.transport_errors(request):
            response = self._http.send(request)
        return calls.finish(call, response)

    def _drive(self, steps: calls.Steps) -> m.Task:
        """Make the requests of a call of several (`calls.Steps`), each answer to its step."""
        call = next(steps)
        while True:
            try:
                call = steps.send(self._run(call))
            except StopIteration as done:
                final: m.Task = done.value
                return final

    # ---- tasks --------------------------------------------------------------------------

    def submit(
        self, model: str, request: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
    ) -> m.Task:
        """Create a task for `model` with the other `request` fields; returns it once stored
        (WAITING). `task.warnings` says e.g. that no server serves the model."""
        return self._run(calls.submit(model, request, options))

    def run(
        self,
        model: str,
        request: Mapping[str, Any] | None = None,
        *,
        wait_s: float | None = None,
        **options: Unpack[SubmitOptions],
    ) -> m.Task:
        """Create a task and return it once it is final: `submit` and `wait` in one, where the
        create itself waits (`POST /api/task?wait=`, one request for a quick task).

        Raises:
            WaitTimeout: not final within `wait_s` (None: waits as long as it takes); its
                `.task` is the task as last seen.
        """
        return self._drive(calls.run_steps(model, request, options, wait_s))

    def submit_many(
        self, requests: Sequence[Mapping[str, Any]], **options: Unpack[SubmitOptions]
    ) -> list[m.Submitted]:
        """Create up to 1,000 tasks in one call and one transaction, each `request` naming its
        `model`, all with the same `options`; returns them in order once all are stored.
        None is stored if one is refused (bad input, a rate limit, the cap)."""
        return self._run(calls.submit_many(requests, options))

    def get(self, task_id: str) -> m.Task:
        """The task as it is now."""
        return self._run(calls.get_task(task_id))

    def wait(self, task_id: str, *, timeout_s: float | None = None) -> m.Task:
        """The task once it is final (FINISHED, FAILED or CANCELLED), through long polls of at
        most 60 s each; `timeout_s=None` waits as long as it takes.

        Raises:
            WaitTimeout: not final within `timeout_s`; its `.task` is the task as last seen.
        """
        return self._drive(calls.wait_steps(task_id, timeout_s))

    def cancel(self, task_id: str) -> m.Task:
        """Cancel a waiting or running task (`Conflict` if it is already final)."""
        return self._run(calls.cancel_task(task_id))

    def retry(self, task_id: str) -> m.Task:
        """Run a FAILED or CANCELLED task again, same id (`Conflict` for any other status)."""
        return self._run(calls.retry_task(task_id))

    def report(self, task_id: str, result: Mapping[str, Any]) -> m.Task:
        """PUT a backend's TaskResult (`{backend_task_id, data, metadata: {status, ...}}`);
        for admins and the backend holding the task."""
        return self._run(calls.report(task_id, result))

    def search_page(
        self,
        *,
        limit: int = calls.DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        **filters: Unpack[TaskFilters],
    ) -> m.TasksPage:
        """One page of tasks matching `filters`, newest first; pass `next_cursor` on."""
        return self._run(calls.search_page(filters, limit=limit, cursor=cursor))

    def search(
        self, *, page_size: int = calls.DEFAULT_PAGE_SIZE, **filters: Unpack[TaskFilters]
    ) -> Iterator[m.TaskSummary]:
        """Every task matching `filters`, newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = self.search_page(limit=page_size, cursor=cursor, **filters)
            yield from page.tasks
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def retry_many(
        self, *, limit: int = calls.DEFAULT_BULK_LIMIT, **filters: Unpack[TaskFilters]
    ) -> m.BulkResult:
        """Retry up to `limit` FAILED or CANCELLED tasks matching `filters` (admin)."""
        return self._run(calls.bulk("retry", filters, limit=limit))

    def cancel_many(
        self, *, limit: int = calls.DEFAULT_BULK_LIMIT, **filters: Unpack[TaskFilters]
    ) -> m.BulkResult:
        """Cancel up to `limit` waiting or running tasks matching `filters` (admin)."""
        return self._run(calls.bulk("cancel", filters, limit=limit))

    # ---- servers and nodes (admin) ------------------------------------------------------

    def servers(self) -> list[m.Server]:
        """Every registered server."""
        return self._run(calls.list_servers())

    def server(self, server_id: str) -> m.Server:
        """One server."""
        return self._run(calls.get_server(server_id))

    def register_server(
        self, server_id: str, predict: str, **fields: Unpack[ServerFields]
    ) -> m.Registered:
        """Register (or replace) a server whose predict endpoint is `predict`."""
        return self._run(calls.register_server(server_id, predict, fields))

    def delete_server(self, server_id: str) -> None:
        """Remove a server; its running tasks go back to the queue."""
        self._run(calls.delete_server(server_id))

    def heartbeat(self, server_id: str, load: Mapping[str, Any] | None = None) -> m.Heartbeat:
        """Record a sign of life (the server's own token, or an admin's), with optional load."""
        return self._run(calls.heartbeat(server_id, load))

    def set_maintenance(
        self, server_id: str, enabled: bool, *, reason: str | None = None
    ) -> m.Server:
        """Put a server in maintenance (it gets no new tasks) or take it out."""
        return self._run(calls.maintenance(server_id, enabled=enabled, reason=reason))

    def cleanup_servers(self, *, max_age_mins: float | None = None) -> list[str]:
        """Remove servers with no sign of life for `max_age_mins` (node default 5); their ids."""
        return self._run(calls.cleanup_servers(max_age_mins))

    def nodes(self) -> list[m.Node]:
        """The coordinator nodes sharing the database."""
        return self._run(calls.list_nodes())

    # ---- statistics (admin) and probes --------------------------------------------------

    def stats(self) -> sm.Stats:
        """Counts, queues, throughput and latency."""
        return self._run(calls.stats())

    def hourly_stats(self) -> sm.Hourly:
        """The last 24 hours, one entry per hour."""
        return self._run(calls.hourly_stats())

    def server_stats(self, server_id: str, *, window_min: int = 60) -> sm.ServerStats:
        """One server's attempts, failures and latency over the last `window_min` minutes."""
        return self._run(calls.server_stats(server_id, window_min=window_min))

    def health(self) -> m.Health:
        """Liveness (no token needed)."""
        return self._run(calls.health())

    def ready(self) -> m.Readiness:
        """Readiness: whether the node reaches its database (no token needed)."""
        return self._run(calls.ready())
