"""End-to-end tests of the mock backend's cancels and API keys, run as a real process over
127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.mock_backend.parts import Backend, Receiver, envelope, wait_until
from tests.support import MockBackend


def info(backend: Backend) -> dict[str, Any]:
    result: dict[str, Any] = backend.client.get("/info").json()
    return result


def cancels(backend: Backend) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = backend.client.get("/cancels").json()["cancels"]
    return items


def cancel(backend: Backend, task_id: str, attempt: int = 1, **kwargs: Any) -> httpx.Response:
    return backend.client.post("/cancel", json={"task_id": task_id, "attempt": attempt}, **kwargs)


def test_cancel_stops_a_hanging_sync_predict(backend: Backend) -> None:
    """A cancel of a hanging sync predict frees its slot before it answers `cancelled: true`;
    the predict then answers 409 and leaves no result. Another attempt's cancel finds nothing."""
    assert backend.control(hang=True).status_code == 200
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(backend.predict, envelope("t-c", attempt=2), timeout=10.0)
        assert wait_until(lambda: info(backend)["in_flight"] == 1)

        wrong = cancel(backend, "t-c", attempt=1)
        assert (wrong.status_code, wrong.json()) == (200, {"cancelled": False})
        assert info(backend)["in_flight"] == 1
        assert not pending.done()

        before = time.time()
        resp = cancel(backend, "t-c", attempt=2)
        assert (resp.status_code, resp.json()) == (200, {"cancelled": True})
        assert info(backend)["in_flight"] == 0  # freed before the answer, not after the 409
        answered = pending.result(timeout=5)
    assert (answered.status_code, answered.json()) == (409, {"error": "cancelled"})
    assert backend.client.get("/result/t-c").status_code == 404
    records = cancels(backend)
    assert [
        (c["task_id"], c["attempt"], c["matched"], c["stopped"], c["status"]) for c in records
    ] == [
        ("t-c", 1, False, False, 200),
        ("t-c", 2, True, True, 200),
    ]
    assert before <= records[1]["at"] <= time.time()
    assert (info(backend)["completed"], info(backend)["cancels"]) == (0, 2)

    assert backend.client.post("/control/reset").status_code == 200
    assert cancels(backend) == []


def test_hold_ms_is_a_bounded_cancellable_hold(backend: Backend) -> None:
    """hold_ms (envelope) or mock_hold_ms (request body) makes one predict take that much
    longer; a cancel cuts it short."""
    started = time.monotonic()
    resp = backend.predict(envelope("t-hold", {"mock_hold_ms": 300}))
    assert resp.status_code == 200
    assert time.monotonic() - started >= 0.29
    assert resp.json()["metadata"]["model_time"] >= 290
    assert backend.predict(envelope("t-quick")).json()["metadata"]["model_time"] < 250

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(backend.predict, envelope("t-long", hold_ms=30_000), timeout=10.0)
        assert wait_until(lambda: info(backend)["in_flight"] == 1)
        assert cancel(backend, "t-long").json() == {"cancelled": True}
        assert pending.result(timeout=5).status_code == 409

    # Async: the hold is background work, so the 202 comes at once.
    accepted = backend.predict(envelope("t-bg", hold_ms=30_000, **{"async": True}), timeout=2.0)
    assert accepted.status_code == 202
    assert info(backend)["in_flight"] == 1
    assert cancel(backend, "t-bg").json() == {"cancelled": True}
    assert info(backend)["in_flight"] == 0

    bad = backend.predict(envelope("t-bad", hold_ms=-1))
    assert bad.status_code == 400
    assert "hold_ms" in bad.json()["error"]


def test_cancel_stops_an_async_task_before_its_callback(
    backend: Backend, receiver: Receiver
) -> None:
    """A cancelled async task sends no callback: a task accepted after it, with the same work
    time, calls back while the cancelled one stays silent."""
    receiver.start()
    # Long enough that the cancel surely comes while t-gone is still working.
    assert backend.control(delay_ms=1000).status_code == 200

    def async_envelope(task_id: str) -> dict[str, Any]:
        url = f"{receiver.url}/tasks/{task_id}"
        return envelope(task_id, **{"async": True, "callback_url": url, "callback_token": "t"})

    assert backend.predict(async_envelope("t-gone")).status_code == 202
    assert info(backend)["in_flight"] == 1
    assert cancel(backend, "t-gone").json() == {"cancelled": True}
    assert info(backend)["in_flight"] == 0
    assert backend.predict(async_envelope("t-kept")).status_code == 202

    assert wait_until(lambda: len(backend.client.get("/callbacks").json()["callbacks"]) == 1)
    assert [put["path"] for put in receiver.puts] == ["/tasks/t-kept"]
    assert [c["task_id"] for c in backend.client.get("/callbacks").json()["callbacks"]] == [
        "t-kept"
    ]
    assert backend.client.get("/result/t-gone").status_code == 404
    assert wait_until(lambda: info(backend)["in_flight"] == 0)
    # Done now: a second cancel has nothing to stop.
    assert cancel(backend, "t-kept").json() == {"cancelled": False}


