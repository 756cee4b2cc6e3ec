"""Bad input (SPEC §8): a 4xx with a useful message, never a 500, and nothing stored. Against
the app in-process (`tests.inprocess`); `tests/e2e/test_api_smoke.py` sends bad input to a real
`taskyard serve` process, chunked bodies included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from taskyard.api.app import create_app
from taskyard.api.schemas import MAX_JSON_DEPTH
from taskyard.config import Settings
from tests.inprocess import InProcessYard
from tests.support import SECRET

LIMIT = 2048  # TASKYARD_MAX_BODY_BYTES for the node with a lowered limit
DEFAULT_LIMIT = 1_048_576


@pytest.fixture(scope="module")
def yard() -> Iterator[InProcessYard]:
    """One coordinator with no backends: tasks stay WAITING, nothing moves under the tests."""
    with InProcessYard() as node:
        yield node


def counts(yard: InProcessYard) -> tuple[int, int]:
    """(tasks, servers) stored."""
    return yard.count_rows("tasks"), yard.count_rows("servers")


def assert_400(response: httpx.Response, *, mentions: str | None = None) -> dict[str, Any]:
    """A 400 in taskyard's error shape; `mentions` must appear in the message or details."""
    assert response.status_code == 400, f"{response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    assert set(body) <= {"error", "details"}
    assert isinstance(body["error"], str) and body["error"]
    if mentions is not None:
        assert mentions in response.text, response.text
    return body


def chunks(total: int, size: int = 16_384) -> Iterator[bytes]:
    """A JSON task body of about `total` bytes, sent chunked (no Content-Length)."""
    yield b'{"model": "m", "pad": "'
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size
    yield b'"}'


# ---- task bodies -------------------------------------------------------------------------

BAD_TASK_BODIES: dict[str, tuple[bytes, str | None]] = {
    "malformed json": (b'{"model": "m",', "JSON"),
    "not json at all": (b"model=m", "JSON"),
    "empty body": (b"", None),
    "array": (b'[{"model": "m"}]', None),
    "string": (b'"m"', None),
    "number": (b"42", None),
    "null": (b"null", None),
    "missing model": (b'{"prompt": "hi"}', "model"),
    "empty model": (b'{"model": ""}', "model"),
    "model number": (b'{"model": 7}', "model"),
    "model null": (b'{"model": null}', "model"),
    "model list": (b'{"model": ["m"]}', "model"),
    "model object": (b'{"model": {"name": "m"}}', "model"),
    "model too long": (b'{"model": "' + b"m" * 300 + b'"}', "model"),
    "integer beyond 64 bits": (b'{"model": "m", "n": 100000000000000000000000}', "64-bit"),
    "nesting too deep": (b'{"model": "m", "x": ' + b"[" * 100 + b"]" * 100 + b"}", "nested"),
    "nesting far too deep": (b'{"model": "m", "x": ' + b"[" * 300 + b"]" * 300 + b"}", "nested"),
    "nesting beyond the parser": (b"[" * 5000 + b"]" * 5000, None),
}


@pytest.mark.parametrize("case", BAD_TASK_BODIES, ids=str)
def test_bad_task_body_is_400_and_stores_nothing(yard: InProcessYard, case: str) -> None:
    """An invalid POST /api/task body is 400 (not 422) with a useful message; no task is stored."""
    content, mentions = BAD_TASK_BODIES[case]
    before = counts(yard)
    response = yard.admin.post(
        "/api/task", content=content, headers={"Content-Type": "application/json"}
    )
    assert_400(response, mentions=mentions)
    assert counts(yard) == before


def test_nesting_at_the_limit_is_stored_and_readable(yard: InProcessYard) -> None:
    """A request nested exactly MAX_JSON_DEPTH deep is accepted, and reads back intact."""
    inner: Any = []
    for _ in range(MAX_JSON_DEPTH - 2):
        inner = [inner]
    request = {"model": "m", "x": inner}  # the object is level 1, `x` levels 2..MAX
    created = yard.admin.post("/api/task", json=request)
    assert created.status_code == 200, created.text
    assert yard.task(created.json()["taskId"])["request"] == request
    deeper = yard.admin.post("/api/task", json={"model": "m", "x": [inner]})
    assert_400(deeper, mentions="nested")


def test_model_errors_carry_details(yard: InProcessYard) -> None:
    """A missing `model` says which field is wrong in `details`."""
    body = assert_400(yard.admin.post("/api/task", json={"prompt": "hi"}))
    assert body["details"][0]["loc"][-1] == "model"
    assert body["details"][0]["msg"]


