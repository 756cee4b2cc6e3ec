"""Server tokens through the API, in-process (`tests.inprocess`) on SQLite and PostgreSQL: they
expire, a heartbeat renews them, and they die with their registration (delete, or a new
registration of the same id), callback tokens too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from tests.inprocess import InProcessFleet, InProcessYard, shared_yard
from tests.support import SECRET, bearer, wait_for

TTL_S = 3600


@pytest.fixture(scope="module")
def yard(db_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessYard]:
    workdir = tmp_path_factory.mktemp(f"server-tokens-{db_kind}")
    with shared_yard(db_kind, workdir, server_token_ttl_s=TTL_S) as node:
        yield node


@pytest.fixture
def fleet(yard: InProcessYard) -> Iterator[InProcessFleet]:
    f = InProcessFleet(yard)
    yield f
    f.close()


def claims_of(tok: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(tok, SECRET, ["HS256"])
    return decoded


def heartbeat(yard: InProcessYard, server_id: str, tok: str) -> httpx.Response:
    return yard.http.post(f"{yard.url}/api/servers/{server_id}/heartbeat", headers=bearer(tok))


def register_without_health(fleet: InProcessFleet, name: str) -> tuple[str, str]:
    """A server judged by heartbeats (nothing listens at its URL; no task goes to it)."""
    server_id = fleet.sid(name)
    body = {"id": server_id, "endpoints": {"predict": "http://127.0.0.1:9/predict"}}
    token: str = fleet.register_raw(body)["token"]
    return server_id, token


def report(server_id: str, status: str = "PROCESSING") -> dict[str, Any]:
    return {
        "backend_task_id": "bt",
        "data": {},
        "metadata": {"status": status, "server_id": server_id},
    }


def test_registration_token_expires_after_the_configured_ttl_and_names_its_registration(
    fleet: InProcessFleet,
) -> None:
    server_id, tok = register_without_health(fleet, "ttl")
    claims = claims_of(tok)
    assert claims["exp"] - claims["iat"] == TTL_S  # not a year
    assert claims["srv"] == server_id and claims["reg"]


def test_a_heartbeat_renews_the_server_token(fleet: InProcessFleet) -> None:
    server_id, tok = register_without_health(fleet, "renew")
    response = heartbeat(fleet.yard, server_id, tok)
    assert response.status_code == 200, response.text
    renewed = response.json()["token"]
    old, new = claims_of(tok), claims_of(renewed)
    assert (new["srv"], new["reg"]) == (old["srv"], old["reg"])
    assert new["exp"] >= old["exp"]
    assert heartbeat(fleet.yard, server_id, renewed).status_code == 200


def test_registering_again_revokes_the_old_registrations_tokens(fleet: InProcessFleet) -> None:
    server_id, first = register_without_health(fleet, "again")
    renewed_first = heartbeat(fleet.yard, server_id, first).json()["token"]
    _, second = register_without_health(fleet, "again")
    for old in (first, renewed_first):
        response = heartbeat(fleet.yard, server_id, old)
        assert response.status_code == 401, response.text
        assert "revoked" in response.json()["error"]
    assert heartbeat(fleet.yard, server_id, second).status_code == 200


def test_deleting_the_server_revokes_its_token(fleet: InProcessFleet) -> None:
    server_id, tok = register_without_health(fleet, "gone")
    assert heartbeat(fleet.yard, server_id, tok).status_code == 200
    assert fleet.yard.admin.delete(f"/api/servers/{server_id}").status_code == 200
    response = heartbeat(fleet.yard, server_id, tok)
    assert response.status_code == 401, response.text  # today's code: 404, the token still good
    # Registered anew under the same id, the deleted registration's token stays dead.
    _, fresh = register_without_health(fleet, "gone")
    assert heartbeat(fleet.yard, server_id, tok).status_code == 401
    assert heartbeat(fleet.yard, server_id, fresh).status_code == 200


def test_callback_and_server_tokens_die_when_the_server_registers_again(
    fleet: InProcessFleet,
) -> None:
    # Async, not calling back within the test: the task stays PROCESSING on it.
    (backend,) = fleet.mocks(("cb", "--async", "--delay-ms", "60000"))
    server_token = fleet.register_online(backend, **{"async": True})["token"]
    task_id = fleet.submit(timeout_s=60)
    fleet.yard.wait_status(task_id, "PROCESSING")
    calls = wait_for(lambda: [c for c in backend.received if c["task_id"] == task_id])
    callback_token = calls[0]["callback_token"]
    assert claims_of(callback_token)["reg"] == claims_of(server_token)["reg"]
    url = f"{fleet.yard.url}/api/task/{task_id}"
    progress = fleet.yard.http.put(
        url, json=report(backend.server_id), headers=bearer(callback_token)
    )
    assert progress.status_code == 200, progress.text

    fleet.register_online(backend, **{"async": True})  # the backend restarted, say
    for tok in (callback_token, server_token):
        late = fleet.yard.http.put(
            url, json=report(backend.server_id, "FINISHED"), headers=bearer(tok)
        )
        assert late.status_code == 401, late.text
    assert fleet.yard.task(task_id)["status"] == "PROCESSING"