def test_cancel_stops_callback_retries(spawn: Callable[..., Backend], receiver: Receiver) -> None:
    """An async task whose callback is refused stays in flight while it waits to retry; a
    cancel ends the retries and frees it."""
    backend = spawn(callback_retry_delay_s=0.2, callback_retries=50)
    body = envelope("t-retry", **{"async": True, "callback_url": f"{receiver.url}/cb"})
    assert backend.predict(body).status_code == 202
    assert wait_until(lambda: info(backend)["in_flight"] == 1)
    assert cancel(backend, "t-retry").json() == {"cancelled": True}
    assert info(backend)["in_flight"] == 0

    assert wait_until(lambda: len(backend.client.get("/callbacks").json()["callbacks"]) == 1)
    (record,) = backend.client.get("/callbacks").json()["callbacks"]
    assert (record["task_id"], record["status"], record["error"]) == (
        "t-retry",
        None,
        "stopped by a cancel",
    )
    assert info(backend)["in_flight"] == 0


def test_cancel_of_unknown_or_finished_task(backend: Backend) -> None:
    """A cancel with nothing running for it answers `cancelled: false`; a bad body is a 400."""
    assert cancel(backend, "never-seen").json() == {"cancelled": False}
    assert backend.predict(envelope("t-done")).status_code == 200
    assert cancel(backend, "t-done").json() == {"cancelled": False}
    assert [(c["task_id"], c["matched"], c["stopped"]) for c in cancels(backend)] == [
        ("never-seen", False, False),
        ("t-done", False, False),
    ]
    for bad in ({"task_id": "x"}, {"task_id": "", "attempt": 1}, {"task_id": "x", "attempt": "1"}):
        resp = backend.client.post("/cancel", json=bad)
        assert resp.status_code == 400, bad
    assert backend.client.post("/cancel", content=b"{nope").status_code == 400
    assert len(cancels(backend)) == 2


def test_cancel_fail_status_and_cancel_hang(backend: Backend) -> None:
    """cancel_fail_status answers that status and stops nothing; cancel_hang holds the cancel
    until released, and the released cancel then stops the attempt."""
    assert backend.control(hang=True, cancel_fail_status=503).status_code == 200
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = pool.submit(backend.predict, envelope("t-f"), timeout=10.0)
        assert wait_until(lambda: info(backend)["in_flight"] == 1)

        failed = cancel(backend, "t-f")
        assert (failed.status_code, failed.json()) == (503, {"error": "forced status"})
        assert info(backend)["in_flight"] == 1
        assert not pending.done()

        controls = backend.control(cancel_fail_status=None, cancel_hang=True).json()
        assert (controls["cancel_fail_status"], controls["cancel_hang"]) == (None, True)
        hung = pool.submit(cancel, backend, "t-f", timeout=10.0)
        # The hanging cancel is recorded on arrival, unanswered.
        assert wait_until(lambda: len(cancels(backend)) == 2)
        assert cancels(backend)[1]["status"] is None
        assert not hung.done()
        assert info(backend)["in_flight"] == 1

        assert backend.control(cancel_hang=False).status_code == 200
        released = hung.result(timeout=5)
        assert (released.status_code, released.json()) == (200, {"cancelled": True})
        assert pending.result(timeout=5).status_code == 409
    assert [(c["matched"], c["stopped"], c["status"]) for c in cancels(backend)] == [
        (True, False, 503),
        (True, True, 200),
    ]

    # Reset releases a hanging cancel too.
    assert backend.control(cancel_hang=True).status_code == 200
    with ThreadPoolExecutor(max_workers=1) as pool:
        hung = pool.submit(cancel, backend, "nothing", timeout=10.0)
        assert wait_until(lambda: len(cancels(backend)) == 3)
        assert backend.client.post("/control/reset").json()["cancel_hang"] is False
        assert hung.result(timeout=5).json() == {"cancelled": False}


def test_in_flight_outlives_the_client_of_a_hanging_predict(backend: Backend) -> None:
    """A sync predict whose client hung up still holds its slot (as a GPU server would keep
    computing) until it is released; then it completes."""
    assert backend.control(hang=True).status_code == 200
    with pytest.raises(httpx.ReadTimeout):
        backend.predict(envelope("t-gone-client"), timeout=0.3)
    assert wait_until(lambda: info(backend)["abandoned"] == 1)  # the mock saw the hang-up
    assert (info(backend)["in_flight"], info(backend)["max_in_flight"]) == (1, 1)

    assert backend.control(hang=False).status_code == 200
    assert wait_until(lambda: info(backend)["in_flight"] == 0)
    assert (info(backend)["completed"], info(backend)["abandoned"]) == (1, 0)
    assert backend.client.get("/result/t-gone-client").status_code == 200


