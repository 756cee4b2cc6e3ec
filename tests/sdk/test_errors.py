"""Each error class of the SDK, produced from a real response (or a real refused connection),
through `Client` and `AsyncClient` alike."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from taskyard.client import (
    APIError,
    BadRequest,
    Client,
    Conflict,
    Forbidden,
    InvalidResponse,
    NotFound,
    RateLimited,
    ServerError,
    TaskyardError,
    TransportError,
    Unauthorized,
)
from taskyard.client._exceptions import parse_retry_after
from tests.sdk.conftest import USER, AnyClient, run
from tests.support import MockBackend, Proc, free_port, token

MakeClient = Callable[..., AnyClient]


async def test_a_bad_token_is_unauthorized(make_client: MakeClient) -> None:
    """401 → Unauthorized; the message has the status and the API's error, not the token."""
    bad = token(["admin"], "root", secret="not-the-secret-" + "y" * 40)
    with pytest.raises(Unauthorized) as caught:
        await run(make_client(bad).servers())
    error = caught.value
    assert isinstance(error, APIError) and isinstance(error, TaskyardError)
    assert error.status == 401 and error.error
    assert str(error).startswith("GET /api/servers → 401 Unauthorized: ")
    assert bad not in str(error) and bad not in repr(error)
    assert error.request_id


async def test_a_user_on_an_admin_route_is_forbidden(make_client: MakeClient) -> None:
    """403 → Forbidden."""
    with pytest.raises(Forbidden) as caught:
        await run(make_client(USER).stats())
    assert caught.value.status == 403
    assert USER not in str(caught.value)


async def test_an_unknown_task_is_not_found(make_client: MakeClient) -> None:
    """404 → NotFound, with the API's message."""
    with pytest.raises(NotFound) as caught:
        await run(make_client().get("no-such-task"))
    assert (
        str(caught.value)
        == "GET /api/task/no-such-task → 404 Not Found: Task no-such-task not found"
    )
    with pytest.raises(NotFound):
        await run(make_client().server("no-such-server"))


async def test_cancelling_a_final_task_is_a_conflict(
    make_client: MakeClient, backend: MockBackend, model: str
) -> None:
    """409 → Conflict."""
    client = make_client()
    done = await run(client.wait((await run(client.submit(model))).id, timeout_s=30))
    with pytest.raises(Conflict) as caught:
        await run(client.cancel(done.id))
    assert caught.value.status == 409 and "already" in caught.value.error


async def test_bad_input_is_a_bad_request_with_details(make_client: MakeClient) -> None:
    """400 → BadRequest; `.details` is the API's list of what is wrong, where."""
    with pytest.raises(BadRequest) as caught:
        await run(make_client().submit(f"m-{uuid.uuid4().hex[:6]}", priority=5000))
    error = caught.value
    assert error.status == 400 and error.error == "Invalid request"
    assert [d["loc"] for d in error.details] == [["query", "priority"]]
    with pytest.raises(BadRequest) as empty:
        await run(make_client().submit(""))
    assert empty.value.details[0]["loc"] == ["body", "model"]


async def test_a_closed_port_is_a_transport_error(make_client: MakeClient) -> None:
    """Nothing listening → TransportError, naming the URL."""
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TransportError) as caught:
        await run(make_client(url=url).health())
    assert f"GET {url}/health: ConnectError" in str(caught.value)


async def test_a_500_is_a_server_error(
    make_client: MakeClient, status_server: Callable[..., Proc]
) -> None:
    """5xx → ServerError, with the body's error (or its text when it is not JSON)."""
    server = status_server(500, json.dumps({"error": "Internal server error"}))
    with pytest.raises(ServerError) as caught:
        await run(make_client(url=server.url).get("t1"))
    assert str(caught.value) == (
        "GET /api/task/t1 → 500 Internal Server Error: Internal server error"
    )
    plain = status_server(503, "upstream down", content_type="text/plain")
    with pytest.raises(ServerError) as unavailable:
        await run(make_client(url=plain.url).stats())
    assert unavailable.value.status == 503 and unavailable.value.error == "upstream down"


async def test_a_429_is_rate_limited_with_retry_after(
    make_client: MakeClient, status_server: Callable[..., Proc]
) -> None:
    """429 → RateLimited with the Retry-After seconds."""
    server = status_server(429, json.dumps({"error": "Too many requests"}), Retry_After="7")
    with pytest.raises(RateLimited) as caught:
        await run(make_client(url=server.url).submit("m"))
    assert caught.value.retry_after == 7.0 and caught.value.error == "Too many requests"
    bare = status_server(429)
    with pytest.raises(RateLimited) as unsaid:
        await run(make_client(url=bare.url).submit("m"))
    assert unsaid.value.retry_after is None


async def test_an_unreadable_answer_is_an_invalid_response(
    make_client: MakeClient, status_server: Callable[..., Proc]
) -> None:
    """A 200 that is not JSON, or not the expected shape → InvalidResponse."""
    not_json = status_server(200, "<html>proxy login</html>", content_type="text/html")
    with pytest.raises(InvalidResponse, match="not JSON"):
        await run(make_client(url=not_json.url).get("t1"))
    wrong = status_server(200, json.dumps({"taskId": "t1"}))
    with pytest.raises(InvalidResponse, match="not a TaskOut"):
        await run(make_client(url=wrong.url).get("t1"))


def test_retry_after_as_seconds_or_date() -> None:
    """Retry-After is read as seconds or as an HTTP date."""
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = parse_retry_after(later)
    assert seconds is not None and 25 <= seconds <= 31


async def test_ready_reads_a_503_as_not_ready(
    make_client: MakeClient, status_server: Callable[..., Proc]
) -> None:
    """`ready()` answers a 503 from /ready (the node is up, its database is not) as
    `ready is False`, not as an error."""
    down = status_server(503, json.dumps({"status": "unavailable", "database": "unreachable"}))
    readiness = await run(make_client(url=down.url).ready())
    assert not readiness.ready and readiness.database == "unreachable"


def test_misuse_fails_before_any_request() -> None:
    """Unknown filters or options, and naive datetimes, are refused before anything is sent."""
    with Client("http://127.0.0.1:1") as client:
        with pytest.raises(TypeError, match="unknown task filter"):
            list(client.search(colour="red"))  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="unknown submit option"):
            client.submit("m", retries=3)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="timezone-aware"):
            list(client.search(created_after=datetime(2030, 1, 1)))
        with pytest.raises(ValueError, match="names model"):
            client.submit("m", {"model": "other"})
