"""The fast path of the routes every task goes through: `POST /api/task` and
`GET /api/task/{id}` (each with or without `?wait=`), and of `POST /api/tasks/batch`.

FastAPI spends most of such a request's time in its own machinery: three more middleware
layers, routing, and solving the dependency tree (body, query parameters, bearer token,
principal, role) by reflection on each call; measured, over half of the event loop's time under
submit load. `HotRoutes` answers these routes directly, as a pure ASGI layer, with the same
code the routes run (`deps.authenticate`, the pydantic model, the coordinator, `present`).

It answers only what it is sure of: a request whose body or query it would have to refuse
goes on, untouched (its body replayed), to the FastAPI route, which refuses it with the usual
400 and details. So an error body is always the one the documented route gives, and the
OpenAPI document still describes these routes (they are still declared there).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskyard import errors
from taskyard.api import present
from taskyard.api.deps import authenticate, require_client
from taskyard.api.errors import domain_error_response
from taskyard.api.responses import JsonResponse
from taskyard.api.routes.batch import create_batch_and_answer
from taskyard.api.routes.tasks import MAX_WAIT_S, create_and_answer, held_s
from taskyard.api.schemas import (
    MAX_ATTEMPTS,
    MAX_ID_LENGTH,
    MAX_JSON_DEPTH,
    MAX_PRIORITY,
    MAX_QUEUE_TIMEOUT_S,
    MAX_TIMEOUT_S,
    STORABLE_CHECKED,
    TaskBatchIn,
    TaskCreate,
)
from taskyard.domain.models import TaskOptions
from taskyard.domain.service import Coordinator
from taskyard.jsonsafe import depth_over, unstorable_number

CREATE_PATH = "/api/task"
BATCH_PATH = "/api/tasks/batch"
BATCH_DEPTH = 3  # a batch's requests sit this deep in its body: {"tasks": [{"request": …}]}
TASK_PREFIX = CREATE_PATH + "/"
TASK_ROUTE = TASK_PREFIX + "{task_id}"  # as the rate limiter names the route

_INTEGER = re.compile(r"-?[0-9]{1,9}")
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_DECIMAL = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


class _Declined(Exception):
    """Not sure of the request: the FastAPI route answers it."""


def _integer(text: str, low: int, high: int) -> int:
    if not _INTEGER.fullmatch(text) or not low <= (value := int(text)) <= high:
        raise _Declined
    return value


def _decimal(text: str, low: float, high: float, *, open_low: bool = True) -> float:
    value = float(text) if _DECIMAL.fullmatch(text) else -1.0
    if not (low < value <= high if open_low else low <= value <= high):
        raise _Declined
    return value


def _positive(text: str, high: float) -> float:
    return _decimal(text, 0, high)


# Query parameter → (field of the parsed options, parser); the bounds are the routes' own.
_CREATE_QUERY: dict[str, Callable[[str], Any]] = {
    "priority": lambda v: _integer(v, -MAX_PRIORITY, MAX_PRIORITY),
    "timeout_s": lambda v: _positive(v, MAX_TIMEOUT_S),
    "max_attempts": lambda v: _integer(v, 1, MAX_ATTEMPTS),
    "queue_timeout_s": lambda v: _positive(v, MAX_QUEUE_TIMEOUT_S),
    "wait": lambda v: _decimal(v, 0, MAX_WAIT_S, open_low=False),
}
_GET_QUERY: dict[str, Callable[[str], Any]] = {"wait": _CREATE_QUERY["wait"]}


def _query(scope: Scope, known: dict[str, Callable[[str], Any]]) -> dict[str, Any]:
    """The known parameters, parsed; others are ignored, as FastAPI ignores them."""
    raw = scope["query_string"]
    if not raw:
        return {}
    parsed: dict[str, Any] = {}
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        parse = known.get(name)
        if parse is None:
            continue
        if name in parsed:  # repeated: let FastAPI's rule decide
            raise _Declined
        parsed[name] = parse(value)
    return parsed


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


class HotRoutes:
    """Serve the hot task routes without FastAPI's per-request machinery (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            method: str = scope["method"]
            if method == "POST" and path == CREATE_PATH:
                await self._create(scope, receive, send)
                return
            if method == "POST" and path == BATCH_PATH:
                await self._create_batch(scope, receive, send)
                return
            if method == "GET" and path.startswith(TASK_PREFIX):
                task_id = path[len(TASK_PREFIX) :]
                if 0 < len(task_id) <= MAX_ID_LENGTH and "/" not in task_id:
                    await self._get(scope, receive, send, task_id)
                    return
        await self.app(scope, receive, send)

    async def _create(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            return  # the client left before it finished sending
        try:
            query = _query(scope, _CREATE_QUERY)
            request = TaskCreate.model_validate(_loads(body)).model_dump()
        except (_Declined, orjson.JSONDecodeError, ValidationError):
            await self.app(scope, _replay(body, receive), send)
            return
        state = scope["app"].state
        coordinator: Coordinator = state.coordinator
        try:
            principal = require_client(
                await authenticate(state, _bearer(scope), method="POST", route=CREATE_PATH)
            )
            wait: float = query.pop("wait", 0.0)
            response = await create_and_answer(
                state, coordinator, principal, request, TaskOptions(**query), wait_s=wait
            )
        except errors.TaskyardError as exc:
            response = domain_error_response(exc)
        await response(scope, receive, send)

    async def _create_batch(self, scope: Scope, receive: Receive, send: Send) -> None:
        # FastAPI parsed this body with the standard library's JSON (a twentieth of a batch's
        # time) and then validated it with the same model as here.
        body = await _read_body(receive)
        if body is None:
            return
        try:
            data = _loads(body)
            # Checked whole rather than request by request (a seventh of a batch's time); a
            # problem anywhere sends the body to the route, which says which item has it.
            if depth_over(data, MAX_JSON_DEPTH + BATCH_DEPTH) or unstorable_number(data):
                raise _Declined
            batch = TaskBatchIn.model_validate(data, context=STORABLE_CHECKED)
        except (_Declined, orjson.JSONDecodeError, ValidationError):
            await self.app(scope, _replay(body, receive), send)
            return
        state = scope["app"].state
        try:
            principal = require_client(
                await authenticate(state, _bearer(scope), method="POST", route=BATCH_PATH)
            )
            response = await create_batch_and_answer(state, state.coordinator, principal, batch)
        except errors.TaskyardError as exc:
            response = domain_error_response(exc)
        await response(scope, receive, send)

    async def _get(self, scope: Scope, receive: Receive, send: Send, task_id: str) -> None:
        try:
            wait: float = _query(scope, _GET_QUERY).get("wait", 0.0)
        except _Declined:
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        wait = held_s(state, wait)
        coordinator: Coordinator = state.coordinator
        try:
            principal = await authenticate(state, _bearer(scope), method="GET", route=TASK_ROUTE)
            if wait > 0:
                with state.open_waits.hold(principal):
                    task = await coordinator.wait_task(task_id, principal=principal, wait_s=wait)
            else:
                task = await coordinator.get_task(task_id, principal=principal)
            waiting = await coordinator.why_waiting(task)
            response = JsonResponse(present.task_out(task, waiting=waiting))
        except errors.TaskyardError as exc:
            response = domain_error_response(exc)
        await response(scope, receive, send)


def _loads(body: bytes) -> Any:
    """The body as orjson reads it, if it can be judged from that (else `_Declined`).

    orjson reads an integer beyond 64 bits as the nearest float, and -2**63 - 1 comes out as
    -2**63 exactly, within range: such a body is for the route (the standard library's JSON
    keeps the integer whole, and `jsonsafe` refuses it). A run of 19 digits is where that can
    begin (schemathesis found it); it also sends a long digit string or fraction to the
    route, which is slower but answers the same."""
    if _LONG_DIGITS.search(body):
        raise _Declined
    return orjson.loads(body)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body (`Edge`, outside this layer, caps its size); None if the client
    disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the already read body out again, then the real one's messages."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