def test_malformed_json_says_so(yard: InProcessYard) -> None:
    """Malformed JSON is reported as such, with where it broke in `details`."""
    body = assert_400(
        yard.admin.post(
            "/api/task", content=b'{"model": "m",', headers={"Content-Type": "application/json"}
        )
    )
    assert body["error"] == "Malformed JSON body"
    assert body["details"]


@pytest.mark.parametrize(
    "params",
    [{"priority": "high"}, {"priority": 10**6}, {"timeout_s": -1}, {"max_attempts": 0}],
    ids=["priority-text", "priority-huge", "timeout-negative", "max-attempts-zero"],
)
def test_bad_task_query_params_are_400(yard: InProcessYard, params: dict[str, Any]) -> None:
    """Out-of-range or mistyped task options are 400 and store nothing."""
    before = counts(yard)
    response = yard.admin.post("/api/task", json={"model": "m"}, params=params)
    assert_400(response, mentions=next(iter(params)))
    assert counts(yard) == before


# ---- body size ---------------------------------------------------------------------------


def test_oversized_body_with_content_length_is_413(yard: InProcessYard) -> None:
    """A body over the default 1 MiB limit is 413 and stores nothing."""
    before = counts(yard)
    body = b'{"model": "m", "pad": "' + b"x" * DEFAULT_LIMIT + b'"}'
    response = yard.admin.post("/api/task", content=body)
    assert response.status_code == 413, response.text
    assert "larger than" in response.json()["error"]
    assert counts(yard) == before


def test_oversized_chunked_body_is_413(yard: InProcessYard) -> None:
    """A body over 1 MiB sent chunked, without Content-Length, is 413 too."""
    before = counts(yard)
    response = yard.admin.post("/api/task", content=chunks(DEFAULT_LIMIT + 50_000))
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert counts(yard) == before


@pytest.fixture
def small_yard() -> Iterator[InProcessYard]:
    """A coordinator with TASKYARD_MAX_BODY_BYTES lowered to 2 KiB."""
    with InProcessYard(max_body_bytes=LIMIT) as node:
        yield node


def test_lowered_body_limit_applies(small_yard: InProcessYard) -> None:
    """TASKYARD_MAX_BODY_BYTES is honoured: with and without Content-Length, on every route."""
    before = counts(small_yard)
    fits = small_yard.admin.post("/api/task", json={"model": "m", "pad": "x" * (LIMIT - 200)})
    assert fits.status_code == 200, fits.text
    stored = counts(small_yard)
    assert stored == (before[0] + 1, before[1])
    pad = "x" * (LIMIT + 10)
    assert small_yard.admin.post("/api/task", json={"model": "m", "pad": pad}).status_code == 413
    chunked = small_yard.admin.post("/api/task", content=chunks(LIMIT * 4, size=512))
    assert chunked.status_code == 413, chunked.text
    register = small_yard.admin.post(
        "/api/servers",
        json={"id": "big", "endpoints": {"predict": "http://127.0.0.1:9/p"}, "name": pad},
    )
    assert register.status_code == 413, register.text
    assert counts(small_yard) == stored


# ---- server registration -----------------------------------------------------------------


def registration(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "srv-ok",
        "endpoints": {"predict": "http://127.0.0.1:9/predict", "health": "http://127.0.0.1:9/h"},
        "provider": "test",
        "name": "srv",
        "max_concurrency": 2,
    }
    for key, value in changes.items():
        if key in ("predict", "health"):
            body["endpoints"][key] = value
        else:
            body[key] = value
    return body


