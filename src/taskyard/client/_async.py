"""`AsyncClient`: the asyncio taskyard client, `Client`'s twin."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import httpx

from taskyard.client import _calls as calls
from taskyard.client import _models as m
from taskyard.client import _stats_models as sm
from taskyard.client._options import ServerFields, SubmitOptions, TaskFilters

T = TypeVar("T")


class AsyncClient:
    """An asyncio client of one taskyard node (or a load balancer in front of several).

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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        options = calls.http_options(url, token, timeout_s=timeout_s, headers=headers)
        self.url = options["base_url"]
        self._http = httpx.AsyncClient(transport=transport, **options)

    def __repr__(self) -> str:
        return f"AsyncClient({self.url!r})"  # never the token

    async def aclose(self) -> None:
        """Close the connections; the client cannot be used afterwards."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self, call: calls.Call[T]) -> T:
        request = calls.build(self._http, call)
        with calls.transport_errors(request):
            response = await self._http.send(request)
        return calls.finish(call, response)

    async def _drive(self, steps: calls.Steps) -> m.Task:
        """Make the requests of a call of several (`calls.Steps`), each answer to its step."""
        call = next(steps)
        while True:
            try:
                call = steps.send(await self._run(call))
            except StopIteration as done:
                final: m.Task = done.value
                return final

    # ---- tasks --------------------------------------------------------------------------

    async def submit(
        self, model: str, request: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
    ) -> m.Task:
        """Create a task for `model` with the other `request` fields; returns it once stored
        (WAITING). `task.warnings` says e.g. that no server serves the model."""
        return await self._run(calls.submit(model, request, options))

    async def run(
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
        return await self._drive(calls.run_steps(model, request, options, wait_s))

    async def submit_many(
        self, requests: Sequence[Mapping[str, Any]], **options: Unpack[SubmitOptions]
    ) -> list[m.Submitted]:
        """Create up to 1,000 tasks in one call and one transaction, each `request` naming its
        `model`, all with the same `options`; returns them in order once all are stored.
        None is stored if one is refused (bad input, a rate limit, the cap)."""
        return await self._run(calls.submit_many(requests, options))

    async def get(self, task_id: str) -> m.Task:
        """The task as it is now."""
        return await self._run(calls.get_task(task_id))

    async def wait(self, task_id: str, *, timeout_s: float | None = None) -> m.Task:
        """The task once it is final (FINISHED, FAILED or CANCELLED), through long polls of at
        most 60 s each; `timeout_s=None` waits as long as it takes.

        Raises:
            WaitTimeout: not final within `timeout_s`; its `.task` is the task as last seen.
        """
        return await self._drive(calls.wait_steps(task_id, timeout_s))

    async def cancel(self, task_id: str) -> m.Task:
        """Cancel a waiting or running task (`Conflict` if it is already final)."""
        return await self._run(calls.cancel_task(task_id))

    async def retry(self, task_id: str) -> m.Task:
        """Run a FAILED or CANCELLED task again, same id (`Conflict` for any other status)."""
        return await self._run(calls.retry_task(task_id))

    async def report(self, task_id: str, result: Mapping[str, Any]) -> m.Task:
        """PUT a backend's TaskResult (`{backend_task_id, data, metadata: {status, ...}}`);
        for admins and the backend holding the task."""
        return await self._run(calls.report(task_id, result))

    async def search_page(
        self,
        *,
        limit: int = calls.DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        **filters: Unpack[TaskFilters],
    ) -> m.TasksPage:
        """One page of tasks matching `filters`, newest first; pass `next_cursor` on."""
        return await self._run(calls.search_page(filters, limit=limit, cursor=cursor))

    async def search(
        self, *, page_size: int = calls.DEFAULT_PAGE_SIZE, **filters: Unpack[TaskFilters]
    ) -> AsyncIterator[m.TaskSummary]:
        """Every task matching `filters`, newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = await self.search_page(limit=page_size, cursor=cursor, **filters)
            for task in page.tasks:
                yield task
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def retry_many(
        self, *, limit: int = calls.DEFAULT_BULK_LIMIT, **filters: Unpack[TaskFilters]
    ) -> m.BulkResult:
        """Retry up to `limit` FAILED or CANCELLED tasks matching `filters` (admin)."""
        return await self._run(calls.bulk("retry", filters, limit=limit))

    async def cancel_many(
        self, *, limit: int = calls.DEFAULT_BULK_LIMIT, **filters: Unpack[TaskFilters]
    ) -> m.BulkResult:
        """Cancel up to `limit` waiting or running tasks matching `filters` (admin)."""
        return await self._run(calls.bulk("cancel", filters, limit=limit))

    # ---- servers and nodes (admin) ------------------------------------------------------

    async def servers(self) -> list[m.Server]:
        """Every registered server."""
        return await self._run(calls.list_servers())

    async def server(self, server_id: str) -> m.Server:
        """One server."""
        return await self._run(calls.get_server(server_id))

    async def register_server(
        self, server_id: str, predict: str, **fields: Unpack[ServerFields]
    ) -> m.Registered:
        """Register (or replace) a server whose predict endpoint is `predict`."""
        return await self._run(calls.register_server(server_id, predict, fields))

    async def delete_server(self, server_id: str) -> None:
        """Remove a server; its running tasks go back to the queue."""
        await self._run(calls.delete_server(server_id))

    async def heartbeat(self, server_id: str, load: Mapping[str, Any] | None = None) -> m.Heartbeat:
        """Record a sign of life (the server's own token, or an admin's), with optional load."""
        return await self._run(calls.heartbeat(server_id, load))

    async def set_maintenance(
        self, server_id: str, enabled: bool, *, reason: str | None = None
    ) -> m.Server:
        """Put a server in maintenance (it gets no new tasks) or take it out."""
        return await self._run(calls.maintenance(server_id, enabled=enabled, reason=reason))

    async def cleanup_servers(self, *, max_age_mins: float | None = None) -> list[str]:
        """Remove servers with no sign of life for `max_age_mins` (node default 5); their ids."""
        return await self._run(calls.cleanup_servers(max_age_mins))

    async def nodes(self) -> list[m.Node]:
        """The coordinator nodes sharing the database."""
        return await self._run(calls.list_nodes())

    # ---- statistics (admin) and probes --------------------------------------------------

    async def stats(self) -> sm.Stats:
        """Counts, queues, throughput and latency."""
        return await self._run(calls.stats())

    async def hourly_stats(self) -> sm.Hourly:
        """The last 24 hours, one entry per hour."""
        return await self._run(calls.hourly_stats())

    async def server_stats(self, server_id: str, *, window_min: int = 60) -> sm.ServerStats:
        """One server's attempts, failures and latency over the last `window_min` minutes."""
        return await self._run(calls.server_stats(server_id, window_min=window_min))

    async def health(self) -> m.Health:
        """Liveness (no token needed)."""
        return await self._run(calls.health())

    async def ready(self) -> m.Readiness:
        """Readiness: whether the node reaches its database (no token needed)."""
        return await self._run(calls.ready())
