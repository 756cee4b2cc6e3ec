"""Errors → HTTP, in one table. Every error body is `{"error": message, "details"?: …}`."""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from taskyard import errors
from taskyard.api.responses import JsonResponse
from taskyard.api.schemas import ErrorOut

REQUEST_ID = "X-Request-Id"

log = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type[errors.TaskyardError], int]] = [
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.Forbidden, 403),
    (errors.Unauthorized, 401),
    (errors.InvalidInput, 400),
    (errors.RateLimited, 429),
    (errors.Unavailable, 503),
]


def status_for(exc: errors.TaskyardError) -> int:
    for kind, status in STATUS_BY_ERROR:
        if isinstance(exc, kind):
            return status
    return 500


def error_response(
    status: int, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JsonResponse:
    body: dict[str, Any] = {"error": message}
    if details is not None:
        body["details"] = details
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JsonResponse(body, status_code=status, headers=headers)


def rate_limit_headers(exc: errors.RateLimited) -> dict[str, str]:
    """`Retry-After` and the IETF draft's `RateLimit-*` fields (draft-ietf-httpapi-ratelimit)."""
    headers = {
        "Retry-After": str(exc.retry_after_s),
        "RateLimit-Limit": str(exc.limit),
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": str(exc.retry_after_s),
    }
    if exc.window_s is not None:
        headers["RateLimit-Policy"] = f"{exc.limit};w={exc.window_s}"
    return headers


def domain_error_response(exc: errors.TaskyardError) -> JsonResponse:
    headers = None
    if isinstance(exc, errors.Unavailable):
        headers = {"Retry-After": str(exc.retry_after_s)}
    elif isinstance(exc, errors.RateLimited):
        headers = rate_limit_headers(exc)
    details = exc.details if isinstance(exc, errors.InvalidInput) else None
    return error_response(status_for(exc), exc.message, details, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.TaskyardError)
    async def _domain(_request: Request, exc: errors.TaskyardError) -> JsonResponse:
        return domain_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JsonResponse:
        # The seed answers 400 to a bad body, not FastAPI's 422.
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        kinds = {d["type"] for d in details}
        message = "Malformed JSON body" if "json_invalid" in kinds else "Invalid request"
        return error_response(400, message, details)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JsonResponse:
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:
            # RFC 9110 §15.5.6: list every method of the path. Starlette names only those of
            # the first route on it, and taskyard serves most paths with one route a method.
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JsonResponse:
        # Log the details, show none: a 500 body never carries internals.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        # This handler runs outside the middleware stack (Starlette's ServerErrorMiddleware),
        # so `Edge` cannot add its header here: add the id it stored on the request.
        request_id = getattr(request.state, "request_id", None)
        headers = {REQUEST_ID: request_id} if isinstance(request_id, str) else None
        return error_response(500, "Internal server error", headers=headers)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
_PARAMETER = re.compile(r"\{[^}/]+\}")


def _allowed_methods(request: Request) -> list[str]:
    """The methods of the resource at this path, as the OpenAPI document has them: a concrete
    path (`/api/servers/cleanup`) before a templated one (`/api/servers/{server_id}`), as
    OpenAPI matches them. Undocumented paths ask the router, method by method."""
    path = request.url.path
    operations = request.app.openapi().get("paths", {})
    templated: list[str] = []
    for template, item in operations.items():
        if template == path:
            return sorted(method.upper() for method in item)
        if "{" in template and _template_regex(template).fullmatch(path):
            templated.extend(method.upper() for method in item)
    if templated:
        return sorted(set(templated))
    routes = request.app.router.routes
    scope = request.scope
    return [
        method
        for method in _METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in routes)
    ]


@functools.lru_cache(maxsize=64)
def _template_regex(template: str) -> re.Pattern[str]:
    parts = _PARAMETER.split(template)
    return re.compile("[^/]+".join(re.escape(part) for part in parts))


def documented(**descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, e.g. `documented(e404="No such task")`.

    400, 401, 413, 429 and 503 are documented everywhere with standard texts; a route adds or
    overrides the rest by status (`e403=…`, `e409=…`).
    """
    texts = {
        "400": "Invalid body or parameters",
        "401": "Missing, invalid or expired token",
        "413": "Body too large",
        "429": "Rate limit or quota exceeded (see Retry-After and RateLimit-*)",
        "503": "The database is unreachable or busy, or the node is stopping (see Retry-After)",
    } | {name.removeprefix("e"): text for name, text in descriptions.items()}
    return {int(code): {"model": ErrorOut, "description": text} for code, text in texts.items()}
