"""FastAPI dependencies: the coordinator, and the caller's verified identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from taskyard import auth, errors
from taskyard.domain.service import Coordinator
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
) -> auth.Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise errors.Unauthorized("Missing bearer token (Authorization: Bearer <JWT>)")
    verifier: auth.TokenVerifier = request.app.state.token_verifier
    principal = await verifier.verify_async(credentials.credentials)
    if principal.registration is not None:
        # A token issued for a server registration dies with it (delete, or a new registration).
        coordinator: Coordinator = request.app.state.coordinator
        await coordinator.check_registration(principal)
    limiter: RateLimiter = request.app.state.rate_limiter
    route = getattr(request.scope.get("route"), "path", request.url.path)
    await limiter.check(principal, method=request.method, route=route)
    return principal


CoordinatorDep = Annotated[Coordinator, Depends(get_coordinator)]
PrincipalDep = Annotated[auth.Principal, Depends(get_principal)]


async def _client(principal: PrincipalDep) -> auth.Principal:
    if not principal.has_any(auth.USER, auth.ADMIN):
        raise errors.Forbidden("This route needs role `user` or `admin`")
    return principal


async def _admin(principal: PrincipalDep) -> auth.Principal:
    if not principal.is_admin:
        raise errors.Forbidden("This route needs role `admin`")
    return principal


async def _admin_or_service(principal: PrincipalDep) -> auth.Principal:
    if not principal.has_any(auth.ADMIN, auth.SERVICE):
        raise errors.Forbidden("This route needs role `admin` or the server's `service` token")
    return principal


ClientDep = Annotated[auth.Principal, Depends(_client)]
AdminDep = Annotated[auth.Principal, Depends(_admin)]
AdminOrServiceDep = Annotated[auth.Principal, Depends(_admin_or_service)]
