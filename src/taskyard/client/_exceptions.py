"""Errors of the taskyard client, one class per kind of failure.

TaskyardError
 ├── TransportError      no HTTP answer: connection refused, timed out, connection broken
 ├── InvalidResponse     an answer the client cannot read (not JSON, or not the expected shape)
 ├── WaitTimeout         `wait` ran out of time; `.task` is the task as last seen
 └── APIError            the API answered with an error status (`.status`, `.error`, `.details`)
      ├── BadRequest     400 (and 413, 422): the request is invalid; `.details` says where
      ├── Unauthorized   401: no token, or a bad or expired one
      ├── Forbidden      403: the token lacks the needed role
      ├── NotFound       404
      ├── Conflict       409: e.g. cancelling a task that is already final
      ├── RateLimited    429; `.retry_after` is the server's Retry-After in seconds, if any
      └── ServerError    5xx

Messages name the method, the path, the status and the API's `error`; never the token.
"""

from __future__ import annotations

import email.utils
import time
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from taskyard.client._models import Task

MAX_SHOWN_BODY = 200  # characters of a non-JSON error body quoted in a message


class TaskyardError(Exception):
    """Something went wrong talking to taskyard."""


class TransportError(TaskyardError):
    """No HTTP answer from the server (it is down, unreachable, or too slow)."""

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.request = request


class InvalidResponse(TaskyardError):
    """The server answered something the client cannot read."""

    def __init__(self, message: str, *, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.response = response


class WaitTimeout(TaskyardError):
    """The task did not become final in time; `.task` is the task as last seen."""

    def __init__(self, task: Task, timeout_s: float | None) -> None:
        waited = "" if timeout_s is None else f" after {timeout_s:g} s"
        super().__init__(f"task {task.id} is still {task.status}{waited}")
        self.task = task
        self.timeout_s = timeout_s


class APIError(TaskyardError):
    """The API answered with an error status."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.request = response.request
        self.status: int = response.status_code
        self.error, self.details = _error_body(response)
        self.request_id: str | None = response.headers.get("X-Request-Id")
        request = response.request
        super().__init__(
            f"{request.method} {request.url.path} → {self.status}"
            f" {response.reason_phrase}: {self.error}"
        )


class BadRequest(APIError):
    """The request is invalid (400); `.details` says what is wrong, where."""


class Unauthorized(APIError):
    """No token, or a bad or expired one (401)."""


class Forbidden(APIError):
    """The token lacks the role this needs (403)."""


class NotFound(APIError):
    """No such task or server, or not yours to see (404)."""


class Conflict(APIError):
    """The request conflicts with the current state (409)."""


class RateLimited(APIError):
    """Too many requests (429); try again after `.retry_after` seconds (None: not said)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response)
        self.retry_after = parse_retry_after(response.headers.get("Retry-After"))


class ServerError(APIError):
    """The server failed (5xx)."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    422: BadRequest,
    429: RateLimited,
}


def error_for(response: httpx.Response) -> APIError:
    """The most specific error for an error response."""
    kind = _BY_STATUS.get(response.status_code)
    if kind is None:
        kind = ServerError if response.status_code >= 500 else APIError
    return kind(response)


def _error_body(response: httpx.Response) -> tuple[str, Any]:
    """`(error, details)` of taskyard's `{"error": …, "details"?: …}`, or of any other body."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        if len(text) > MAX_SHOWN_BODY:
            text = text[:MAX_SHOWN_BODY] + "…"
        return text or response.reason_phrase, None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"], body.get("details")
    return response.reason_phrase, body


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
