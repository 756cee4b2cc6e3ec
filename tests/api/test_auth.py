"""Authentication and authorization over HTTP, against the app in-process (`tests.inprocess`;
`tests/e2e/test_api_smoke.py` checks the same on a real `taskyard serve` process)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest

from taskyard.testing import FakeBackend
from tests.inprocess import InProcessYard
from tests.support import SECRET, bearer, token

BACKEND_ID = "b1"


@pytest.fixture(scope="module")
def yard() -> Iterator[InProcessYard]:
    with InProcessYard() as node:
        yield node


@pytest.fixture(scope="module")
def backend() -> FakeBackend:
    """Answers 202 and never calls back: its tasks stay PROCESSING."""
    return FakeBackend(BACKEND_ID, accept=True)


@pytest.fixture(scope="module")
def registered(yard: InProcessYard, backend: FakeBackend) -> dict[str, Any]:
    """b1 registered (async, plenty of slots) and online; the registration response."""
    return yard.register_online(backend, max_concurrency=100, **{"async": True})


def b64url(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned_token(roles: list[str]) -> str:
    """An `alg: none` token: header and payload, empty signature."""
    header = b64url({"alg": "none", "typ": "JWT"})
    payload = b64url({"sub": "mallory", "roles": roles, "exp": int(time.time()) + 3600})
    return f"{header}.{payload}."


def signed(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def row_count(yard: InProcessYard, table: str) -> int:
    """Rows stored in `table`."""
    return yard.count_rows(table)


def report(status: str = "FINISHED", **metadata: Any) -> dict[str, Any]:
    """A seed TaskResult body."""
    return {
        "backend_task_id": "bt-1",
        "data": {"answer": 42},
        "metadata": {"status": status, **metadata},
    }


def processing_task(yard: InProcessYard) -> tuple[str, int]:
    """A task held by b1 in PROCESSING (b1 never calls back): (id, attempt)."""
    task_id = yard.submit({"model": "m"}, timeout_s=120)
    task = yard.wait_status(task_id, "PROCESSING")
    assert task["serverId"] == BACKEND_ID
    return task_id, len(task["attempts"])


def state(yard: InProcessYard, task_id: str) -> dict[str, Any]:
    """The task minus `updatedAt` (the dispatcher may record the 202 ack just after PROCESSING)."""
    task = yard.task(task_id)
    del task["updatedAt"]
    return task


def callback_token(task_id: str, attempt: int, server_id: str = BACKEND_ID) -> str:
    return token(["service"], f"server:{server_id}", srv=server_id, tid=task_id, att=attempt)


def put(yard: InProcessYard, task_id: str, tok: str, body: dict[str, Any]) -> httpx.Response:
    return yard.http.put(f"{yard.url}/api/task/{task_id}", json=body, headers=bearer(tok))


# ---- 401 ---------------------------------------------------------------------------------

_NOW = int(time.time())
BAD_CREDENTIALS: dict[str, dict[str, str]] = {
    "no header": {},
    "basic scheme": {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()},
    "bearer without token": {"Authorization": "Bearer"},
    "token without scheme": {"Authorization": token(["admin"], "root")},
    "garbage token": {"Authorization": "Bearer not.a.jwt"},
    "wrong key": bearer(token(["admin"], "root", secret="another-secret-" + "y" * 40)),
    "alg none": bearer(unsigned_token(["admin"])),
    "expired": bearer(signed({"sub": "root", "roles": ["admin"], "exp": _NOW - 120})),
    "no exp": bearer(signed({"sub": "root", "roles": ["admin"]})),
    "roles a string": bearer(signed({"sub": "root", "roles": "admin", "exp": _NOW + 3600})),
    "roles missing": bearer(signed({"sub": "root", "exp": _NOW + 3600})),
    "roles not strings": bearer(signed({"sub": "root", "roles": [1], "exp": _NOW + 3600})),
}


@pytest.mark.parametrize("case", BAD_CREDENTIALS, ids=str)
def test_bad_credentials_on_task_route_are_401(yard: InProcessYard, case: str) -> None:
    """POST /api/task with missing or invalid credentials is 401 and stores no task."""
    before = row_count(yard, "tasks")
    response = yard.http.post(
        f"{yard.url}/api/task", json={"model": "m"}, headers=BAD_CREDENTIALS[case]
    )
    assert response.status_code == 401, response.text
    assert isinstance(response.json()["error"], str)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert row_count(yard, "tasks") == before


@pytest.mark.parametrize("case", BAD_CREDENTIALS, ids=str)
def test_bad_credentials_on_server_route_are_401(yard: InProcessYard, case: str) -> None:
    """GET /api/servers with missing or invalid credentials is 401 and lists nothing."""
    response = yard.http.get(f"{yard.url}/api/servers", headers=BAD_CREDENTIALS[case])
    assert response.status_code == 401, response.text
    assert set(response.json()) <= {"error", "details"}


def test_alg_none_token_is_401_even_for_a_known_task(yard: InProcessYard) -> None:
    """An unsigned `alg: none` admin token cannot read an existing task."""
    task_id = yard.submit({"model": "m"})
    response = yard.http.get(
        f"{yard.url}/api/task/{task_id}", headers=bearer(unsigned_token(["admin"]))
    )
    assert response.status_code == 401
    assert task_id not in response.text


# ---- role checks ------------------------------------------------------------------------


def server_routes(server_id: str) -> list[tuple[str, str, Any]]:
    return [
        (
            "POST",
            "/api/servers",
            {
                "id": "intruder",
                "endpoints": {"predict": "http://127.0.0.1:9/predict"},
                "provider": "x",
                "name": "x",
            },
        ),
        ("GET", "/api/servers", None),
        ("GET", f"/api/servers/{server_id}", None),
        ("POST", f"/api/servers/{server_id}/heartbeat", {"load": 1}),
        ("DELETE", f"/api/servers/{server_id}", None),
        ("POST", "/api/servers/cleanup", {"maxAgeMins": 0.0001}),
    ]


ROUTE_IDS = ["register", "list", "detail", "heartbeat", "delete", "cleanup"]


@pytest.mark.parametrize("index", range(6), ids=ROUTE_IDS)
def test_user_role_is_403_on_every_server_route(
    yard: InProcessYard, registered: dict[str, Any], index: int
) -> None:
    """A `user` token gets 403 on each server route, and the registry is unchanged."""
    before = yard.server(BACKEND_ID)
    assert before is not None
    method, path, body = server_routes(BACKEND_ID)[index]
    with yard.client(["user"], "alice") as client:
        response = client.request(method, path, json=body)
    assert response.status_code == 403, response.text
    assert "admin" in response.json()["error"]
    after = yard.server(BACKEND_ID)
    assert after is not None
    assert after["lastHeartbeat"] == before["lastHeartbeat"]
    assert after["load"] == before["load"]
    assert yard.server("intruder") is None


@pytest.mark.parametrize(
    "index", [0, 1, 2, 4, 5], ids=["register", "list", "detail", "delete", "cleanup"]
)
def test_server_token_is_403_on_admin_server_routes(
    yard: InProcessYard, registered: dict[str, Any], index: int
) -> None:
    """A backend's own `service` token may heartbeat, but not manage the registry."""
    method, path, body = server_routes(BACKEND_ID)[index]
    response = yard.http.request(
        method, yard.url + path, json=body, headers=bearer(registered["token"])
    )
    assert response.status_code == 403, response.text
    assert yard.server(BACKEND_ID) is not None
    assert yard.server("intruder") is None


