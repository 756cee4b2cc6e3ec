"""End-to-end tests of the mock backend, run as a real process over 127.0.0.1: predicts,
callbacks, controls, health checks. (Cancels and API keys: test_cancels.py.)"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.mock_backend.parts import Backend, Receiver, envelope, wait_until


def test_sync_predict_returns_task_result(backend: Backend) -> None:
    """A sync predict answers 200 with a TaskResult that /result/{id} also serves."""
    resp = backend.predict(envelope("t-sync", {"x": [1, 2]}))
    assert resp.status_code == 200
    result = resp.json()
    assert isinstance(result["backend_task_id"], str)
    assert result["data"] == {"echo": {"x": [1, 2]}, "server_id": "m1"}
    meta = result["metadata"]
    assert meta["server_id"] == "m1"
    assert meta["status"] == "FINISHED"
    assert meta["queue_time"] == 0
    assert meta["processing_time"] >= meta["model_time"] >= 0

    stored = backend.client.get("/result/t-sync")
    assert stored.status_code == 200
    assert stored.json() == result
    missing = backend.client.get("/result/nope")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Result nope not found"}


def test_bare_payload_and_invalid_json(backend: Backend) -> None:
    """A bare body is echoed as the request; invalid JSON is a 400."""
    resp = backend.predict({"prompt": "direct"})
    assert resp.status_code == 200
    assert resp.json()["data"]["echo"] == {"prompt": "direct"}

    bad = backend.client.post(
        "/predict", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400
    assert "error" in bad.json()


def test_delay_is_applied(backend: Backend) -> None:
    """delay_ms set through /control slows a sync predict and shows in model_time."""
    assert backend.control(delay_ms=200).status_code == 200
    started = time.monotonic()
    resp = backend.predict(envelope("t-delay"))
    assert time.monotonic() - started >= 0.19
    assert resp.json()["metadata"]["model_time"] >= 190


def test_async_predict_delivers_callback(backend: Backend, receiver: Receiver) -> None:
    """An async predict answers 202 and later PUTs the TaskResult with the bearer token."""
    receiver.start()
    body = envelope(
        "t-async",
        {"n": 1},
        **{
            "async": True,
            "callback_url": f"{receiver.url}/tasks/t-async/callback",
            "callback_token": "secret-token",
        },
    )
    resp = backend.predict(body)
    assert resp.status_code == 202
    assert resp.json()["status"] == "PROCESSING"

    assert wait_until(lambda: len(receiver.puts) == 1)
    put = receiver.puts[0]
    assert put["path"] == "/tasks/t-async/callback"
    assert put["authorization"] == "Bearer secret-token"
    assert put["body"]["data"] == {"echo": {"n": 1}, "server_id": "m1"}
    assert put["body"]["metadata"]["status"] == "FINISHED"
    assert backend.client.get("/result/t-async").json() == put["body"]
    assert wait_until(lambda: len(backend.client.get("/callbacks").json()["callbacks"]) == 1)
    record = backend.client.get("/callbacks").json()["callbacks"][0]
    assert (record["task_id"], record["status"], record["tries"]) == ("t-async", 200, 1)


def test_force_async_control(backend: Backend) -> None:
    """The async control makes a sync-looking payload answer 202; the result still lands."""
    assert backend.control(**{"async": True}).json()["async"] is True
    resp = backend.predict(envelope("t-forced"))
    assert resp.status_code == 202
    assert wait_until(lambda: backend.client.get("/result/t-forced").status_code == 200)


def test_callback_retried_until_receiver_is_up(
    spawn: Callable[..., Backend], receiver: Receiver
) -> None:
    """A refused callback connection is retried; the PUT lands once the receiver starts."""
    backend = spawn(callback_retry_delay_s=0.1, callback_retries=6)
    body = envelope(
        "t-retry",
        **{"async": True, "callback_url": f"{receiver.url}/cb", "callback_token": "tok"},
    )
    assert backend.predict(body).status_code == 202
    # The first try was refused and another is due: the receiver starts only now.
    assert wait_until(lambda: backend.client.get("/info").json()["callback_retries"] >= 1)
    assert receiver.puts == []
    receiver.start()

    assert wait_until(lambda: len(receiver.puts) == 1, timeout=8.0)
    assert receiver.puts[0]["authorization"] == "Bearer tok"
    assert wait_until(lambda: len(backend.client.get("/callbacks").json()["callbacks"]) == 1)
    record = backend.client.get("/callbacks").json()["callbacks"][0]
    assert record["status"] == 200
    assert record["tries"] > 1


def test_callback_conflict_is_not_retried(
    spawn: Callable[..., Backend], receiver: Receiver
) -> None:
    """A 409 from the callback receiver is final: exactly one PUT."""
    backend = spawn(callback_retry_delay_s=0.05)
    receiver.status = 409
    receiver.start()
    body = envelope("t-409", **{"async": True, "callback_url": f"{receiver.url}/cb"})
    assert backend.predict(body).status_code == 202

    # The record is written once the delivery has ended: no retry can follow it.
    assert wait_until(lambda: len(backend.client.get("/callbacks").json()["callbacks"]) == 1)
    assert backend.client.get("/info").json()["callback_retries"] == 0
    assert len(receiver.puts) == 1
    assert receiver.puts[0]["authorization"] is None
    record = backend.client.get("/callbacks").json()["callbacks"][0]
    assert (record["status"], record["tries"]) == (409, 1)


def test_error_rate_one_fails_every_predict(spawn: Callable[..., Backend]) -> None:
    """With error_rate=1 every predict gets the injected 500."""
    backend = spawn(error_rate=1.0)
    for i in range(3):
        resp = backend.predict(envelope(f"t-err-{i}"))
        assert resp.status_code == 500
        assert resp.json() == {"error": "injected failure"}
    assert backend.client.get("/result/t-err-0").status_code == 404


def test_fail_status_control(backend: Backend) -> None:
    """fail_status forces that status until it is cleared with null."""
    assert backend.control(fail_status=503).status_code == 200
    resp = backend.predict(envelope("t-fail"))
    assert resp.status_code == 503
    assert resp.json() == {"error": "forced status"}
    assert backend.control(fail_status=None).status_code == 200
    assert backend.predict(envelope("t-fail")).status_code == 200


def test_unhealthy_toggle(backend: Backend) -> None:
    """The unhealthy control turns /health into a 503 and back."""
    assert backend.client.get("/health").json() == {"status": "ok", "server_id": "m1"}
    assert backend.control(unhealthy=True).status_code == 200
    resp = backend.client.get("/health")
    assert resp.status_code == 503
    assert resp.json() == {"status": "unhealthy"}
    assert backend.control(unhealthy=False).status_code == 200
    assert backend.client.get("/health").status_code == 200


def test_hang_holds_predict_until_released(backend: Backend) -> None:
    """While hang is on a predict never answers; switching it off releases it."""
    assert backend.control(hang=True, health_hang=True).status_code == 200
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: Future[httpx.Response] = pool.submit(
            backend.predict, envelope("t-hang"), timeout=10.0
        )
        pending_health: Future[httpx.Response] = pool.submit(
            backend.client.get, "/health", timeout=10.0
        )
        # Both reached the mock (counted in flight, recorded as a check), and are held.
        assert wait_until(lambda: backend.client.get("/info").json()["in_flight"] == 1)
        assert wait_until(lambda: len(backend.client.get("/health-checks").json()["checks"]) == 1)
        assert not pending.done()
        assert not pending_health.done()
        info = backend.client.get("/info").json()
        assert (info["hang"], info["in_flight"]) == (True, 1)

        assert backend.control(hang=False, health_hang=False).status_code == 200
        assert pending.result(timeout=5).status_code == 200
        assert pending_health.result(timeout=5).status_code == 200
    info = backend.client.get("/info").json()
    assert (info["in_flight"], info["max_in_flight"], info["completed"]) == (0, 1, 1)


def test_crash_next_exits_137(spawn: Callable[..., Backend]) -> None:
    """crash_next kills the process with exit code 137 on the next predict."""
    backend = spawn()
    assert backend.control(crash_next=True).status_code == 200
    with pytest.raises(httpx.TransportError):
        backend.predict(envelope("t-crash"))
    assert backend.proc.wait(timeout=5) == 137


def test_sigterm_while_hung_exits_promptly(spawn: Callable[..., Backend]) -> None:
    """A graceful shutdown does not wait on hung predicts."""
    backend = spawn()
    assert backend.control(hang=True).status_code == 200
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(backend.predict, envelope("t-term"), timeout=10.0)
        assert wait_until(lambda: backend.client.get("/info").json()["in_flight"] == 1)
        backend.proc.terminate()  # with the predict held
        assert backend.proc.wait(timeout=5) == 0
        # The connection may close before the 503 is written.
        with contextlib.suppress(httpx.TransportError):
            assert pending.result(timeout=5).status_code == 503


def test_bad_control_rejected_and_unchanged(backend: Backend) -> None:
    """Invalid /control bodies are a 400 and change nothing, even partially."""
    before = backend.client.get("/control").json()
    bad_bodies: list[Any] = [
        {"delay_ms": -1},
        {"delay_ms": "fast"},
        {"error_rate": 1.5},
        {"error_rate": True},
        {"hang": "yes"},
        {"fail_status": "500"},
        {"fail_status": 200},
        {"unknown": 1},
        {"unhealthy": True, "delay_ms": -5},
        {"cancel_fail_status": 200},
        {"cancel_hang": "yes"},
        {"api_key": ""},
        {"api_key": 5},
        [1, 2],
    ]
    for body in bad_bodies:
        resp = backend.client.post("/control", json=body)
        assert resp.status_code == 400, body
        assert "error" in resp.json()
    resp = backend.client.post("/control", content=b"nope")
    assert resp.status_code == 400
    assert backend.client.get("/control").json() == before

    good = backend.control(delay_ms=5, error_rate=0.25)
    assert good.status_code == 200
    assert (good.json()["delay_ms"], good.json()["error_rate"]) == (5, 0.25)
    info = backend.client.get("/info").json()
    assert (info["delay_ms"], info["error_rate"]) == (5, 0.25)


def test_received_counts_dispatches(backend: Backend) -> None:
    """/received lists every dispatch, duplicates included; reset clears it."""
    backend.predict(envelope("t-dup", attempt=1))
    backend.predict(envelope("t-dup", attempt=2))
    backend.predict(envelope("t-other"))
    received = backend.client.get("/received").json()["received"]
    assert [(r["task_id"], r["attempt"]) for r in received] == [
        ("t-dup", 1),
        ("t-dup", 2),
        ("t-other", 1),
    ]
    assert all(isinstance(r["at"], float) for r in received)
    assert backend.client.get("/info").json()["received"] == 3

    assert backend.client.post("/control/reset").status_code == 200
    assert backend.client.get("/received").json() == {"received": []}
    assert backend.client.get("/result/t-dup").status_code == 404


def test_listening_line_and_info(spawn: Callable[..., Backend]) -> None:
    """run() prints its listening line, and /info reflects the config."""
    backend = spawn(server_id="m7", delay_ms=3, force_async=True)
    assert backend.proc.stdout is not None
    line = backend.proc.stdout.readline().decode()
    assert line.strip() == f"mock-backend m7 listening on {backend.url}"
    info = backend.client.get("/info").json()
    assert info["server_id"] == "m7"
    assert (info["delay_ms"], info["async"], info["received"]) == (3, True, 0)


def test_health_checks_record_the_node(backend: Backend) -> None:
    """/health-checks lists every health GET with its X-Taskyard-Node (None when absent) and
    its path with the query, failing checks included; reset clears it."""
    before = time.time()
    node_a = {"X-Taskyard-Node": "node-a"}
    assert backend.client.get("/health?server=s1", headers=node_a).status_code == 200
    assert backend.client.get("/health").status_code == 200
    assert backend.control(unhealthy=True).status_code == 200
    assert backend.client.get("/health", headers={"X-Taskyard-Node": "node-b"}).status_code == 503
    after = time.time()

    checks = backend.client.get("/health-checks").json()["checks"]
    assert [(c["node"], c["path"]) for c in checks] == [
        ("node-a", "/health?server=s1"),
        (None, "/health"),
        ("node-b", "/health"),
    ]
    assert all(isinstance(c["at"], float) and before <= c["at"] <= after for c in checks)
    assert [c["at"] for c in checks] == sorted(c["at"] for c in checks)
    # Other endpoints are not health checks.
    assert backend.client.get("/info").status_code == 200
    assert len(backend.client.get("/health-checks").json()["checks"]) == 3

    assert backend.client.post("/control/reset").status_code == 200
    assert backend.client.get("/health-checks").json() == {"checks": []}
