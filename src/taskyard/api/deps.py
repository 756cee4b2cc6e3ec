"""FastAPI dependencies: the coordinator, and the caller's verified identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from taskyard import auth, errors
from taskyard.domain.service import Coordinator

_bearer = HTTPBearer(auto_error=False, description="A JWT (HS256) with a `roles` array")


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
    return verifier.verify(credentials.credentials)


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