def test_service_role_cannot_create_tasks(yard: InProcessYard) -> None:
    """POST /api/task with role `service` is 403 and stores no task."""
    before = row_count(yard, "tasks")
    with yard.client(["service"], "server:b1", srv=BACKEND_ID) as client:
        response = client.post("/api/task", json={"model": "m"})
    assert response.status_code == 403, response.text
    assert row_count(yard, "tasks") == before


def test_token_without_known_role_is_403(yard: InProcessYard) -> None:
    """A valid token whose roles are empty or unknown is 403 (authenticated, not allowed)."""
    for roles in ([], ["guest"]):
        with yard.client(roles, "nobody") as client:
            assert client.post("/api/task", json={"model": "m"}).status_code == 403
            assert client.get("/api/servers").status_code == 403


# ---- task visibility --------------------------------------------------------------------


def test_user_reads_own_task(yard: InProcessYard) -> None:
    """A user reads the task it created; the task names it as owner."""
    with yard.client(["user"], "alice") as alice:
        created = alice.post("/api/task", json={"model": "m", "x": 1})
        assert created.status_code == 200, created.text
        task_id = created.json()["taskId"]
        response = alice.get(f"/api/task/{task_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["taskId"] == task_id
    assert body["taskDetails"]["owner"] == "alice"
    assert body["taskDetails"]["request"] == {"model": "m", "x": 1}


def test_other_users_task_is_404_like_an_unknown_id(yard: InProcessYard) -> None:
    """Another user's task id is 404 with the same body shape as an id that does not exist."""
    with yard.client(["user"], "alice") as alice:
        task_id = alice.post("/api/task", json={"model": "m"}).json()["taskId"]
    unknown = "00000000-0000-4000-8000-000000000000"
    with yard.client(["user"], "bob") as bob:
        hidden = bob.get(f"/api/task/{task_id}")
        missing = bob.get(f"/api/task/{unknown}")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == {"error": f"Task {task_id} not found"}
    assert missing.json() == {"error": f"Task {unknown} not found"}
    assert hidden.headers["content-type"] == missing.headers["content-type"]


def test_admin_reads_any_task(yard: InProcessYard) -> None:
    """An admin reads a task some user created."""
    with yard.client(["user"], "carol") as carol:
        task_id = carol.post("/api/task", json={"model": "m"}).json()["taskId"]
    response = yard.admin.get(f"/api/task/{task_id}")
    assert response.status_code == 200
    assert response.json()["taskDetails"]["owner"] == "carol"


def test_plain_pyjwt_token_works(yard: InProcessYard) -> None:
    """A token minted with plain PyJWT (secret + `roles`, no taskyard claims) is accepted."""
    raw = jwt.encode(
        {"sub": "seed-client", "roles": ["user"], "exp": int(time.time()) + 600},
        SECRET,
        algorithm="HS256",
    )
    created = yard.http.post(f"{yard.url}/api/task", json={"model": "m"}, headers=bearer(raw))
    assert created.status_code == 200, created.text
    task_id = created.json()["taskId"]
    read = yard.http.get(f"{yard.url}/api/task/{task_id}", headers=bearer(raw))
    assert read.status_code == 200
    assert read.json()["taskDetails"]["owner"] == "seed-client"


# ---- PUT /api/task/{id} -----------------------------------------------------------------


def test_user_put_is_403_and_changes_nothing(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """A `user` (even the task's owner) may not report a result: 403, the task unchanged."""
    with yard.client(["user"], "alice") as alice:
        task_id = alice.post("/api/task", json={"model": "m"}, params={"timeout_s": 120}).json()[
            "taskId"
        ]
        yard.wait_status(task_id, "PROCESSING")
        before = state(yard, task_id)
        response = alice.put(f"/api/task/{task_id}", json=report(server_id=BACKEND_ID))
    assert response.status_code == 403, response.text
    assert state(yard, task_id) == before


def test_callback_token_for_current_attempt_is_accepted(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """The callback token of the attempt holding the task may report its result: 200."""
    task_id, attempt = processing_task(yard)
    response = put(yard, task_id, callback_token(task_id, attempt), report(server_id=BACKEND_ID))
    assert response.status_code == 200, response.text
    task = yard.task(task_id)
    assert task["status"] == "FINISHED"
    assert task["result"]["data"] == {"answer": 42}


def test_callback_token_for_wrong_attempt_is_409(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """A callback token naming another attempt is 409 and the task stays as it was."""
    task_id, attempt = processing_task(yard)
    before = state(yard, task_id)
    response = put(yard, task_id, callback_token(task_id, attempt + 1), report())
    assert response.status_code == 409, response.text
    assert state(yard, task_id) == before


def test_callback_token_for_another_task_is_rejected(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """A callback token bound to task A cannot report on task B."""
    task_a, attempt_a = processing_task(yard)
    task_b, _ = processing_task(yard)
    before = state(yard, task_b)
    response = put(yard, task_b, callback_token(task_a, attempt_a), report())
    assert response.status_code in (403, 409), response.text
    assert state(yard, task_b) == before


def test_service_token_bound_to_another_server_is_409(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """A service token bound to a server that does not hold the task is 409; nothing changes."""
    task_id, _ = processing_task(yard)
    before = state(yard, task_id)
    tok = token(["service"], "server:other", srv="other")
    response = put(yard, task_id, tok, report(server_id=BACKEND_ID))
    assert response.status_code == 409, response.text
    assert state(yard, task_id) == before


def test_server_token_of_holder_is_accepted(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """The token b1 got at registration may report on the task b1 holds."""
    task_id, _ = processing_task(yard)
    response = put(yard, task_id, registered["token"], report("PROCESSING", progress=0.5))
    assert response.status_code == 200, response.text
    task = yard.task(task_id)
    assert task["status"] == "PROCESSING"
    assert task["progress"] == 0.5


def test_seed_service_token_naming_holder_is_accepted(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """A service token without `srv` is accepted when metadata.server_id names the holder."""
    task_id, _ = processing_task(yard)
    tok = token(["service"], "seed-backend")
    response = put(yard, task_id, tok, report(server_id=BACKEND_ID))
    assert response.status_code == 200, response.text
    assert yard.task(task_id)["status"] == "FINISHED"


def test_seed_service_token_naming_other_server_is_409(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """A service token without `srv` whose metadata.server_id names another server is 409."""
    task_id, _ = processing_task(yard)
    before = state(yard, task_id)
    tok = token(["service"], "seed-backend")
    response = put(yard, task_id, tok, report(server_id="other"))
    assert response.status_code == 409, response.text
    assert state(yard, task_id) == before


def test_seed_service_token_without_server_id_is_403(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """A service token without `srv` and without metadata.server_id is 403; nothing changes."""
    task_id, _ = processing_task(yard)
    before = state(yard, task_id)
    response = put(yard, task_id, token(["service"], "seed-backend"), report())
    assert response.status_code == 403, response.text
    assert state(yard, task_id) == before


def test_put_after_finished_is_409_and_keeps_result(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """Once FINISHED, further reports (callback token or admin) are 409; the result is kept."""
    task_id, attempt = processing_task(yard)
    first = put(yard, task_id, callback_token(task_id, attempt), report(server_id=BACKEND_ID))
    assert first.status_code == 200, first.text
    finished = yard.task(task_id)
    second = report("FAILED", server_id=BACKEND_ID, message="too late")
    second["data"] = {"answer": 0}
    assert put(yard, task_id, callback_token(task_id, attempt), second).status_code == 409
    assert yard.admin.put(f"/api/task/{task_id}", json=second).status_code == 409
    assert yard.task(task_id) == finished


def test_admin_put_settles_a_processing_task(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """An admin may report on any running task."""
    task_id, _ = processing_task(yard)
    response = yard.admin.put(f"/api/task/{task_id}", json=report())
    assert response.status_code == 200, response.text
    assert yard.task(task_id)["status"] == "FINISHED"


# ---- heartbeats -------------------------------------------------------------------------


def test_heartbeat_with_token_bound_to_other_server_is_403(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """A service token bound to another server may not heartbeat for b1; lastHeartbeat stays."""
    before = yard.server(BACKEND_ID)
    assert before is not None
    tok = token(["service"], "server:other", srv="other")
    response = yard.http.post(
        f"{yard.url}/api/servers/{BACKEND_ID}/heartbeat", json={}, headers=bearer(tok)
    )
    assert response.status_code == 403, response.text
    after = yard.server(BACKEND_ID)
    assert after is not None
    assert after["lastHeartbeat"] == before["lastHeartbeat"]


def test_registration_token_works_for_own_heartbeat(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """The `token` from POST /api/servers sends b1's heartbeat and moves lastHeartbeat."""
    before = yard.server(BACKEND_ID)
    assert before is not None
    tok = registered["token"]
    assert jwt.decode(tok, SECRET, algorithms=["HS256"])["roles"] == ["service"]
    sent_at = datetime.now(UTC).replace(microsecond=0)
    response = yard.http.post(
        f"{yard.url}/api/servers/{BACKEND_ID}/heartbeat", json={}, headers=bearer(tok)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == BACKEND_ID
    assert body["success"] is True
    after = yard.server(BACKEND_ID)
    assert after is not None
    assert after["lastHeartbeat"] == body["lastHeartbeat"]
    assert datetime.fromisoformat(body["lastHeartbeat"]) >= sent_at
    assert before["lastHeartbeat"] is None or after["lastHeartbeat"] >= before["lastHeartbeat"]


def test_unbound_service_token_cannot_heartbeat(
    yard: InProcessYard, registered: dict[str, Any]
) -> None:
    """A service token bound to no server may not keep b1 looking alive, even in development
    (before, any unbound service token could heartbeat any server)."""
    before = yard.server(BACKEND_ID)
    assert before is not None
    response = yard.http.post(
        f"{yard.url}/api/servers/{BACKEND_ID}/heartbeat",
        json={},
        headers=bearer(token(["service"], "seed-backend")),
    )
    assert response.status_code == 403, response.text
    after = yard.server(BACKEND_ID)
    assert after is not None
    assert after["lastHeartbeat"] == before["lastHeartbeat"]


# ---- unbound service tokens in production ------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "expected"),
    [(None, 403), ("false", 403), ("true", 200)],
    ids=["production-default", "production-refused", "production-allowed"],
)
def test_production_refuses_unbound_service_tokens_unless_allowed(
    allow: str | None, expected: int
) -> None:
    """In production a seed-style service token (no `srv`) cannot report for the server its
    body names, unless TASKYARD_ALLOW_UNBOUND_SERVICE_TOKENS=true; the task stays as it was.
    Development keeps allowing it (test_seed_service_token_naming_holder_is_accepted)."""
    settings = {"env": "production", "allowed_backend_networks": "127.0.0.1"}
    settings |= {"allow_unbound_service_tokens": allow} if allow else {}
    with InProcessYard(**settings) as node:
        backend = FakeBackend(BACKEND_ID, accept=True)
        node.register_online(backend, max_concurrency=4, **{"async": True})
        task_id, _ = processing_task(node)
        before = state(node, task_id)
        response = put(
            node, task_id, token(["service"], "seed-backend"), report(server_id=BACKEND_ID)
        )
        assert response.status_code == expected, response.text
        if expected == 403:
            assert "TASKYARD_ALLOW_UNBOUND_SERVICE_TOKENS" in response.json()["error"]
            assert state(node, task_id) == before
        else:
            assert node.task(task_id)["status"] == "FINISHED"
