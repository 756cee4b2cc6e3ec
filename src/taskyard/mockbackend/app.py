"""aiohttp handlers of the mock backend and the application factory."""

from __future__ import annotations

import asyncio
import hmac
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .callbacks import send_callback
from .state import AuthSeen, CallbackRecord, CancelRecord, MockConfig, MockState, RunningAttempt

STATE_KEY = web.AppKey("mockbackend_state", MockState)
SESSION_KEY = web.AppKey("mockbackend_session", aiohttp.ClientSession)
TASKS_KEY: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("mockbackend_tasks")

MAX_BODY_BYTES = 10 * 1024 * 1024
# Header naming the coordinator node that sends a health check.
NODE_HEADER = "X-Taskyard-Node"
# Exit code of a process killed by SIGKILL, so a crash looks like an OOM kill.
CRASH_EXIT_CODE = 137

# Key in a task's request body that holds that one predict, for calls through a coordinator.
REQUEST_HOLD_KEY = "mock_hold_ms"

_BOOL_CONTROLS = ("async", "unhealthy", "hang", "health_hang", "crash_next", "cancel_hang")
_STATUS_CONTROLS = ("fail_status", "cancel_fail_status")
_CONTROL_KEYS = frozenset({"delay_ms", "error_rate", "api_key", *_STATUS_CONTROLS, *_BOOL_CONTROLS})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _raw_json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _error(message: str, status: int) -> web.Response:
    return _json({"error": message}, status)


class _BadRequest(Exception):
    """Payload is not usable; the message goes back to the client with a 400."""


def _is_number(value: object) -> bool:
    # bool is an int subclass, but `true` is not a valid delay or rate.
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class _Predict:
    task_id: str
    attempt: int
    request: Any
    want_async: bool = False
    callback_url: str | None = None
    callback_token: str | None = None
    hold_ms: float = 0


def _hold_ms(body: dict[str, Any]) -> float:
    """Extra work time for this one predict (sync or async, counted in model_time): the
    envelope's `hold_ms`, else the request body's `mock_hold_ms`."""
    request = body["request"]
    value = body.get("hold_ms")
    if value is None and isinstance(request, dict):
        value = request.get(REQUEST_HOLD_KEY)
    if value is None:
        return 0
    if not (_is_number(value) and value >= 0):
        raise _BadRequest(f"hold_ms / {REQUEST_HOLD_KEY} must be a number >= 0")
    return float(value)


def _parse_predict(body: Any) -> _Predict:
    if not (isinstance(body, dict) and "task_id" in body and "request" in body):
        # A bare payload, e.g. someone calling the backend directly.
        return _Predict(str(uuid.uuid4()), 1, body)
    task_id = body["task_id"]
    attempt = body.get("attempt", 1)
    callback_url = body.get("callback_url")
    callback_token = body.get("callback_token")
    if not isinstance(task_id, str) or not task_id:
        raise _BadRequest("task_id must be a non-empty string")
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        raise _BadRequest("attempt must be an integer")
    if callback_url is not None and not isinstance(callback_url, str):
        raise _BadRequest("callback_url must be a string or null")
    if callback_token is not None and not isinstance(callback_token, str):
        raise _BadRequest("callback_token must be a string or null")
    return _Predict(
        task_id,
        attempt,
        body["request"],
        bool(body.get("async")),
        callback_url,
        callback_token,
        _hold_ms(body),
    )


def _parse_cancel(body: Any) -> tuple[str, int]:
    if not isinstance(body, dict):
        raise _BadRequest("cancel body must be a JSON object")
    task_id, attempt = body.get("task_id"), body.get("attempt")
    if not isinstance(task_id, str) or not task_id:
        raise _BadRequest("task_id must be a non-empty string")
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        raise _BadRequest("attempt must be an integer")
    return task_id, attempt


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _BadRequest(f"invalid JSON: {exc}") from exc


def _auth(request: web.Request, state: MockState) -> tuple[AuthSeen, bool]:
    """What the call carried, and whether it may pass (no key set, or the right one)."""
    header = request.headers.get("Authorization")
    key = state.api_key
    matched = (
        header is not None
        and key is not None
        # Constant-time, like a real server would; bytes, because non-ASCII str is refused.
        and hmac.compare_digest(header.encode(), f"Bearer {key}".encode())
    )
    return AuthSeen(header=header is not None, matched=matched), key is None or matched


def _unauthorized(state: MockState) -> web.Response:
    state.unauthorized += 1
    return _error("unauthorized", 401)


