"""Input that the stores cannot hold as given: NUL characters, invalid UTF-8, numbers JSON has no
word for, and token claims that are missing or absurd. Each is refused (400, 401 or 404),
stores nothing, and leaves no traceback in the node's log. In-process (`tests.inprocess`); what
a database must hold exactly is stored on both databases, and
`tests/e2e/test_api_smoke.py` checks a real node's log.

PostgreSQL refuses NUL in text (`CharacterNotInRepertoireError`); Python's `json` reads `NaN`,
`Infinity` and `1e400`, which orjson would store and forward as `null`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.inprocess import InProcessYard, no_error_logged
from tests.support import SECRET, bearer, token


@pytest.fixture(scope="module")
def yard() -> Iterator[InProcessYard]:
    """One coordinator with no backends: tasks stay WAITING, nothing moves under the tests."""
    with InProcessYard() as node:
        yield node


@pytest.fixture
def db_yard(database_url: str) -> Iterator[InProcessYard]:
    """A coordinator on a real database (SQLite, then PostgreSQL), for what it must hold."""
    with InProcessYard(database_url=database_url) as node:
        yield node


@pytest.fixture(autouse=True)
def no_traceback_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Bad input is the client's fault: the node logs no traceback or error for it."""
    with no_error_logged(caplog):
        yield


def counts(yard: InProcessYard) -> tuple[int, int]:
    return yard.count_rows("tasks"), yard.count_rows("servers")


def raw_json_token(payload: str, secret: str = SECRET) -> str:
    """An HS256 token over `payload` exactly as written (PyJWT cannot encode `1e400`)."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(payload.encode())
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


def post_raw(yard: InProcessYard, path: str, content: bytes) -> httpx.Response:
    return yard.admin.post(path, content=content, headers={"Content-Type": "application/json"})


# ---- NUL characters and invalid UTF-8 ----------------------------------------------------

BAD_TEXT_TASKS: dict[str, bytes] = {
    "nul in model": b'{"model": "a\\u0000b"}',
    "lone surrogate in model": b'{"model": "a\\ud800b"}',
    "lone surrogate in a field": b'{"model": "m", "prompt": "\\udfff"}',
}


@pytest.mark.parametrize("case", BAD_TEXT_TASKS, ids=str)
def test_text_a_store_cannot_hold_is_400(yard: InProcessYard, case: str) -> None:
    """A task whose model (a column) has NUL or invalid UTF-8 is 400 naming it; nothing stored."""
    before = counts(yard)
    response = post_raw(yard, "/api/task", BAD_TEXT_TASKS[case])
    assert response.status_code == 400, response.text
    assert response.json()["error"]
    assert counts(yard) == before


def test_nul_inside_a_forwarded_field_is_kept(db_yard: InProcessYard) -> None:
    """NUL is refused only where it would reach a column: inside the request's other fields it
    is stored (as a JSON escape) and read back unchanged, on PostgreSQL too."""
    request = {"model": "m", "prompt": "a\x00b", "nested": {"k\x00": ["\x00"]}}
    created = db_yard.admin.post("/api/task", json=request)
    assert created.status_code == 200, created.text
    assert db_yard.task(created.json()["taskId"])["request"] == request


@pytest.mark.parametrize(
    "field", ["name", "provider", "models"], ids=["name", "provider", "model-list"]
)
def test_nul_in_a_registration_is_400(yard: InProcessYard, field: str) -> None:
    """NUL in a server's name, provider or models is 400 naming the field; no server stored."""
    body: dict[str, Any] = {"id": "nul-srv", "endpoints": {"predict": "http://127.0.0.1:9/p"}}
    body[field] = ["a\x00b"] if field == "models" else "a\x00b"
    before = counts(yard)
    response = yard.admin.post("/api/servers", json=body)
    assert response.status_code == 400, response.text
    assert field in response.text
    assert counts(yard) == before


