"""Large and slow backend answers, end to end: a real coordinator reading a real backend process
(`tests/chunky_backend.py`) that writes its answers in many small, delayed pieces.

Answers up to TASKYARD_MAX_BACKEND_RESPONSE_BYTES are read whole however they arrive; larger
ones fail the task at once, naming the cap, without a retry and without counting against the
server; callback bodies (`PUT /api/task/{id}`) may be as large as that cap.

Results that are stored (1 MB, 9 MB, 5 MB by callback) run on SQLite and PostgreSQL: writing and
reading them back is where the databases differ. The cap tests are about the wire only, so they
run on SQLite alone, on one coordinator with lowered caps.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.chunky_backend import result_body
from tests.support import (
    Fleet,
    MockBackend,
    Proc,
    Taskyard,
    clean_env,
    free_port,
    fresh_database,
    running_taskyard,
    shared_taskyard,
    wait_for,
)

SCRIPT = Path(__file__).resolve().parent.parent / "chunky_backend.py"
RESPONSE_CAP = 1_048_576  # the lowered coordinator's TASKYARD_MAX_BACKEND_RESPONSE_BYTES
BODY_CAP = 262_144  # and its TASKYARD_MAX_BODY_BYTES
CAP_ERROR = f"larger than the {RESPONSE_CAP}-byte cap (TASKYARD_MAX_BACKEND_RESPONSE_BYTES)"
ASYNC = {"async": True}  # registration field; `async` is a Python keyword


class ChunkyBackend(Proc):
    """`tests/chunky_backend.py` in a process of its own."""

    def __init__(self, workdir: Path) -> None:
        port = free_port()
        args = [sys.executable, str(SCRIPT), "--port", str(port)]
        super().__init__(args, port=port, env=clean_env(), log=workdir / f"chunky-{port}.log")

    def records(self, kind: str, task_id: str | None = None) -> list[dict[str, Any]]:
        response = httpx.get(self.url + "/log", timeout=5)
        assert response.status_code == 200, response.text
        return [
            r
            for r in response.json()["log"]
            if r["kind"] == kind and (task_id is None or r["task_id"] == task_id)
        ]

    def finished(self, kind: str, task_id: str) -> dict[str, Any]:
        """The one `kind` record of `task_id`, once the backend is done with it."""
        records = wait_for(
            lambda: [r for r in self.records(kind, task_id) if r["done"]],
            what=f"the backend to finish its {kind} of {task_id}",
        )
        assert len(records) == 1, records
        record: dict[str, Any] = records[0]
        return record


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChunkyBackend]:
    proc = ChunkyBackend(tmp_path_factory.mktemp("chunky"))
    try:
        yield proc.start("/log")
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def yard(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taskyard]:
    """A coordinator with the default caps (10 MiB answers, 1 MiB request bodies)."""
    with shared_taskyard(db_kind, tmp_path_factory.mktemp(f"large-{db_kind}")) as node:
        yield node


@pytest.fixture(scope="module")
def capped_yard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taskyard]:
    """A coordinator (SQLite) with a 1 MiB answer cap and a 256 KiB request body cap."""
    workdir = tmp_path_factory.mktemp("capped")
    with (
        fresh_database("sqlite", workdir) as url,
        running_taskyard(
            workdir,
            database_url=url,
            max_backend_response_bytes=RESPONSE_CAP,
            max_body_bytes=BODY_CAP,
            health_timeout_s=5,  # a slow health answer must not time out on a loaded machine
        ) as node,
    ):
        yield node


def _fleet(yard: Taskyard, mock_factory: Callable[..., MockBackend]) -> Iterator[Fleet]:
    fleet = Fleet(yard, mock_factory)
    yield fleet
    fleet.close()


@pytest.fixture
def fleet(yard: Taskyard, mock_factory: Callable[..., MockBackend]) -> Iterator[Fleet]:
    yield from _fleet(yard, mock_factory)


@pytest.fixture
def capped(capped_yard: Taskyard, mock_factory: Callable[..., MockBackend]) -> Iterator[Fleet]:
    yield from _fleet(capped_yard, mock_factory)


def register_checkless(fleet: Fleet, backend: ChunkyBackend, name: str, **fields: Any) -> str:
    """A server without a health URL: online at once, judged by its dispatches alone."""
    server_id = fleet.sid(name)
    endpoints = {"predict": backend.url + "/predict"}
    fleet.register_raw({"id": server_id, "endpoints": endpoints, "max_concurrency": 8, **fields})
    return server_id


def submit(fleet: Fleet, **answer: Any) -> str:
    """A task whose request tells the backend how to answer (see `chunky_backend.Answer`)."""
    return fleet.submit({"model": fleet.model, "answer": answer})


def final(yard: Taskyard, task_id: str, *, timeout: float = 15.0) -> dict[str, Any]:
    """The task once FINISHED or FAILED; if it never gets there, say where it is stuck."""
    try:
        return yard.wait_status(task_id, "FINISHED", "FAILED", timeout=timeout)
    except AssertionError as exc:
        task = yard.task(task_id)
        attempts = [(a["serverId"], a["errorCode"], a["error"]) for a in task["attempts"]]
        raise AssertionError(f"{exc}\nnow {task['status']}, attempts {attempts}") from None


def expected_result(task_id: str, size: int) -> Any:
    return orjson.loads(result_body(size, task_id))


# ---- results up to the cap are read whole --------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunk", "delay_ms", "length"),
    [
        (1_000_000, 16_384, 1, True),
        (1_000_000, 16_384, 1, False),
        (9_000_000, 65_536, 1, True),
        (9_000_000, 65_536, 1, False),
    ],
    ids=["1MB-length", "1MB-chunked", "9MB-length", "9MB-chunked"],
)
def test_large_result_in_small_delayed_pieces_finishes_on_one_attempt(
    fleet: Fleet, backend: ChunkyBackend, size: int, chunk: int, delay_ms: int, length: bool
) -> None:
    """A result of 1 MB or 9 MB, written in many small pieces 1 ms apart, with or without a
    Content-Length, is the task's exact result after one attempt."""
    server_id = register_checkless(fleet, backend, "big")
    task_id = submit(fleet, size=size, chunk=chunk, delay_ms=delay_ms, length=length)
    task = final(fleet.yard, task_id, timeout=30)

    assert task["status"] == "FINISHED", task["attempts"]
    assert task["result"] == expected_result(task_id, size)
    assert [a["serverId"] for a in task["attempts"]] == [server_id]
    written = backend.finished("predict", task_id)
    assert (written["written"], written["error"]) == (size, None)


