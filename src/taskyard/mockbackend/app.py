"""aiohttp handlers of the mock backend and the application factory."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .callbacks import send_callback
from .state import CallbackRecord, MockConfig, MockState

STATE_KEY = web.AppKey("mockbackend_state", MockState)
SESSION_KEY = web.AppKey("mockbackend_session", aiohttp.ClientSession)
TASKS_KEY: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("mockbackend_tasks")

MAX_BODY_BYTES = 10 * 1024 * 1024
# Header naming the coordinator node that sends a health check.
NODE_HEADER = "X-Taskyard-Node"
# Exit code of a process killed by SIGKILL, so a crash looks like an OOM kill.
CRASH_EXIT_CODE = 137

_BOOL_CONTROLS = ("async", "unhealthy", "hang", "health_hang", "crash_next")
_CONTROL_KEYS = frozenset({"delay_ms", "error_rate", "fail_status", *_BOOL_CONTROLS})


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


def _parse_predict(body: Any) -> tuple[str, int, Any, bool, str | None, str | None]:
    """Return (task_id, attempt, request, async, callback_url, callback_token)."""
    if not (isinstance(body, dict) and "task_id" in body and "request" in body):
        # A bare payload, e.g. someone calling the backend directly.
        return str(uuid.uuid4()), 1, body, False, None, None
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
    return task_id, attempt, body["request"], bool(body.get("async")), callback_url, callback_token


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _BadRequest(f"invalid JSON: {exc}") from exc


async def _process(state: MockState, task_id: str, request_data: Any, started: float) -> bytes:
    """Simulate the model run and store the TaskResult; returns its JSON."""
    delay_ms = state.delay_ms
    model_started = time.perf_counter()
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)
    finished = time.perf_counter()
    server_id = state.config.server_id
    result = {
        "backend_task_id": str(uuid.uuid4()),
        "data": {"echo": request_data, "server_id": server_id},
        "metadata": {
            "server_id": server_id,
            "status": "FINISHED",
            "processing_time": (finished - started) * 1000,
            "model_time": (finished - model_started) * 1000,
            "queue_time": 0,
        },
    }
    body = orjson.dumps(result)
    state.store_result(task_id, body)
    return body


async def _run_async(
    app: web.Application,
    task_id: str,
    attempt: int,
    request_data: Any,
    callback_url: str | None,
    callback_token: str | None,
    started: float,
) -> None:
    state = app[STATE_KEY]
    try:
        body = await _process(state, task_id, request_data, started)
    finally:
        state.in_flight -= 1
    if callback_url is None:
        return
    config = state.config
    outcome = await send_callback(
        app[SESSION_KEY],
        callback_url,
        callback_token,
        body,
        retries=config.callback_retries,
        retry_delay_s=config.callback_retry_delay_s,
    )
    state.callbacks.append(
        CallbackRecord(
            task_id=task_id,
            attempt=attempt,
            url=callback_url,
            status=outcome.status,
            error=outcome.error,
            tries=outcome.tries,
            at=time.time(),
        )
    )


async def predict(request: web.Request) -> web.Response:
    """Run (or accept) one task, honouring the fault-injection controls."""
    started = time.perf_counter()
    state = request.app[STATE_KEY]
    try:
        task_id, attempt, request_data, want_async, callback_url, callback_token = _parse_predict(
            await _read_json(request)
        )
    except _BadRequest as exc:
        return _error(str(exc), 400)

    state.record_received(task_id, attempt, time.time(), callback_token)
    if state.crash_next:
        # No cleanup on purpose: the point is to die like a killed worker, mid-task.
        os._exit(CRASH_EXIT_CODE)

    state.in_flight += 1
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    handed_off = False
    try:
        while state.hang and not state.shutting_down:
            await state.predict_released.wait()
        if state.shutting_down:
            return _error("shutting down", 503)
        if state.error_rate > 0 and state.rng.random() < state.error_rate:
            return _error("injected failure", 500)
        if state.fail_status is not None:
            return _error("forced status", state.fail_status)

        if want_async or state.force_async:
            task = asyncio.create_task(
                _run_async(
                    request.app,
                    task_id,
                    attempt,
                    request_data,
                    callback_url,
                    callback_token,
                    started,
                )
            )
            tasks = request.app[TASKS_KEY]
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            handed_off = True  # the background task now owns the in_flight slot
            # The result body is not known yet, so the 202 gets its own id.
            return _json({"backend_task_id": str(uuid.uuid4()), "status": "PROCESSING"}, 202)

        return _raw_json(await _process(state, task_id, request_data, started))
    finally:
        if not handed_off:
            state.in_flight -= 1


async def health(request: web.Request) -> web.Response:
    """Liveness probe; can be made to fail (503) or to never answer."""
    state = request.app[STATE_KEY]
    state.record_health_check(request.headers.get(NODE_HEADER), time.time(), request.path_qs)
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
    if "fail_status" in body:
        status = body["fail_status"]
        valid_int = isinstance(status, int) and not isinstance(status, bool)
        if status is not None and not (valid_int and 400 <= status <= 599):
            raise _BadRequest("fail_status must be null or an integer between 400 and 599")
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
    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    app.router.add_get("/result/{task_id}", get_result)
    app.router.add_get("/control", get_control)
    app.router.add_post("/control", post_control)
    app.router.add_post("/control/reset", reset)
    app.router.add_get("/received", get_received)
    app.router.add_get("/callbacks", get_callbacks)
    app.router.add_get("/health-checks", get_health_checks)
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
    )