async def _wait_any(*events: asyncio.Event, timeout_s: float | None = None) -> None:
    """Return when any event is set, or after `timeout_s`."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _process(
    state: MockState, run: RunningAttempt, call: _Predict, started: float
) -> bytes | None:
    """Simulate the model run and store the TaskResult; returns its JSON, or None when a
    cancel stopped it first."""
    delay_ms = state.delay_ms
    model_started = time.perf_counter()
    if call.hold_ms > 0:
        # Unlike delay_ms, a hold can be long, so a shutdown cuts it short.
        await _wait_any(run.stopped, state.stopping, timeout_s=call.hold_ms / 1000)
    if delay_ms > 0 and not run.stopped.is_set():
        await _wait_any(run.stopped, timeout_s=delay_ms / 1000)
    if run.stopped.is_set():
        return None
    finished = time.perf_counter()
    server_id = state.config.server_id
    result = {
        "backend_task_id": str(uuid.uuid4()),
        "data": {"echo": call.request, "server_id": server_id},
        "metadata": {
            "server_id": server_id,
            "status": "FINISHED",
            "processing_time": (finished - started) * 1000,
            "model_time": (finished - model_started) * 1000,
            "queue_time": 0,
        },
    }
    body = orjson.dumps(result)
    state.store_result(run.task_id, body)
    return body


async def _run_async(
    app: web.Application, run: RunningAttempt, call: _Predict, started: float
) -> None:
    """The background half of an async predict; it owns `run` and lets go of it at the end."""
    state = app[STATE_KEY]
    try:
        body = await _process(state, run, call, started)
        if body is None or call.callback_url is None:
            return
        config = state.config
        outcome = await send_callback(
            app[SESSION_KEY],
            call.callback_url,
            call.callback_token,
            body,
            retries=config.callback_retries,
            retry_delay_s=config.callback_retry_delay_s,
            stop=run.stopped,
            # The slot is let go while a PUT is on the wire, as a sync answer's is before it
            # is written: a coordinator that frees its slot on receipt and dispatches again
            # at once must not see this mock over its limit. A failed try takes it back.
            on_try=lambda: state.free_slot(run),
            on_wait=lambda: state.callback_failed(run),
        )
        state.callbacks.append(
            CallbackRecord(
                task_id=call.task_id,
                attempt=call.attempt,
                url=call.callback_url,
                status=outcome.status,
                error="stopped by a cancel" if outcome.stopped else outcome.error,
                tries=outcome.tries,
                at=time.time(),
            )
        )
    finally:
        state.finish(run)


def _cancelled() -> web.Response:
    return _error("cancelled", 409)


async def predict(request: web.Request) -> web.Response:
    """Run (or accept) one task, honouring the fault-injection controls."""
    started = time.perf_counter()
    state = request.app[STATE_KEY]
    seen, allowed = _auth(request, state)
    try:
        call = _parse_predict(await _read_json(request))
    except _BadRequest as exc:
        return _error(str(exc), 400) if allowed else _unauthorized(state)

    state.record_received(call.task_id, call.attempt, time.time(), call.callback_token, seen)
    if not allowed:
        return _unauthorized(state)
    if state.crash_next:
        # No cleanup on purpose: the point is to die like a killed worker, mid-task.
        os._exit(CRASH_EXIT_CODE)

    # Counted until the mock lets go, not until the client does: a GPU server keeps computing
    # a request whose client timed out (aiohttp does not cancel handlers on disconnect).
    run = state.begin(
        call.task_id, call.attempt, is_connected=lambda: request.transport is not None
    )
    handed_off = False
    try:
        while state.hang and not state.shutting_down and not run.stopped.is_set():
            await _wait_any(state.predict_released, run.stopped)
        if run.stopped.is_set():
            return _cancelled()
        if state.shutting_down:
            return _error("shutting down", 503)
        if state.error_rate > 0 and state.rng.random() < state.error_rate:
            return _error("injected failure", 500)
        if state.fail_status is not None:
            return _error("forced status", state.fail_status)

        if call.want_async or state.force_async:
            run.is_connected = None  # the client's connection no longer matters
            task = asyncio.create_task(_run_async(request.app, run, call, started))
            tasks = request.app[TASKS_KEY]
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            handed_off = True  # the background task now owns the in_flight slot
            # The result body is not known yet, so the 202 gets its own id.
            return _json({"backend_task_id": str(uuid.uuid4()), "status": "PROCESSING"}, 202)

        body = await _process(state, run, call, started)
        return _cancelled() if body is None else _raw_json(body)
    finally:
        if not handed_off:
            state.finish(run)


async def cancel(request: web.Request) -> web.Response:
    """Stop a running attempt (sync or async); 200 says whether one was running."""
    state = request.app[STATE_KEY]
    seen, allowed = _auth(request, state)
    try:
        task_id, attempt = _parse_cancel(await _read_json(request))
    except _BadRequest as exc:
        return _error(str(exc), 400) if allowed else _unauthorized(state)
    record = CancelRecord(
        task_id, attempt, time.time(), seen, matched=state.is_running(task_id, attempt)
    )
    state.cancels.append(record)
    if not allowed:
        record.status = 401
        return _unauthorized(state)
    while state.cancel_hang and not state.shutting_down:
        await state.cancel_released.wait()
    record.matched = state.is_running(task_id, attempt)
    if state.shutting_down:
        record.status = 503
        return _error("shutting down", 503)
    if state.cancel_fail_status is not None:
        record.status = state.cancel_fail_status
        return _error("forced status", state.cancel_fail_status)
    # Frees the slot now, before this answer is written; the predict's own waiter then wakes.
    record.stopped = state.stop(task_id, attempt)
    record.status = 200
    return _json({"cancelled": record.stopped})


async def health(request: web.Request) -> web.Response:
    """Liveness probe; can be made to fail (503) or to never answer."""
    state = request.app[STATE_KEY]
    seen, allowed = _auth(request, state)
    state.record_health_check(request.headers.get(NODE_HEADER), time.time(), request.path_qs, seen)
    if not allowed:
        return _unauthorized(state)
    while state.health_hang and not state.shutting_down:
        await state.health_released.wait()
    if state.unhealthy or state.shutting_down:
        return _json({"status": "unhealthy"}, 503)
    return _json({"status": "ok", "server_id": state.config.server_id})


async def info(request: web.Request) -> web.Response:
    """Configuration and counters."""
    state = request.app[STATE_KEY]
    return _json(
        {
            "server_id": state.config.server_id,
            "delay_ms": state.delay_ms,
            "error_rate": state.error_rate,
            "async": state.force_async,
            "unhealthy": state.unhealthy,
            "hang": state.hang,
            "received": state.received_total,
            "in_flight": state.in_flight,
            "max_in_flight": state.max_in_flight,
            "completed": state.completed,
            # Sync predicts still held (and counted in flight) whose client hung up.
            "abandoned": state.abandoned(),
            "cancels": len(state.cancels),
            "unauthorized": state.unauthorized,
            "callback_retries": state.callback_retries,
            "api_key_set": state.api_key is not None,
        }
    )


async def get_result(request: web.Request) -> web.Response:
    """Stored TaskResult of a finished task."""
    task_id = request.match_info["task_id"]
    body = request.app[STATE_KEY].results.get(task_id)
    if body is None:
        return _error(f"Result {task_id} not found", 404)
    return _raw_json(body)


async def get_control(request: web.Request) -> web.Response:
    """Current runtime controls."""
    return _json(request.app[STATE_KEY].controls())


def _validate_controls(body: Any) -> dict[str, Any]:
    """Check a `/control` body fully before anything is applied."""
    if not isinstance(body, dict):
        raise _BadRequest("control body must be a JSON object")
    unknown = sorted(set(body) - _CONTROL_KEYS)
    if unknown:
        raise _BadRequest(f"unknown control(s): {', '.join(unknown)}")
    if "delay_ms" in body and not (_is_number(body["delay_ms"]) and body["delay_ms"] >= 0):
        raise _BadRequest("delay_ms must be a number >= 0")
    if "error_rate" in body and not (
        _is_number(body["error_rate"]) and 0 <= body["error_rate"] <= 1
    ):
        raise _BadRequest("error_rate must be a number between 0 and 1")
    for key in _BOOL_CONTROLS:
        if key in body and not isinstance(body[key], bool):
            raise _BadRequest(f"{key} must be a boolean")
    for key in _STATUS_CONTROLS:
        if key in body:
            status = body[key]
            valid_int = isinstance(status, int) and not isinstance(status, bool)
            if status is not None and not (valid_int and 400 <= status <= 599):
                raise _BadRequest(f"{key} must be null or an integer between 400 and 599")
    if "api_key" in body and not (
        body["api_key"] is None or (isinstance(body["api_key"], str) and body["api_key"])
    ):
        raise _BadRequest("api_key must be null or a non-empty string")
    return body


async def post_control(request: web.Request) -> web.Response:
    """Change any subset of the runtime controls, all or nothing."""
    state = request.app[STATE_KEY]
    try:
        changes = _validate_controls(await _read_json(request))
    except _BadRequest as exc:
        return _error(str(exc), 400)
    if "delay_ms" in changes:
        state.delay_ms = float(changes["delay_ms"])
    if "error_rate" in changes:
        state.error_rate = float(changes["error_rate"])
    if "async" in changes:
        state.force_async = changes["async"]
    if "unhealthy" in changes:
        state.unhealthy = changes["unhealthy"]
    if "hang" in changes:
        state.set_hang(changes["hang"])
    if "health_hang" in changes:
        state.set_health_hang(changes["health_hang"])
    if "fail_status" in changes:
        state.fail_status = changes["fail_status"]
    if "crash_next" in changes:
        state.crash_next = changes["crash_next"]
    if "cancel_fail_status" in changes:
        state.cancel_fail_status = changes["cancel_fail_status"]
    if "cancel_hang" in changes:
        state.set_cancel_hang(changes["cancel_hang"])
    if "api_key" in changes:
        state.api_key = changes["api_key"]
    return _json(state.controls())


async def reset(request: web.Request) -> web.Response:
    """Clear records and return the controls to the config values."""
    state = request.app[STATE_KEY]
    state.reset()
    return _json(state.controls())


async def get_received(request: web.Request) -> web.Response:
    """Every predict call that reached this server (for counting duplicate dispatches)."""
    state = request.app[STATE_KEY]
    return _json({"received": [call.to_json() for call in state.received]})


async def get_callbacks(request: web.Request) -> web.Response:
    """Outcome of every callback delivery."""
    state = request.app[STATE_KEY]
    return _json({"callbacks": [record.to_json() for record in state.callbacks]})


async def get_health_checks(request: web.Request) -> web.Response:
    """Every health check that reached this server, with the node that sent it."""
    state = request.app[STATE_KEY]
    return _json({"checks": [check.to_json() for check in state.health_checks]})


async def get_cancels(request: web.Request) -> web.Response:
    """Every cancel that reached this server, and what it found and answered."""
    state = request.app[STATE_KEY]
    return _json({"cancels": [record.to_json() for record in state.cancels]})


async def _client_session_ctx(app: web.Application) -> AsyncIterator[None]:
    # One pooled session for all callbacks; a session per call would cost a new connection.
    async with aiohttp.ClientSession() as session:
        app[SESSION_KEY] = session
        yield
        # Background deliveries must stop before the session under them is closed.
        running = app[TASKS_KEY]
        tasks = list(running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _on_shutdown(app: web.Application) -> None:
    # Hung requests would otherwise hold the graceful shutdown until its timeout.
    state = app[STATE_KEY]
    state.shutting_down = True
    state.release_all()


def create_app(config: MockConfig) -> web.Application:
    """Build the mock backend application for `config`."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = MockState.from_config(config)
    tasks: set[asyncio.Task[None]] = set()
    app[TASKS_KEY] = tasks
    app.cleanup_ctx.append(_client_session_ctx)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_post("/predict", predict)
    app.router.add_post("/cancel", cancel)
    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    app.router.add_get("/result/{task_id}", get_result)
    app.router.add_get("/control", get_control)
    app.router.add_post("/control", post_control)
    app.router.add_post("/control/reset", reset)
    app.router.add_get("/received", get_received)
    app.router.add_get("/callbacks", get_callbacks)
    app.router.add_get("/health-checks", get_health_checks)
    app.router.add_get("/cancels", get_cancels)
    return app


def run(config: MockConfig, *, host: str, port: int) -> None:
    """Serve until interrupted; prints one line once the port is listening."""

    def announce(_message: str) -> None:
        print(f"mock-backend {config.server_id} listening on http://{host}:{port}", flush=True)

    # run_app handles SIGINT/SIGTERM itself and shuts down gracefully.
    web.run_app(
        create_app(config),
        host=host,
        port=port,
        print=announce,
        access_log=None,
        # Hung requests are released on shutdown, so a short grace period suffices.
        shutdown_timeout=2.0,
        # The default since aiohttp 3.9, spelled out because in_flight depends on it: a client
        # that hangs up must not stop the work it asked for (a cancel does that).
        handler_cancellation=False,
    )