@pytest.mark.parametrize("length", [True, False], ids=["length", "chunked"])
def test_small_result_in_two_pieces_50_ms_apart_finishes(
    fleet: Fleet, backend: ChunkyBackend, length: bool
) -> None:
    """The issue's case: 91 bytes written as 46 + 45, 50 ms apart."""
    register_checkless(fleet, backend, "two-pieces")
    task_id = submit(fleet, size=91, chunk=46, delay_ms=50, length=length)
    task = final(fleet.yard, task_id)

    assert task["status"] == "FINISHED", task["attempts"]
    assert task["result"] == expected_result(task_id, 91)
    assert len(task["attempts"]) == 1


@pytest.mark.parametrize("length", [True, False], ids=["length", "chunked"])
def test_async_result_of_5_mb_by_callback_finishes(
    fleet: Fleet, backend: ChunkyBackend, length: bool
) -> None:
    """A 5 MB result PUT by an async backend (more than the 1 MiB request body cap, within the
    answer cap) is accepted and becomes the task's result."""
    register_checkless(fleet, backend, "async-big", **ASYNC)
    task_id = submit(fleet, size=5_000_000, chunk=65_536, delay_ms=1, length=length, **ASYNC)
    task = final(fleet.yard, task_id, timeout=30)

    callback = backend.finished("callback", task_id)
    assert callback["status"] == 200, callback
    assert task["status"] == "FINISHED", task["attempts"]
    # A callback's result is stored as validated, with the TaskResult's defaults filled in.
    assert task["result"]["data"] == expected_result(task_id, 5_000_000)["data"]


# ---- answers over the cap --------------------------------------------------------------------


@pytest.mark.parametrize("length", [True, False], ids=["length", "chunked"])
def test_answer_over_the_cap_fails_at_once_and_keeps_the_server(
    capped: Fleet, backend: ChunkyBackend, length: bool
) -> None:
    """A 2 MB answer over the 1 MiB cap fails its task with response_too_large, naming the cap,
    after one attempt although another server is free; twice in a row does not take a server
    (without a health URL, so nothing would bring it back) out of rotation."""
    servers = [register_checkless(capped, backend, name) for name in ("cap-a", "cap-b")]
    for _ in range(2):
        task_id = submit(capped, size=2_000_000, chunk=65_536, delay_ms=1, length=length)
        task = final(capped.yard, task_id)

        assert task["status"] == "FAILED", task
        assert task["errorCode"] == "response_too_large"
        assert CAP_ERROR in task["error"], task["error"]
        (attempt,) = task["attempts"]
        assert attempt["errorCode"] == "response_too_large"
        assert len(backend.records("predict", task_id)) == 1

    ok = submit(capped, size=1_000, chunk=100, delay_ms=1, length=length)
    assert final(capped.yard, ok)["status"] == "FINISHED"
    for server_id in servers:
        server = capped.yard.server(server_id) or {}
        assert server.get("status") == "online", server
        assert server["health"]["dispatchFailures"] == 0, server


