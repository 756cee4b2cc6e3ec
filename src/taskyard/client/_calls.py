"""Each API call as data — method, path, parameters, body, how to read the answer — so that
`Client` and `AsyncClient` only send them. Everything both clients share lives here."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from taskyard import __version__
from taskyard.client import _exceptions as exc
from taskyard.client import _models as m
from taskyard.client import _stats_models as sm
from taskyard.client._options import ServerFields, SubmitOptions, TaskFilters

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:8787"  # where `taskyard serve` listens by default
DEFAULT_TIMEOUT_S = 30.0
MAX_WAIT_S = 60.0  # the longest long poll the API grants (GET /api/task/{id}?wait=)
MAX_BATCH = 1000  # the most tasks one POST /api/tasks/batch takes
WAIT_MARGIN_S = 15.0  # beyond a long poll's wait before its request counts as timed out
DEFAULT_PAGE_SIZE = 100  # tasks per search page (the API takes 1..500)
DEFAULT_BULK_LIMIT = 100  # tasks per bulk retry or cancel (the API takes 1..1000)
Params = list[tuple[str, str | int | float | bool | None]]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Params = field(default_factory=list)
    body: Any = None  # JSON; None sends no body
    timeout_s: float | None = None  # None: the client's timeout
    ok: tuple[int, ...] = (200,)  # statuses that are answers, not errors


def http_options(
    url: str,
    token: str | None,
    *,
    timeout_s: float,
    headers: Mapping[str, str] | None,
) -> dict[str, Any]:
    """Keyword arguments for the `httpx.Client` or `httpx.AsyncClient` under a client."""
    merged = {"User-Agent": f"taskyard-client/{__version__}", **(headers or {})}
    if token:
        merged["Authorization"] = f"Bearer {token}"
    return {"base_url": url.rstrip("/"), "headers": merged, "timeout": timeout_s}


def build(http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
    return http.build_request(
        call.method,
        call.path,
        params=call.params or None,
        json=call.body,
        timeout=call.timeout_s if call.timeout_s is not None else httpx.USE_CLIENT_DEFAULT,
    )


@contextlib.contextmanager
def transport_errors(request: httpx.Request) -> Iterator[None]:
    """httpx's transport errors as `TransportError` (the URL without any credentials)."""
    try:
        yield
    except httpx.TransportError as error:
        url = request.url.copy_with(username=None, password=None, query=None)
        reason = str(error) or type(error).__name__
        raise exc.TransportError(
            f"{request.method} {url}: {type(error).__name__}: {reason}", request=request
        ) from error


def finish(call: Call[T], response: httpx.Response) -> T:
    """The answer of `call`, or the error its response stands for."""
    if response.status_code not in call.ok:
        raise exc.error_for(response)
    return call.read(response)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as error:
        raise exc.InvalidResponse(
            f"{response.request.method} {response.request.url.path}: the answer is not JSON",
            response=response,
        ) from error


def _model(kind: type[M]) -> Callable[[httpx.Response], M]:
    def read(response: httpx.Response) -> M:
        try:
            return kind.model_validate(_json(response))
        except ValidationError as error:
            raise exc.InvalidResponse(
                f"{response.request.method} {response.request.url.path}: not a {kind.__name__}:"
                f" {error.error_count()} problem(s), first: {error.errors()[0]['msg']}"
                f" at {'.'.join(str(p) for p in error.errors()[0]['loc'])}",
                response=response,
            ) from error

    return read


def _task(response: httpx.Response) -> m.Task:
    return _model(m.TaskOut)(response).task()


def _submitted(response: httpx.Response) -> list[m.Submitted]:
    return _model(_BatchOut)(response).tasks


def _servers(response: httpx.Response) -> list[m.Server]:
    return _model(_ServersOut)(response).servers


def _nodes(response: httpx.Response) -> list[m.Node]:
    return _model(_NodesOut)(response).nodes


def _removed(response: httpx.Response) -> list[str]:
    return _model(_CleanupOut)(response).removed_servers


def _nothing(response: httpx.Response) -> None:
    return None


class _BatchOut(m.WireModel):
    tasks: list[m.Submitted]
    count: int


class _ServersOut(m.WireModel):
    servers: list[m.Server]


class _NodesOut(m.WireModel):
    nodes: list[m.Node]


class _CleanupOut(m.WireModel):
    success: bool
    removed_servers: list[str]


