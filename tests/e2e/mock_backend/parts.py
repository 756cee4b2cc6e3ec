"""The mock backend as its e2e tests drive it: a real process on 127.0.0.1 (`Backend`), a
callback `Receiver`, and the dispatch envelope taskyard sends (the fixtures: conftest.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

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
