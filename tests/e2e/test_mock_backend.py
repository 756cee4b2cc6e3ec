"""End-to-end tests of the mock backend, run as a real process over 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.support import MockBackend

STARTUP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@dataclass
class Backend:
    proc: subprocess.Popen[bytes]
    url: str
    client: httpx.Client

    def predict(self, body: Any, **kwargs: Any) -> httpx.Response:
        return self.client.post("/predict", json=body, **kwargs)

    def control(self, **changes: Any) -> httpx.Response:
        return self.client.post("/control", json=changes)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=5)


def start_backend(**config: Any) -> Backend:
    """Launch `run(MockConfig(...))` in a subprocess and wait until it answers."""
    port = free_port()
    config.setdefault("server_id", "m1")
    code = (
        "from taskyard.mockbackend import MockConfig, run; "
        f"run(MockConfig(**{config!r}), host='127.0.0.1', port={port})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=5.0)
    backend = Backend(proc, url, client)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            backend.stop()
            pytest.fail(f"mock backend exited early: {proc.stderr.read() if proc.stderr else ''!r}")
        try:
            # /info, not /health: it stays open when an API key is set, and leaves no record.
            if client.get("/info", timeout=0.5).status_code == 200:
                return backend
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    backend.stop()
    pytest.fail("mock backend did not answer /info in time")


@pytest.fixture
def spawn() -> Iterator[Callable[..., Backend]]:
    started: list[Backend] = []

    def _spawn(**config: Any) -> Backend:
        backend = start_backend(**config)
        started.append(backend)
        return backend

    yield _spawn
    for backend in started:
        backend.stop()


@pytest.fixture(scope="module")
def shared_backend() -> Iterator[Backend]:
    backend = start_backend(server_id="m1")
    yield backend
    backend.stop()


@pytest.fixture
def backend(shared_backend: Backend) -> Backend:
    assert shared_backend.client.post("/control/reset").status_code == 200
    return shared_backend


@dataclass
class Receiver:
    """A callback endpoint recording every PUT; answers `status`."""

    port: int
    status: int = 200
    puts: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.puts.append(
                    {
                        "path": self.path,
                        "authorization": self.headers.get("Authorization"),
                        "body": json.loads(body),
                    }
                )
                payload = b'{"ok": true}'
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(port=free_port())
    yield rec
    rec.stop()


def envelope(task_id: str, request: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_id": task_id,
        "request": {"prompt": "hi"} if request is None else request,
        "async": False,
        "callback_url": None,
        "callback_token": None,
        "attempt": 1,
    }
    body.update(extra)
    return body


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
    time.sleep(1.0)
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

    assert wait_until(lambda: len(backend.client.get("/callbacks").json()["callbacks"]) == 1)
    time.sleep(0.3)  # several retry delays: a wrong retry would show up by now
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
        time.sleep(0.5)
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
        time.sleep(0.2)
        backend.proc.terminate()
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


# ---- Cancels ------------------------------------------------------------------------------


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