def _id(value: str) -> str:
    """A task or server id as one path segment."""
    if not value:
        raise ValueError("an id must not be empty")
    return quote(value, safe="")


def _epoch_ms(value: int | datetime) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("datetimes must be timezone-aware (e.g. datetime.now(UTC))")
        return int(value.timestamp() * 1000)
    return int(value)


def filter_params(filters: TaskFilters) -> Params:
    """The query parameters of `GET /api/tasks` (and the bulk routes) for `filters`."""
    params: Params = []
    status = filters.get("status")
    for one in [status] if isinstance(status, str) else status or []:
        params.append(("status", str(one)))
    names = {
        "model": filters.get("model"),
        "server_id": filters.get("server_id"),
        "owner": filters.get("owner"),
        "error_code": filters.get("error_code"),
    }
    params.extend((key, value) for key, value in names.items() if value is not None)
    times = {
        "created_after": filters.get("created_after"),
        "created_before": filters.get("created_before"),
    }
    params.extend((key, _epoch_ms(when)) for key, when in times.items() if when is not None)
    _refuse_unknown(filters, TaskFilters, "task filter")
    return params


def _refuse_unknown(given: Mapping[str, Any], kind: type[Any], what: str) -> None:
    unknown = set(given) - set(kind.__annotations__)
    if unknown:
        raise TypeError(f"unknown {what}(s): {', '.join(sorted(unknown))}")


# ---- tasks ------------------------------------------------------------------------------


def submit(
    model: str, request: Mapping[str, Any] | None, options: SubmitOptions, *, wait_s: float = 0
) -> Call[m.Task]:
    """A create; with `wait_s`, one that answers once the task is final (or the wait ends)."""
    body = {"model": model, **(request or {})}
    if body["model"] != model:
        raise ValueError(f"request names model {body['model']!r}, not {model!r}")
    _refuse_unknown(options, SubmitOptions, "submit option")
    params: Params = [(k, v) for k, v in options.items() if isinstance(v, int | float)]
    if wait_s <= 0:
        return Call("POST", "/api/task", _task, params=params, body=body)
    wait_s = min(wait_s, MAX_WAIT_S)
    params.append(("wait", round(wait_s, 3)))
    return Call(
        "POST", "/api/task", _task, params=params, body=body, timeout_s=wait_s + WAIT_MARGIN_S
    )


def submit_many(
    requests: Sequence[Mapping[str, Any]], options: SubmitOptions
) -> Call[list[m.Submitted]]:
    if not 1 <= len(requests) <= MAX_BATCH:
        raise ValueError(f"submit_many takes 1 to {MAX_BATCH} requests, not {len(requests)}")
    for number, request in enumerate(requests):
        if not isinstance(request.get("model"), str):
            raise ValueError(f"request {number} names no model")
    _refuse_unknown(options, SubmitOptions, "submit option")
    body = {"tasks": [{"request": dict(request), **options} for request in requests]}
    return Call("POST", "/api/tasks/batch", _submitted, body=body)


def get_task(task_id: str, *, wait_s: float = 0) -> Call[m.Task]:
    if wait_s <= 0:
        return Call("GET", f"/api/task/{_id(task_id)}", _task)
    wait_s = min(wait_s, MAX_WAIT_S)
    return Call(
        "GET",
        f"/api/task/{_id(task_id)}",
        _task,
        params=[("wait", round(wait_s, 3))],
        timeout_s=wait_s + WAIT_MARGIN_S,
    )


def cancel_task(task_id: str) -> Call[m.Task]:
    return Call("POST", f"/api/task/{_id(task_id)}/cancel", _task)


def retry_task(task_id: str) -> Call[m.Task]:
    return Call("POST", f"/api/task/{_id(task_id)}/retry", _task)


def report(task_id: str, result: Mapping[str, Any]) -> Call[m.Task]:
    return Call("PUT", f"/api/task/{_id(task_id)}", _task, body=dict(result))


def search_page(filters: TaskFilters, *, limit: int, cursor: str | None) -> Call[m.TasksPage]:
    params = [*filter_params(filters), ("limit", limit)]
    if cursor is not None:
        params.append(("cursor", cursor))
    return Call("GET", "/api/tasks", _model(m.TasksPage), params=params)


def bulk(
    action: Literal["retry", "cancel"], filters: TaskFilters, *, limit: int
) -> Call[m.BulkResult]:
    params = [*filter_params(filters), ("limit", limit)]
    return Call("POST", f"/api/tasks/{action}", _model(m.BulkResult), params=params)