@pytest.mark.parametrize("method", ["GET", "PUT", "cancel"])
def test_nul_in_a_task_id_is_404(yard: InProcessYard, method: str) -> None:
    """A task id with NUL cannot exist: GET, PUT and cancel answer 404, as for any unknown id."""
    task_id = "a%00b"
    report = {"data": 1, "metadata": {"status": "FINISHED"}}
    if method == "GET":
        response = yard.admin.get(f"/api/task/{task_id}")
    elif method == "PUT":
        response = yard.admin.put(f"/api/task/{task_id}", json=report)
    else:
        response = yard.admin.post(f"/api/task/{task_id}/cancel")
    assert response.status_code == 404, response.text
    assert response.json()["error"].startswith("Task a")


def test_nul_in_report_fields_is_400(yard: InProcessYard) -> None:
    """NUL in a report's metadata.server_id or message (both reach columns) is 400; the task
    is unchanged."""
    task_id = yard.submit({"model": "m"})
    before = yard.task(task_id)
    for metadata in (
        {"status": "FINISHED", "server_id": "b\x00"},
        {"status": "FAILED", "message": "broke\x00here"},
    ):
        response = yard.admin.put(f"/api/task/{task_id}", json={"data": 1, "metadata": metadata})
        assert response.status_code == 400, response.text
        assert next(k for k in metadata if k != "status") in response.text
    assert yard.task(task_id) == before


# ---- numbers JSON has no word for ---------------------------------------------------------

NOT_JSON_NUMBERS = {
    "NaN": b"NaN",
    "Infinity": b"Infinity",
    "-Infinity": b"-Infinity",
    "1e400": b"1e400",
    "-1e400": b"-1e400",
    "whole 1e30": b"1e30",
    "integer 2**64": b"18446744073709551616",
}


@pytest.mark.parametrize("case", NOT_JSON_NUMBERS, ids=str)
def test_numbers_storage_would_change_are_400_naming_the_field(
    yard: InProcessYard, case: str
) -> None:
    """`x: NaN` (or ±Infinity, ±1e400, a whole number beyond 64 bits) is 400 naming `x`, and
    nothing is stored: not `null`, as before."""
    before = counts(yard)
    response = post_raw(yard, "/api/task", b'{"model": "m", "x": ' + NOT_JSON_NUMBERS[case] + b"}")
    assert response.status_code == 400, response.text
    assert "x: " in response.json()["details"][0]["msg"], response.text
    assert counts(yard) == before


def test_nested_bad_number_is_named_by_its_path(yard: InProcessYard) -> None:
    response = post_raw(yard, "/api/task", b'{"model": "m", "a": {"b": [1, 2, NaN]}}')
    assert response.status_code == 400, response.text
    assert "a.b.2: nan" in response.text


def test_numbers_at_the_edges_are_kept_exactly(db_yard: InProcessYard) -> None:
    """What JSON and 64 bits can hold is stored and read back unchanged, on both databases."""
    request = {
        "model": "m",
        "numbers": [2**63 - 1, -(2**63), 2**64 - 1, 1.5, -1e-300, 0.1, 1.8e19, 9007199254740993.5],
    }
    created = db_yard.admin.post("/api/task", json=request)
    assert created.status_code == 200, created.text
    assert db_yard.task(created.json()["taskId"])["request"] == request


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/task/{task}", b'{"data": {"score": NaN}, "metadata": {"status": "FINISHED"}}'),
        (
            "/api/task/{task}",
            b'{"data": 1, "metadata": {"status": "PROCESSING", "progress": 1e999}}',
        ),
        (
            "/api/servers",
            b'{"id": "s", "endpoints": {"predict": "http://127.0.0.1:9/p"}, "gpu": NaN}',
        ),
        ("/api/servers/{server}/heartbeat", b'{"load": Infinity}'),
    ],
    ids=["report-data", "report-progress", "registration-extra", "heartbeat-load"],
)
def test_bad_numbers_in_reports_registrations_and_heartbeats_are_400(
    yard: InProcessYard, path: str, body: bytes
) -> None:
    """The same rule for a backend's report, a registration's extra fields and a heartbeat."""
    task_id = yard.submit({"model": "m"})
    server = yard.admin.post(  # serves no task of this test: nothing moves under it
        "/api/servers",
        json={"id": "num-srv", "endpoints": {"predict": "http://127.0.0.1:9/p"}, "models": ["z"]},
    )
    assert server.status_code == 200, server.text
    task_before, server_before = yard.task(task_id), yard.server("num-srv")
    url = path.format(task=task_id, server="num-srv")
    method = "PUT" if path.startswith("/api/task/") else "POST"
    response = yard.admin.request(method, url, content=body)
    assert response.status_code == 400, response.text
    assert "not a JSON number" in response.text
    assert yard.task(task_id) == task_before
    assert yard.server("num-srv") == server_before
    assert yard.server("s") is None


