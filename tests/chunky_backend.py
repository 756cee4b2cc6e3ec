"""A test backend that writes its answers in many small, delayed pieces.

Run as a process of its own: `python tests/chunky_backend.py --port N` (it imports nothing from
taskyard or the tests, so the coordinator under test reads it over a real socket). What each
answer looks like is said by the caller, so one process serves every case:

- `POST /predict`: the task's own request carries `"answer": {...}` (see `Answer`): a 200 with a
  JSON TaskResult of exactly `size` bytes, written `chunk` bytes at a time, `delay_ms` apart,
  with a Content-Length or chunked (`"junk": true`: `size` bytes of filler instead, made as they
  are written, for answers too large to hold). With `"async": true` it answers 202 and PUTs the
  result to the task's `callback_url` instead.
- `GET /health?size=&chunk=&delay_ms=&length=&tag=`: a 200 `{"status": "ok", ...}` written the
  same way (`tag` names its records in the log).
- `GET /log`: what happened to each answer: bytes written before the end or before the
  coordinator hung up, and each callback's status and response.

`result_body` is also imported by the tests, to know exactly what a task's result must be.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

_HEAD = b'{"metadata":{"status":"FINISHED"},"data":{"blob":"'
_TAIL = b'"}}'
MIN_RESULT_SIZE = len(_HEAD) + len(_TAIL)


def result_body(size: int, seed: str) -> bytes:
    """A valid JSON TaskResult of exactly `size` bytes; its blob depends on `seed`."""
    if size < MIN_RESULT_SIZE:
        raise ValueError(f"a result takes at least {MIN_RESULT_SIZE} bytes")
    return _HEAD + _blob(size - MIN_RESULT_SIZE, seed) + _TAIL


def _blob(size: int, seed: str) -> bytes:
    unit = hashlib.sha256(seed.encode()).hexdigest().encode()  # 64 JSON-safe characters
    return (unit * (size // len(unit) + 1))[:size]


@dataclass(frozen=True, slots=True)
class Answer:
    size: int
    chunk: int = 65_536
    delay_ms: float = 0.0
    length: bool = True  # send a Content-Length; otherwise chunked
    is_async: bool = False  # 202, then PUT the result to the callback URL
    junk: bool = False  # filler, not JSON

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> Answer:
        return cls(
            size=int(spec["size"]),
            chunk=int(spec.get("chunk", 65_536)),
            delay_ms=float(spec.get("delay_ms", 0)),
            length=bool(spec.get("length", True)),
            is_async=bool(spec.get("async", False)),
            junk=bool(spec.get("junk", False)),
        )

    def pieces(self, body: bytes) -> Iterator[bytes]:
        for offset in range(0, len(body), self.chunk):
            yield body[offset : offset + self.chunk]

    def filler(self) -> Iterator[bytes]:
        piece = b"x" * self.chunk
        for offset in range(0, self.size, self.chunk):
            yield piece[: self.size - offset]


@dataclass(slots=True)
class Record:
    """One answer (or callback) as the backend saw it."""

    kind: str  # "predict", "health" or "callback"
    task_id: str | None  # a health check's: its `tag`
    size: int
    written: int = 0  # bytes handed to the socket before the end or the hang-up (a predict's)
    done: bool = False  # finished writing, or gave up because the peer went away
    error: str | None = None  # why writing stopped early
    status: int | None = None  # a callback's HTTP status
    response: str | None = None  # the start of a callback's response body
    seconds: float = 0.0
    at: float = field(default_factory=time.time)


LOG_KEY = web.AppKey("log", list[Record])
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
TASKS_KEY: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("tasks")


async def _write_in_pieces(
    request: web.Request, pieces: Iterator[bytes], answer: Answer, record: Record
) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    if answer.length:
        response.content_length = record.size
    else:
        response.enable_chunked_encoding()
    started = time.monotonic()
    try:
        await response.prepare(request)
        for number, piece in enumerate(pieces):
            if number and answer.delay_ms:
                await asyncio.sleep(answer.delay_ms / 1000)
            await response.write(piece)
            record.written += len(piece)
        await response.write_eof()
    except (ConnectionError, OSError) as exc:  # the coordinator hung up
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        record.seconds = time.monotonic() - started
        record.done = True
    return response


async def predict(request: web.Request) -> web.StreamResponse:
    payload = await request.json(loads=orjson.loads)
    task_id = str(payload["task_id"])
    answer = Answer.from_json(payload["request"]["answer"])
    if answer.is_async:
        body = result_body(answer.size, task_id)
        job = asyncio.create_task(_call_back(request.app, payload, body, answer))
        request.app[TASKS_KEY].add(job)
        job.add_done_callback(request.app[TASKS_KEY].discard)
        return web.json_response({"status": "PROCESSING"}, status=202)
    record = Record("predict", task_id, answer.size)
    request.app[LOG_KEY].append(record)
    pieces = answer.filler() if answer.junk else answer.pieces(result_body(answer.size, task_id))
    return await _write_in_pieces(request, pieces, answer, record)


async def _call_back(
    app: web.Application, payload: dict[str, Any], body: bytes, answer: Answer
) -> None:
    record = Record("callback", str(payload["task_id"]), answer.size)
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {payload['callback_token']}",
    }
    data: Any = body if answer.length else _delayed(answer.pieces(body), answer.delay_ms)
    started = time.monotonic()
    try:
        async with app[SESSION_KEY].put(
            payload["callback_url"], data=data, headers=headers
        ) as resp:
            record.status = resp.status
            record.response = (await resp.read())[:2000].decode(errors="replace")
    except (aiohttp.ClientError, OSError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    record.seconds = time.monotonic() - started
    record.done = True
    app[LOG_KEY].append(record)


async def _delayed(pieces: Iterator[bytes], delay_ms: float) -> AsyncIterator[bytes]:
    """An upload sent chunked, a piece at a time."""
    for number, piece in enumerate(pieces):
        if number and delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        yield piece


async def health(request: web.Request) -> web.StreamResponse:
    query = request.query
    answer = Answer(
        size=int(query.get("size", "16")),
        chunk=int(query.get("chunk", "65536")),
        delay_ms=float(query.get("delay_ms", "0")),
        length=query.get("length", "1") == "1",
    )
    pad = max(0, answer.size - len(b'{"status":"ok","pad":""}'))
    body = b'{"status":"ok","pad":"' + b"x" * pad + b'"}'
    record = Record("health", query.get("tag"), len(body))
    request.app[LOG_KEY].append(record)
    return await _write_in_pieces(request, answer.pieces(body), answer, record)


async def log(request: web.Request) -> web.Response:
    return web.json_response(
        {"log": [asdict(r) for r in request.app[LOG_KEY]]}, dumps=lambda v: orjson.dumps(v).decode()
    )


async def _session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        app[SESSION_KEY] = session
        yield
        jobs = app[TASKS_KEY]
        for job in list(jobs):
            job.cancel()


def create_app() -> web.Application:
    app = web.Application()
    app[LOG_KEY] = []
    app[TASKS_KEY] = set()
    app.cleanup_ctx.append(_session)
    app.router.add_post("/predict", predict)
    app.router.add_get("/health", health)
    app.router.add_get("/log", log)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