# A call made of several requests, each chosen on the answer to the last: the clients drive it
# (`send` each answer), the one place where `Client` and `AsyncClient` differ.
Steps = Generator["Call[m.Task]", m.Task, m.Task]


def wait_steps(task_id: str, timeout_s: float | None) -> Steps:
    """Long polls of `task_id` until it is final (or `WaitTimeout` after `timeout_s`)."""
    clock = WaitClock(timeout_s)
    while True:
        task = yield get_task(task_id, wait_s=clock.next_poll())
        if task.is_final:
            return task
        clock.check(task)


def run_steps(
    model: str, request: Mapping[str, Any] | None, options: SubmitOptions, wait_s: float | None
) -> Steps:
    """A create that waits (`POST /api/task?wait=`), then long polls until the task is final."""
    clock = WaitClock(wait_s)
    task = yield submit(model, request, options, wait_s=clock.next_poll())
    while not task.is_final:
        clock.check(task)
        task = yield get_task(task.id, wait_s=clock.next_poll())
    return task


class WaitClock:
    """The deadline of a `wait`: how long each long poll may last, and when to give up."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def next_poll(self) -> float:
        """Seconds for the next long poll (0: none left, answer at once)."""
        if self._deadline is None:
            return MAX_WAIT_S
        return max(0.0, min(MAX_WAIT_S, self._deadline - time.monotonic()))

    def check(self, task: m.Task) -> None:
        """Raise `WaitTimeout` once the time is up with `task` not final."""
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise exc.WaitTimeout(task, self.timeout_s)


# ---- servers, nodes, stats, probes ------------------------------------------------------


def list_servers() -> Call[list[m.Server]]:
    return Call("GET", "/api/servers", _servers)


def get_server(server_id: str) -> Call[m.Server]:
    return Call("GET", f"/api/servers/{_id(server_id)}", _model(m.Server))


_WIRE_NAMES = {"is_async": "async", "auto_remove": "autoRemove", "api_key": "apiKey"}


def register_server(server_id: str, predict: str, fields: ServerFields) -> Call[m.Registered]:
    _refuse_unknown(fields, ServerFields, "server field")
    given: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    endpoints = {"predict": predict}
    endpoints.update({k: given.pop(k) for k in ("health", "cancel") if k in given})
    extra = dict(given.pop("extra", {}))
    if "models" in given:
        given["models"] = list(given["models"])
    body = {
        **extra,
        **{_WIRE_NAMES.get(k, k): v for k, v in given.items()},
        "id": server_id,
        "endpoints": endpoints,
    }
    return Call("POST", "/api/servers", _model(m.Registered), body=body)


def delete_server(server_id: str) -> Call[None]:
    return Call("DELETE", f"/api/servers/{_id(server_id)}", _nothing)


def heartbeat(server_id: str, load: Mapping[str, Any] | None) -> Call[m.Heartbeat]:
    body = dict(load) if load else None
    return Call("POST", f"/api/servers/{_id(server_id)}/heartbeat", _model(m.Heartbeat), body=body)


def maintenance(server_id: str, *, enabled: bool, reason: str | None) -> Call[m.Server]:
    return Call(
        "PUT",
        f"/api/servers/{_id(server_id)}/maintenance",
        _model(m.Server),
        body={"enabled": enabled, "reason": reason},
    )


def cleanup_servers(max_age_mins: float | None) -> Call[list[str]]:
    body = None if max_age_mins is None else {"maxAgeMins": max_age_mins}
    return Call("POST", "/api/servers/cleanup", _removed, body=body)


def list_nodes() -> Call[list[m.Node]]:
    return Call("GET", "/api/nodes", _nodes)


def stats() -> Call[sm.Stats]:
    return Call("GET", "/api/stats", _model(sm.Stats))


def hourly_stats() -> Call[sm.Hourly]:
    return Call("GET", "/api/stats/hourly", _model(sm.Hourly))


def server_stats(server_id: str, *, window_min: int) -> Call[sm.ServerStats]:
    path = f"/api/stats/servers/{_id(server_id)}"
    return Call("GET", path, _model(sm.ServerStats), params=[("window_min", window_min)])


def health() -> Call[m.Health]:
    return Call("GET", "/health", _model(m.Health))


def ready() -> Call[m.Readiness]:
    # 503 is an answer here: the node is up but cannot reach its database.
    return Call("GET", "/ready", _model(m.Readiness), ok=(200, 503))
