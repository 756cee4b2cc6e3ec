"""FastAPI dependencies: the coordinator, and the caller's verified identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import State

from taskyard import auth, errors
from taskyard.domain.coordinator import Coordinator
from taskyard.domain.principal import Principal
from taskyard.ratelimit import RateLimiter

_bearer = HTTPBearer(
    auto_error=False, description="A JWT (HS256, or RS256/ES256 by JWKS) with a `roles` array"
)


async def get_coordinator(request: Request) -> Coordinator:
    coordinator: Coordinator = request.app.state.coordinator
    return coordinator


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    token = None if credentials is None else credentials.credentials  # None unless Bearer
    route = getattr(request.scope.get("route"), "path", request.url.path)
    return await authenticate(request.app.state, token, method=request.method, route=route)


async def authenticate(state: State, token: str | None, *, method: str, route: str) -> Principal:
    """Who sends `token` (401 without one), counted against their rate limit on `route`.
    Shared by the dependency above and the hot routes' fast path (`api.hot`)."""
    if not token:
        raise errors.Unauthorized("Missing bearer token (Authorization: Bearer <JWT>)")
    verifier: auth.TokenVerifier = state.token_verifier
    principal = await verifier.verify_async(token)
    if principal.registration is not None:
        # A token issued for a server registration dies with it (delete, or a new registration).
        coordinator: Coordinator = state.coordinator
        await coordinator.fleet.check_registration(principal)
    limiter: RateLimiter = state.rate_limiter
    await limiter.check(principal, method=method, route=route)
    return principal


def require_client(principal: Principal) -> Principal:
    if not principal.has_any(auth.USER, auth.ADMIN):
        raise errors.Forbidden("This route needs role `user` or `admin`")
    return principal


CoordinatorDep = Annotated[Coordinator, Depends(get_coordinator)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def _client(principal: PrincipalDep) -> Principal:
    return require_client(principal)


async def _admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise errors.Forbidden("This route needs role `admin`")
    return principal


async def _admin_or_service(principal: PrincipalDep) -> Principal:
    if not principal.has_any(auth.ADMIN, auth.SERVICE):
        raise errors.Forbidden("This route needs role `admin` or the server's `service` token")
    return principal


ClientDep = Annotated[Principal, Depends(_client)]
AdminDep = Annotated[Principal, Depends(_admin)]
AdminOrServiceDep = Annotated[Principal, Depends(_admin_or_service)]
