"""The API areas tested in-process (`tests/api/`), once each on a real `taskyard serve` process
and database: what the process adds (uvicorn's HTTP layer, chunked bodies over a socket, the
node's log, the database behind it) is checked here, the rules themselves there."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import MockBackend, Taskyard, bearer, shared_taskyard, token

DEFAULT_LIMIT = 1_048_576  # TASKYARD_MAX_BODY_BYTES' default
BACKEND_ID = "smoke-b1"


@pytest.fixture(scope="module")
def workdir(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp(f"api-smoke-{db_kind}")


@pytest.fixture(scope="module")
def yard(db_kind: str, workdir: Path) -> Iterator[Taskyard]:
    with shared_taskyard(db_kind, workdir) as node:
        yield node


@pytest.fixture(scope="module")
def backend(yard: Taskyard, workdir: Path) -> Iterator[MockBackend]:
    """Answers 202 and calls back only after a minute: its tasks stay PROCESSING."""
    mock = MockBackend(BACKEND_ID, workdir=workdir, extra=["--async", "--delay-ms", "60000"])
    mock.start("/health")
    yield mock
    mock.stop()


def log_since(yard: Taskyard, start: int) -> str:
    with open(yard.log, "rb") as log:
        log.seek(start)
        return log.read().decode(errors="replace")


def chunks(total: int, size: int = 16_384) -> Iterator[bytes]:
    """A JSON task body of about `total` bytes, sent chunked (no Content-Length)."""
    yield b'{"model": "m", "pad": "'
    for _ in range(0, total, size):
        yield b"x" * size
    yield b'"}'


def test_a_real_node_sends_no_server_banner(yard: Taskyard) -> None:
    response = httpx.get(yard.url + "/")
    assert response.status_code == 200
    assert "server" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_auth_on_a_real_node(yard: Taskyard, backend: MockBackend) -> None:
    """401 without a valid token, 403 for a role that may not, a task visible to its owner
    only, and the callback token of the attempt a backend holds accepted (tests/api/test_auth)."""
    basic = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}
    for headers in ({}, basic, bearer(token(["admin"], "root", secret="another-" + "y" * 40))):
        refused = httpx.post(f"{yard.url}/api/task", json={"model": "m"}, headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    with yard.client(["user"], "alice") as alice, yard.client(["user"], "bob") as bob:
        assert alice.get("/api/servers").status_code == 403
        task_id = alice.post("/api/task", json={"model": "m"}).json()["taskId"]
        assert alice.get(f"/api/task/{task_id}").json()["taskDetails"]["owner"] == "alice"
        assert bob.get(f"/api/task/{task_id}").status_code == 404

    yard.register_online(backend, max_concurrency=4, models=["smoke"], **{"async": True})
    held = yard.submit({"model": "smoke"}, timeout_s=120)
    attempt = len(yard.wait_status(held, "PROCESSING")["attempts"])
    callback = token(["service"], f"server:{BACKEND_ID}", srv=BACKEND_ID, tid=held, att=attempt)
    report: dict[str, Any] = {"data": {"answer": 42}, "metadata": {"status": "FINISHED"}}
    wrong = token(["service"], f"server:{BACKEND_ID}", srv=BACKEND_ID, tid=held, att=attempt + 1)
    stale = httpx.put(f"{yard.url}/api/task/{held}", json=report, headers=bearer(wrong))
    assert stale.status_code == 409, stale.text
    settled = httpx.put(f"{yard.url}/api/task/{held}", json=report, headers=bearer(callback))
    assert settled.status_code == 200, settled.text
    assert yard.task(held)["result"]["data"] == {"answer": 42}


def test_bad_input_on_a_real_node(yard: Taskyard) -> None:
    """Malformed JSON is a 400, a body over the limit a 413 (with Content-Length, and chunked
    over the socket), a NUL where a column would get it a 400; nothing is stored and the
    node logs no traceback (tests/api/test_bad_input, test_storable_input)."""
    start = yard.log.stat().st_size
    before = yard.count_rows("tasks")
    malformed = yard.admin.post(
        "/api/task", content=b'{"model": "m",', headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400 and malformed.json()["error"] == "Malformed JSON body"
    large = b'{"model": "m", "pad": "' + b"x" * DEFAULT_LIMIT + b'"}'
    assert yard.admin.post("/api/task", content=large).status_code == 413
    chunked = yard.admin.post("/api/task", content=chunks(DEFAULT_LIMIT + 50_000))
    assert chunked.request.headers.get("Transfer-Encoding") == "chunked"
    assert chunked.status_code == 413, chunked.text
    nul = yard.admin.post(
        "/api/task", content=b'{"model": "a\\u0000b"}', headers={"Content-Type": "application/json"}
    )
    assert nul.status_code == 400, nul.text
    assert yard.count_rows("tasks") == before
    added = log_since(yard, start)
    assert "Traceback" not in added and " ERROR " not in added, added[-3000:]


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for name, v in attrs if name in ("src", "href") and v]


def test_docs_on_a_real_node(yard: Taskyard) -> None:
    """The docs page and its own assets load without a token; /openapi.json lists the routes
    (tests/api/test_docs)."""
    page = httpx.get(f"{yard.url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(page.text)
    scripts = [url for url in parser.urls if url.endswith(".js")]
    assert scripts
    for url in scripts:
        assert httpx.get(httpx.URL(f"{yard.url}/docs").join(url)).status_code == 200, url
    spec = httpx.get(f"{yard.url}/openapi.json").json()
    assert {"/api/task", "/api/servers", "/api/tasks/batch"} <= set(spec["paths"])