# ---- token claims ------------------------------------------------------------------------

_EXP = int(time.time()) + 3600
BAD_CLAIMS: dict[str, str] = {
    "no sub": f'{{"roles": ["user"], "exp": {_EXP}}}',
    "empty sub": f'{{"sub": "", "roles": ["user"], "exp": {_EXP}}}',
    "sub a number": f'{{"sub": 7, "roles": ["user"], "exp": {_EXP}}}',
    "sub with NUL": f'{{"sub": "a\\u0000b", "roles": ["user"], "exp": {_EXP}}}',
    "sub a lone surrogate": f'{{"sub": "\\ud800", "roles": ["user"], "exp": {_EXP}}}',
    "sub too long": f'{{"sub": "{"s" * 300}", "roles": ["user"], "exp": {_EXP}}}',
    "exp 1e400": '{"sub": "alice", "roles": ["user"], "exp": 1e400}',
    "exp beyond year 9999": '{"sub": "alice", "roles": ["user"], "exp": 1180591620717411303424}',
    "exp NaN": '{"sub": "alice", "roles": ["user"], "exp": NaN}',
    "exp text": '{"sub": "alice", "roles": ["user"], "exp": "tomorrow"}',
    "iat 1e400": f'{{"sub": "alice", "roles": ["user"], "exp": {_EXP}, "iat": 1e400}}',
    "nbf absurd": f'{{"sub": "alice", "roles": ["user"], "exp": {_EXP}, "nbf": -1e300}}',
    "srv a number": f'{{"sub": "b", "roles": ["service"], "exp": {_EXP}, "srv": 5}}',
    "srv with NUL": f'{{"sub": "b", "roles": ["service"], "exp": {_EXP}, "srv": "b\\u0000"}}',
    "att a boolean": f'{{"sub": "b", "roles": ["service"], "exp": {_EXP}, "att": true}}',
}


@pytest.mark.parametrize("case", BAD_CLAIMS, ids=str)
def test_missing_or_absurd_claims_are_401(yard: InProcessYard, case: str) -> None:
    """A validly signed token whose claims are missing or absurd is 401 on reads and creates,
    and creates nothing (before, a token without `sub` acted as owner '', shared by all)."""
    headers = bearer(raw_json_token(BAD_CLAIMS[case]))
    before = counts(yard)
    for response in (
        yard.http.post(f"{yard.url}/api/task", json={"model": "m"}, headers=headers),
        yard.http.get(f"{yard.url}/api/task/7f4c1a52-0000-4000-8000-000000000000", headers=headers),
    ):
        assert response.status_code == 401, f"{case}: {response.status_code} {response.text}"
        assert response.json()["error"].startswith(("Invalid token", "Token expired")), case
    assert counts(yard) == before


def test_tokens_without_sub_no_longer_share_tasks(yard: InProcessYard) -> None:
    """The probe's case: one sub-less token created a task, another read it. Now neither can."""
    no_sub = raw_json_token(f'{{"roles": ["user"], "exp": {_EXP}, "n": 1}}')
    created = yard.http.post(f"{yard.url}/api/task", json={"model": "m"}, headers=bearer(no_sub))
    assert created.status_code == 401, created.text
    with yard.client(["user"], "alice") as alice:
        mine = alice.post("/api/task", json={"model": "m"})
    assert mine.status_code == 200, mine.text
    other = yard.http.get(
        f"{yard.url}/api/task/{mine.json()['taskId']}",
        headers=bearer(token(["user"], "bob")),
    )
    assert other.status_code == 404, other.text
