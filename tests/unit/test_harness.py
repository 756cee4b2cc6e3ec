"""`taskyard.testing`'s harness: the real app in-process, its backends, its lifespan, its clock,
and the synchronous runner. The first test is docs/testing.md's example, as printed there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from taskyard.api.app import create_app as real_create_app
from taskyard.client import AsyncClient, Client, TaskStatus
from taskyard.storage.sql import SqlStore
from taskyard.testing import (
    BlockingHarness,
    FakeBackend,
    FakeClock,
    Harness,
    MemoryStore,
    harness_settings,
    lifespan,
)


# ---- docs/testing.md's example -------------------------------------------------------------
async def test_my_backend_gets_the_task_and_the_client_its_result() -> None:
    async with Harness() as yard:
        backend = FakeBackend("gpu-1")
        await yard.add_backend(backend, models=["upscaler"])
        async with yard.client(yard.token(["user"], "alice")) as alice:
            created = await alice.post("/api/task", json={"model": "upscaler", "n": 1})
            assert created.status_code == 200
            task_id = created.json()["taskId"]
            done = await alice.get(f"/api/task/{task_id}", params={"wait": 10})
        task = done.json()["taskDetails"]
        assert task["status"] == "FINISHED"
        assert task["result"]["data"]["echo"] == {"model": "upscaler", "n": 1}
        assert backend.received[0]["task_id"] == task_id


# --------------------------------------------------------------------------------------------


async def test_an_async_backend_reports_with_the_callback_token_it_was_sent() -> None:
    async with Harness() as yard:
        backend = FakeBackend("gpu-async", accept=True)
        registration: dict[str, Any] = {"async": True}
        await yard.add_backend(backend, **registration)
        task_id = await yard.submit({"model": "m"})
        await yard.wait_status(task_id, "PROCESSING")
        [sent] = backend.received
        assert sent["callback_url"].endswith(f"/api/task/{task_id}")
        report = {"data": {"ok": True}, "metadata": {"status": "FINISHED"}}
        async with yard.client(sent["callback_token"]) as itself:
            assert (await itself.put(f"/api/task/{task_id}", json=report)).status_code == 200
        assert (await yard.task(task_id))["result"]["data"] == {"ok": True}


async def big_answer(request: Request) -> Response:
    return Response(b'{"data": "' + b"x" * 4096 + b'"}', media_type="application/json")


async def ok_health(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


OVERSIZED = Starlette(
    routes=[
        Route("/{server}/predict", big_answer, methods=["POST"]),
        Route("/{server}/health", ok_health),
    ]
)


async def test_answers_are_judged_by_the_production_rules() -> None:
    """An app of one's own answers; what its answer means is `taskyard.backends`' rule (here:
    over the size cap, so the task fails without a retry)."""
    async with Harness(harness_settings(max_backend_response_bytes=1024)) as yard:
        await yard.add_backend(OVERSIZED, server_id="too-big")
        task = await yard.wait_status(await yard.submit(), "FAILED")
        assert task["errorCode"] == "response_too_large"
        assert "1024-byte cap" in task["error"]
        assert len(task["attempts"]) == 1


async def test_a_backend_nothing_serves_fails_as_a_closed_port_would() -> None:
    async with Harness(harness_settings(health_retries=0)) as yard:

        async def failed(server_id: str) -> dict[str, Any] | None:
            server: dict[str, Any] = (await yard.admin.get(f"/api/servers/{server_id}")).json()
            return server if server["health"]["lastError"] else None

        endpoints = {"predict": "http://nowhere.test/p", "health": "http://nowhere.test/h"}
        body = {"id": "nowhere", "endpoints": endpoints, "models": ["elsewhere"]}
        assert (await yard.admin.post("/api/servers", json=body)).status_code == 200
        nowhere = await yard.wait_until(lambda: failed("nowhere"), what="nowhere checked")
        assert nowhere["status"] == "offline"
        assert "nothing is mounted" in nowhere["health"]["lastError"]

        gone = FakeBackend("gone")
        await yard.add_backend(gone, models=["m"])
        yard.backends.unmount(gone.url)
        task_id = await yard.submit({"model": "m"})
        gone_now = await yard.wait_until(lambda: failed("gone"), what="gone's dispatch failed")
        assert gone_now["status"] == "offline"
        task = await yard.task(task_id)
        assert task["status"] == "WAITING"
        assert "nothing is mounted" in task["attempts"][0]["error"]
        assert gone.received == []


async def test_the_lifespan_starts_and_stops_the_app_and_raises_its_startup_error() -> None:
    steps: list[str] = []

    @asynccontextmanager
    async def recorded(app: Starlette) -> AsyncIterator[None]:
        steps.append("startup")
        yield
        steps.append("shutdown")

    async with lifespan(Starlette(lifespan=recorded)):
        assert steps == ["startup"]
    assert steps == ["startup", "shutdown"]

    @asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("no database here")
        yield

    with pytest.raises(RuntimeError, match="no database here"):
        async with lifespan(Starlette(lifespan=broken)):
            pytest.fail("started although its startup raised")


async def test_the_harness_stops_the_node_it_started() -> None:
    yard = Harness()
    async with yard:
        coordinator = yard.coordinator
        assert not coordinator.shutting_down.is_set()
    assert coordinator.shutting_down.is_set()


def test_a_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(start_ms=5_000)
    assert (clock.now_ms(), clock.monotonic()) == (5_000, 0.0)
    clock.advance(1.5)
    assert (clock.now_ms(), clock.monotonic()) == (6_500, 1.5)
    with pytest.raises(ValueError):
        clock.advance(-1)


async def test_the_harness_hands_its_clock_and_store_to_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def create_app(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real_create_app(*args, **kwargs)

    monkeypatch.setattr("taskyard.testing.harness.create_app", create_app)
    clock, store = FakeClock(), MemoryStore()
    async with Harness(clock=clock, store=store) as yard:
        assert yard.store is store
    assert seen["clock"] is clock and seen["store"] is store
    assert seen["client"] is yard.backends


async def test_the_fake_clock_is_the_domains_time() -> None:
    """The clock reaches the Coordinator: a task is stamped with the fake time, not the
    system's, and moves only when the clock does."""
    clock = FakeClock(start_ms=1_000_000)
    async with Harness(clock=clock) as yard:
        assert yard.coordinator.clock is clock
        first = await yard.store.get_task(await yard.submit())
        clock.advance(2.5)
        second = await yard.store.get_task(await yard.submit())
    assert first is not None and second is not None
    assert (first.created_at, second.created_at) == (1_000_000, 1_002_500)