def test_abandoned_predict_held_until_cancelled(backend: Backend) -> None:
    """A held predict whose client hung up is freed by a cancel, not by the hang-up."""
    with pytest.raises(httpx.ReadTimeout):
        backend.predict(envelope("t-held", hold_ms=30_000), timeout=0.3)
    assert wait_until(lambda: info(backend)["abandoned"] == 1)
    assert info(backend)["in_flight"] == 1
    assert cancel(backend, "t-held").json() == {"cancelled": True}
    assert (info(backend)["in_flight"], info(backend)["abandoned"]) == (0, 0)


# ---- API key ------------------------------------------------------------------------------


def test_api_key_required_and_recorded(spawn: Callable[..., Backend]) -> None:
    """With an API key, predict/health/cancel want `Bearer KEY` (401 otherwise, counted);
    each record says whether a header came and matched, never the key; control stays open."""
    backend = spawn(api_key="k-one")
    good = {"Authorization": "Bearer k-one"}
    wrong = {"Authorization": "Bearer nope"}
    client = backend.client

    assert backend.predict(envelope("t-anon")).status_code == 401
    assert backend.predict(envelope("t-wrong"), headers=wrong).json() == {"error": "unauthorized"}
    assert backend.predict(envelope("t-ok"), headers=good).status_code == 200
    assert client.get("/health").status_code == 401
    assert client.get("/health", headers=good).status_code == 200
    assert cancel(backend, "t-ok").status_code == 401
    assert cancel(backend, "t-ok", headers=good).json() == {"cancelled": False}
    assert client.post("/predict", content=b"{bad", headers=wrong).status_code == 401
    assert client.post("/predict", content=b"{bad", headers=good).status_code == 400

    assert info(backend)["unauthorized"] == 5
    received = client.get("/received").json()["received"]
    assert [(r["task_id"], r["auth_header"], r["auth_matched"]) for r in received] == [
        ("t-anon", False, False),
        ("t-wrong", True, False),
        ("t-ok", True, True),
    ]
    checks = client.get("/health-checks").json()["checks"]
    assert [(c["auth_header"], c["auth_matched"]) for c in checks] == [(False, False), (True, True)]
    assert [(c["auth_matched"], c["status"]) for c in cancels(backend)] == [
        (False, 401),
        (True, 200),
    ]
    for path in ("/received", "/health-checks", "/cancels", "/info", "/control"):
        assert "k-one" not in client.get(path).text, path
    assert client.get("/control").json()["api_key_set"] is True

    # Switched at run time; reset goes back to the configured key.
    assert backend.control(api_key=None).json()["api_key_set"] is False
    assert client.get("/health").status_code == 200
    assert backend.control(api_key="k-two").status_code == 200
    assert client.get("/health", headers=good).status_code == 401
    assert client.get("/health", headers={"Authorization": "Bearer k-two"}).status_code == 200
    assert client.post("/control/reset").json()["api_key_set"] is True
    assert info(backend)["unauthorized"] == 0
    assert client.get("/health", headers=good).status_code == 200


def test_no_api_key_accepts_any_authorization(backend: Backend) -> None:
    """Without a key every call passes; a header sent anyway is recorded, unmatched."""
    headers = {"Authorization": "Bearer whatever"}
    assert backend.predict(envelope("t-h"), headers=headers).status_code == 200
    assert backend.predict(envelope("t-n")).status_code == 200
    received = backend.client.get("/received").json()["received"]
    assert [(r["auth_header"], r["auth_matched"]) for r in received] == [
        (True, False),
        (False, False),
    ]
    assert info(backend)["unauthorized"] == 0


def test_cli_api_key(mock_factory: Callable[..., MockBackend]) -> None:
    """`taskyard mock-backend --api-key KEY` requires the key; the test helper knows it."""
    backend = mock_factory("keyed", api_key="cli-key")
    assert backend.api_key == "cli-key"
    assert httpx.get(backend.url + "/health", timeout=5).status_code == 401
    headers = {"Authorization": "Bearer cli-key"}
    assert httpx.get(backend.url + "/health", headers=headers, timeout=5).status_code == 200
    assert backend.cancels() == []
    resp = httpx.post(
        backend.endpoints()["cancel"], json={"task_id": "x", "attempt": 1}, headers=headers
    )
    assert resp.json() == {"cancelled": False}
    assert [c["auth_matched"] for c in backend.cancels()] == [True]
    # The factory's readiness probe (/health, refused but enough to know it listens) came first.
    assert [c["auth_matched"] for c in backend.health_checks()][-2:] == [False, True]