BAD_REGISTRATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "ftp predict url": (registration(predict="ftp://127.0.0.1/predict"), "predict"),
    "predict url without host": (registration(predict="http:///predict"), "predict"),
    "relative predict url": (registration(predict="/predict"), "predict"),
    "predict url not a string": (registration(predict=8080), "predict"),
    "predict url bad port": (registration(predict="http://127.0.0.1:99999/p"), "predict"),
    "predict url too long": (registration(predict="http://h/" + "p" * 3000), "predict"),
    "ftp health url": (registration(health="ftp://127.0.0.1/health"), "health"),
    "missing predict": (
        {**registration(), "endpoints": {"health": "http://127.0.0.1:9/h"}},
        "predict",
    ),
    "missing endpoints": (
        {k: v for k, v in registration().items() if k != "endpoints"},
        "endpoints",
    ),
    "endpoints not an object": (registration(endpoints="http://127.0.0.1:9/p"), "endpoints"),
    "missing id": ({k: v for k, v in registration().items() if k != "id"}, "id"),
    "id with spaces": (registration(id="my server"), "id"),
    "id too long": (registration(id="s" * 129), "id"),
    "empty id": (registration(id=""), "id"),
    "id with slash": (registration(id="a/b"), "id"),
    "id not a string": (registration(id=12), "id"),
    "max_concurrency zero": (registration(max_concurrency=0), "max_concurrency"),
    "max_concurrency negative": (registration(max_concurrency=-3), "max_concurrency"),
    "max_concurrency text": (registration(max_concurrency="many"), "max_concurrency"),
    "weight zero": (registration(weight=0), "weight"),
    "weight negative": (registration(weight=-1), "weight"),
    "models not a list": (registration(models="m"), "models"),
    "empty model name": (registration(models=[""]), "models"),
    # A key no HTTP client can send: refused here instead of failing every call to the backend.
    "apiKey with a newline": (registration(apiKey="abc\ndef"), "apiKey"),
    "apiKey with a space": (registration(apiKey="abc def"), "apiKey"),
    "apiKey not ASCII": (registration(apiKey="clé"), "apiKey"),
    "empty apiKey": (registration(apiKey=""), "apiKey"),
    "body an array": ([registration()], "body"),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("case", BAD_REGISTRATIONS, ids=str)
def test_bad_registration_is_400_and_stores_nothing(yard: InProcessYard, case: str) -> None:
    """An invalid POST /api/servers body is 400 naming the field; no server is stored."""
    body, mentions = BAD_REGISTRATIONS[case]
    before = counts(yard)
    response = yard.admin.post("/api/servers", json=body)
    assert_400(response, mentions=mentions)
    assert counts(yard) == before
    assert yard.admin.get("/api/servers").json()["servers"] == []


# ---- PUT /api/task/{id} ------------------------------------------------------------------

BAD_REPORTS: dict[str, tuple[Any, str]] = {
    "bad status": ({"data": 1, "metadata": {"status": "DONE"}}, "status"),
    "lower-case status": ({"data": 1, "metadata": {"status": "finished"}}, "status"),
    "missing status": ({"data": 1, "metadata": {"server_id": "b1"}}, "status"),
    "missing metadata": ({"data": 1}, "metadata"),
    "metadata not an object": ({"data": 1, "metadata": "FINISHED"}, "metadata"),
    "negative progress": ({"metadata": {"status": "PROCESSING", "progress": -1}}, "progress"),
    "body an array": ([{"metadata": {"status": "FINISHED"}}], "body"),
    "integer beyond 64 bits": ({"data": 10**30, "metadata": {"status": "FINISHED"}}, "64-bit"),
}


@pytest.mark.parametrize("case", BAD_REPORTS, ids=str)
def test_bad_report_is_400_and_changes_nothing(yard: InProcessYard, case: str) -> None:
    """An invalid PUT /api/task/{id} body is 400 and the task is unchanged."""
    task_id = yard.submit({"model": "m"})
    before = yard.task(task_id)
    body, mentions = BAD_REPORTS[case]
    assert_400(yard.admin.put(f"/api/task/{task_id}", json=body), mentions=mentions)
    assert yard.task(task_id) == before


# ---- unknown and malformed ids -----------------------------------------------------------

UNKNOWN = "7f4c1a52-0000-4000-8000-000000000000"


def test_unknown_task_is_404_on_every_task_route(yard: InProcessYard) -> None:
    """GET, PUT and cancel of an unknown task id are 404 `Task <id> not found`."""
    expected = {"error": f"Task {UNKNOWN} not found"}
    report = {"data": 1, "metadata": {"status": "FINISHED"}}
    responses = [
        yard.admin.get(f"/api/task/{UNKNOWN}"),
        yard.admin.put(f"/api/task/{UNKNOWN}", json=report),
        yard.admin.post(f"/api/task/{UNKNOWN}/cancel"),
    ]
    for response in responses:
        assert response.status_code == 404, response.text
        assert response.json() == expected


@pytest.mark.parametrize("method", ["GET", "DELETE", "POST"], ids=["get", "delete", "heartbeat"])
def test_unknown_server_is_404(yard: InProcessYard, method: str) -> None:
    """GET, DELETE and heartbeat of an unknown server are 404 `Service <id> not found`."""
    path = "/api/servers/ghost" + ("/heartbeat" if method == "POST" else "")
    response = yard.admin.request(method, path, json={} if method == "POST" else None)
    assert response.status_code == 404, response.text
    assert response.json() == {"error": "Service ghost not found"}
    assert yard.server("ghost") is None