def test_endless_answer_is_cut_off_at_the_cap(capped: Fleet, backend: ChunkyBackend) -> None:
    """A chunked answer of 256 MB is not read to its end: the coordinator hangs up once it is
    past the cap, and the backend's writes fail long before it has written it all."""
    register_checkless(capped, backend, "endless")
    offered = 256 * 1024 * 1024
    task_id = submit(capped, size=offered, chunk=65_536, length=False, junk=True)
    task = final(capped.yard, task_id)
    assert (task["status"], task["errorCode"]) == ("FAILED", "response_too_large"), task

    record = backend.finished("predict", task_id)
    assert record["error"] is not None, record  # the coordinator hung up...
    # ...after its 1 MiB; the rest of what was written sat in socket buffers (tens of MB at most).
    assert record["written"] < offered // 4, record


# ---- health answers --------------------------------------------------------------------------


def register_with_health(fleet: Fleet, backend: ChunkyBackend, name: str, query: str) -> str:
    server_id = fleet.sid(name)
    endpoints = {"predict": backend.url + "/predict", "health": f"{backend.url}/health?{query}"}
    fleet.register_raw({"id": server_id, "endpoints": endpoints})
    return server_id


@pytest.mark.parametrize("length", ["1", "0"], ids=["length", "chunked"])
def test_slow_health_answer_in_pieces_counts_as_healthy(
    capped: Fleet, backend: ChunkyBackend, length: str
) -> None:
    """A health answer of 40 kB in 20 pieces 20 ms apart is healthy, and read to its end."""
    query = f"size=40000&chunk=2000&delay_ms=20&length={length}&tag={capped.tag}"
    server_id = register_with_health(capped, backend, "slow-health", query)
    wait_for(
        lambda: (capped.yard.server(server_id) or {}).get("status") == "online",
        what=f"{server_id} online",
    )
    first = backend.records("health", capped.tag)[0]
    assert (first["done"], first["written"], first["error"]) == (True, 40_000, None), first


def test_health_answer_over_the_cap_is_not_healthy(capped: Fleet, backend: ChunkyBackend) -> None:
    """A 200 whose health body is over the cap leaves the server offline, and says why."""
    server_id = register_with_health(capped, backend, "huge-health", "size=2000000&chunk=65536")

    def last_error() -> str | None:
        server = capped.yard.server(server_id) or {}
        error: str | None = server.get("health", {}).get("lastError")
        return error

    error = wait_for(last_error, what=f"{server_id} to fail a health check")
    assert error.startswith("health answer " + CAP_ERROR), error
    assert (capped.yard.server(server_id) or {})["status"] == "offline"


# ---- callback bodies -------------------------------------------------------------------------


def test_callback_bodies_may_be_as_large_as_answers(capped: Fleet, backend: ChunkyBackend) -> None:
    """A callback of 600 kB (over the 256 KiB request body cap, within the answer cap) finishes
    its task; one of 2 MB is 413 naming the answer cap, with or without Content-Length; other
    routes keep the request body cap."""
    register_checkless(capped, backend, "async-capped", **ASYNC)
    fits = submit(capped, size=600_000, chunk=65_536, **ASYNC)
    task = final(capped.yard, fits)
    assert task["status"] == "FINISHED", task
    assert task["result"]["data"] == expected_result(fits, 600_000)["data"]

    for length in (True, False):
        too_big = submit(capped, size=2_000_000, chunk=65_536, length=length, **ASYNC)
        callback = backend.finished("callback", too_big)
        assert callback["status"] == 413, callback
        limit = f"larger than the {RESPONSE_CAP}-byte limit (TASKYARD_MAX_BACKEND_RESPONSE_BYTES)"
        assert limit in callback["response"], callback
        # Undelivered, it would stay PROCESSING until its deadline, then run again.
        cancel = capped.yard.admin.post(f"/api/task/{too_big}/cancel")
        assert cancel.status_code == 200, cancel.text

    create = capped.yard.admin.post("/api/task", json={"model": "m", "pad": "x" * 300_000})
    assert create.status_code == 413, create.text
    assert f"larger than the {BODY_CAP}-byte limit (TASKYARD_MAX_BODY_BYTES)" in create.text