async def test_with_database_the_node_opens_its_production_store(tmp_path: Path) -> None:
    database = tmp_path / "harness.db"
    settings = harness_settings(database_url=f"sqlite:///{database}")
    async with Harness(settings, database=True) as yard:
        assert isinstance(yard.store, SqlStore)
        await yard.submit()
    assert database.exists()
    with pytest.raises(ValueError, match="not both"):
        Harness(store=MemoryStore(), database=True)


def test_the_blocking_harness_serves_sync_clients_and_the_sdk() -> None:
    with BlockingHarness() as yard:
        backend = FakeBackend("gpu-sync")
        yard.call(partial(yard.harness.add_backend, backend, models=["m"]))
        with Client(yard.url, yard.token(["user"], "alice"), transport=yard.transport) as sdk:
            task = sdk.wait(sdk.submit("m", {"n": 2}).id, timeout_s=10)
        assert task.status == TaskStatus.FINISHED
        waiting = yard.admin.post("/api/task", json={"model": "nobody"}).json()["taskId"]
        with pytest.raises(httpx.ReadTimeout):  # the client's read timeout holds
            yard.admin.get(f"/api/task/{waiting}", params={"wait": 5}, timeout=0.2)
        chunked = yard.admin.post("/api/task", content=iter([b'{"model": ', b'"m"}']))
        assert chunked.status_code == 200, chunked.text


async def test_the_async_sdk_runs_on_the_harness_transport() -> None:
    async with Harness() as yard:
        await yard.add_backend(FakeBackend("gpu-sdk"))
        token = yard.token(["user"], "alice")
        async with AsyncClient(yard.url, token, transport=yard.transport) as sdk:
            task = await sdk.wait((await sdk.submit("m")).id, timeout_s=10)
        assert task.status == TaskStatus.FINISHED
