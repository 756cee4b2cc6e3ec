"""JWT tokens: minting and checking. No web framework here.

Tokens are HS256 (seed compatible) with a `roles` array and a required `exp`. Backends get two
kinds of `service` token: a long-lived one bound to their server (`srv` claim), returned at
registration, and a short-lived callback token bound to one attempt (`srv`, `tid`, `att`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from taskyard import errors

ALGORITHMS = ["HS256"]  # never "none": pyjwt refuses algorithms not listed here
ADMIN, USER, SERVICE = "admin", "user", "service"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as proven by a token."""

    sub: str
    roles: frozenset[str]
    server_id: str | None = None  # `srv`: a service token bound to one backend server
    task_id: str | None = None  # `tid` + `att`: a callback token for one attempt
    attempt: int | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    @property
    def is_service(self) -> bool:
        return SERVICE in self.roles

    def has_any(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)


def mint(
    secret: str,
    *,
    sub: str,
    roles: list[str],
    ttl_s: float,
    server_id: str | None = None,
    task_id: str | None = None,
    attempt: int | None = None,
) -> str:
    """Sign a token with the shared secret."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "roles": roles, "iat": now, "exp": now + int(ttl_s)}
    if server_id is not None:
        claims["srv"] = server_id
    if task_id is not None:
        claims["tid"] = task_id
        claims["att"] = attempt
    return jwt.encode(claims, secret, algorithm=ALGORITHMS[0])


def verify(secret: str, token: str) -> Principal:
    """Check a token's signature, expiry and shape; raise `Unauthorized` otherwise."""
    return _verify(secret, token)[0]


def _verify(secret: str, token: str) -> tuple[Principal, float]:
    try:
        claims = jwt.decode(
            token, secret, algorithms=ALGORITHMS, options={"require": ["exp"]}, leeway=5
        )
    except jwt.ExpiredSignatureError as exc:
        raise errors.Unauthorized("Token expired") from exc
    except jwt.PyJWTError as exc:
        raise errors.Unauthorized("Invalid token") from exc
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise errors.Unauthorized("Invalid token: `roles` must be an array of strings")
    sub = claims.get("sub")
    attempt = claims.get("att")
    principal = Principal(
        sub=sub if isinstance(sub, str) else "",
        roles=frozenset(roles),
        server_id=_str_or_none(claims.get("srv")),
        task_id=_str_or_none(claims.get("tid")),
        attempt=attempt if isinstance(attempt, int) else None,
    )
    return principal, float(claims["exp"])


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


class TokenVerifier:
    """`verify` with a cache: clients and backends send the same token many times, and a
    signature check costs more than the rest of a small request. Entries expire with the token."""

    def __init__(self, secret: str, *, max_entries: int = 10_000) -> None:
        self._secret = secret
        self._max_entries = max_entries
        self._cache: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str) -> Principal:
        hit = self._cache.get(token)
        if hit is not None:
            if time.time() < hit[1]:
                return hit[0]
            del self._cache[token]
        principal, exp = _verify(self._secret, token)
        if len(self._cache) >= self._max_entries:
            self._cache.clear()  # crude, but bounded; a full cache refills in one round of calls
        self._cache[token] = (principal, exp)
        return principal