@pytest.mark.parametrize(
    "path",
    [
        "/api/task/" + "a" * 5000,
        "/api/task/" + "a" * 5000 + "/cancel",
        "/api/servers/" + "a" * 5000,
        "/api/servers/" + "a" * 5000 + "/heartbeat",
        "/api/servers/a%20b",
        "/api/servers/%00",
    ],
    ids=["task-long", "cancel-long", "server-long", "heartbeat-long", "server-space", "server-nul"],
)
def test_overlong_or_odd_ids_in_path_are_4xx(yard: InProcessYard, path: str) -> None:
    """An over-long or ill-formed id in the path is 400 or 404, never a 500."""
    method = "POST" if path.endswith(("/cancel", "/heartbeat")) else "GET"
    response = yard.admin.request(method, path)
    assert response.status_code in (400, 404), response.text
    assert "error" in response.json()


# ---- cleanup -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [{"maxAgeMins": -5}, {"maxAgeMins": 0}, {"maxAgeMins": "ten"}, {"maxAgeMins": None}, [5]],
    ids=["negative", "zero", "text", "null", "array"],
)
def test_bad_cleanup_is_400_and_removes_nothing(yard: InProcessYard, body: Any) -> None:
    """POST /api/servers/cleanup with a bad maxAgeMins is 400; no server is removed."""
    registered = yard.admin.post("/api/servers", json=registration(id="keep-me"))
    assert registered.status_code == 200, registered.text
    try:
        before = counts(yard)
        assert_400(yard.admin.post("/api/servers/cleanup", json=body))
        assert counts(yard) == before
        assert yard.server("keep-me") is not None
    finally:
        assert yard.admin.delete("/api/servers/keep-me").status_code == 200


# ---- request ids -------------------------------------------------------------------------


def test_every_response_carries_a_request_id(yard: InProcessYard) -> None:
    """200, 400, 401, 404, 413 and non-API responses all carry X-Request-Id, each its own."""
    anonymous = yard.http
    responses = {
        200: yard.admin.post("/api/task", json={"model": "m"}),
        400: yard.admin.post("/api/task", json={}),
        401: anonymous.get("/api/servers"),
        404: yard.admin.get("/api/servers/ghost"),
        413: yard.admin.post("/api/task", content=chunks(DEFAULT_LIMIT + 1)),
        0: anonymous.get("/"),
        1: anonymous.get("/openapi.json"),
        2: anonymous.get("/no-such-route"),
    }
    ids = []
    for status, response in responses.items():
        if status >= 200:
            assert response.status_code == status, response.text
        assert response.headers.get("X-Request-Id"), f"{status}: {response.headers}"
        ids.append(response.headers["X-Request-Id"])
    assert len(set(ids)) == len(ids)


def test_client_request_id_is_echoed(yard: InProcessYard) -> None:
    """A client's X-Request-Id is echoed, on success and on errors."""
    for response in (
        yard.admin.get("/api/servers", headers={"X-Request-Id": "abc-123"}),
        yard.admin.post("/api/task", json={}, headers={"X-Request-Id": "abc-123"}),
        yard.http.get(f"{yard.url}/api/servers", headers={"X-Request-Id": "abc-123"}),
    ):
        assert response.headers["X-Request-Id"] == "abc-123"


@pytest.mark.parametrize("given", ["x" * 500, "a b", "<script>"], ids=["long", "space", "markup"])
def test_unsafe_request_id_is_replaced(yard: InProcessYard, given: str) -> None:
    """An over-long or odd X-Request-Id is not echoed; a fresh id is used instead."""
    response = yard.http.get(f"{yard.url}/", headers={"X-Request-Id": given})
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] not in ("", given)


# ---- 500s --------------------------------------------------------------------------------


async def test_internal_error_shows_no_internals() -> None:
    """An unhandled error is a bare 500 `Internal server error`, still with X-Request-Id."""
    # No outside request makes taskyard crash any more (the ones found are 400s now), so this
    # one runs the app in-process (no lifespan: no database) with a route that raises.
    app = create_app(Settings(jwt_secret=SECRET))

    async def explode() -> None:
        raise RuntimeError("secret-internal-detail at /srv/taskyard/db.py")

    app.add_api_route("/api/explode", explode)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://taskyard") as client:
        response = await client.get("/api/explode", headers={"X-Request-Id": "req-500"})
    assert response.status_code == 500
    assert response.json() == {"error": "Internal server error"}
    assert "secret-internal-detail" not in response.text
    assert response.headers["X-Request-Id"] == "req-500"
