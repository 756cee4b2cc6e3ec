"""JWT tokens: minting and checking. No web framework here.

Tokens are HS256 (seed compatible) with a `roles` array and a required `exp` and `sub`.
Backends get two kinds of `service` token: a long-lived one bound to their server (`srv`
claim), returned at registration, and a short-lived callback token bound to one attempt (`srv`,
`tid`, `att`). Every claim that reaches a query or a row is checked to be storable.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import jwt

from taskyard import errors
from taskyard.jsonsafe import storable_text

ALGORITHMS = ["HS256"]  # never "none": pyjwt refuses algorithms not listed here
ADMIN, USER, SERVICE = "admin", "user", "service"
SERVER_TOKEN_TTL_S = 365 * 24 * 3600.0  # the token a backend gets at registration


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


class JwtIssuer:
    """The domain's `TokenIssuer`: `service` tokens for backends, signed with the shared secret.

    Both carry `sub: server:<id>` and `srv`; a callback token adds `tid` and `att`."""

    def __init__(self, secret: str, *, server_token_ttl_s: float = SERVER_TOKEN_TTL_S) -> None:
        self._secret = secret
        self._server_token_ttl_s = server_token_ttl_s

    def server_token(self, server_id: str) -> str:
        return mint(
            self._secret,
            sub=f"server:{server_id}",
            roles=[SERVICE],
            ttl_s=self._server_token_ttl_s,
            server_id=server_id,
        )

    def callback_token(self, *, server_id: str, task_id: str, attempt: int, ttl_s: float) -> str:
        return mint(
            self._secret,
            sub=f"server:{server_id}",
            roles=[SERVICE],
            ttl_s=ttl_s,
            server_id=server_id,
            task_id=task_id,
            attempt=attempt,
        )


def verify(secret: str, token: str) -> Principal:
    """Check a token's signature, expiry and shape; raise `Unauthorized` otherwise."""
    return _verify(secret, token)[0]


def _verify(secret: str, token: str) -> tuple[Principal, float]:
    try:
        claims = jwt.decode(
            token, secret, algorithms=ALGORITHMS, options={"require": ["exp", "sub"]}, leeway=5
        )
    except jwt.ExpiredSignatureError as exc:
        raise errors.Unauthorized("Token expired") from exc
    except (jwt.PyJWTError, ArithmeticError, ValueError, TypeError) as exc:
        # PyJWTError says what is wrong with the token; the others are claims too absurd
        # for PyJWT's own arithmetic (say `exp: 1e400` in an older release).
        raise errors.Unauthorized("Invalid token") from exc
    return _principal(claims), float(claims["exp"])


# Claims are the token issuer's input, and `sub`, `srv` and `tid` end up in queries and rows:
# each must be what a column can hold, or the token is refused.
MAX_SUB_LENGTH = 256
MAX_ID_LENGTH = 128
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z: any later `exp`, `iat`, `nbf` is absurd
MAX_ATTEMPT = 1_000_000


def _principal(claims: dict[str, Any]) -> Principal:
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise errors.Unauthorized("Invalid token: `roles` must be an array of strings")
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if value is not None and not _is_timestamp(value):
            raise errors.Unauthorized(f"Invalid token: `{name}` is not a time before year 10000")
    attempt = claims.get("att")
    if attempt is not None and not (
        isinstance(attempt, int) and not isinstance(attempt, bool) and 0 <= attempt <= MAX_ATTEMPT
    ):
        raise errors.Unauthorized("Invalid token: `att` must be an attempt number")
    return Principal(
        sub=_text_claim(claims, "sub", MAX_SUB_LENGTH),
        roles=frozenset(roles),
        server_id=_optional_text_claim(claims, "srv", MAX_ID_LENGTH),
        task_id=_optional_text_claim(claims, "tid", MAX_ID_LENGTH),
        attempt=attempt,
    )


def _is_timestamp(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return math.isfinite(value) and 0 <= value <= MAX_TIMESTAMP


def _text_claim(claims: dict[str, Any], name: str, max_length: int) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_length or not storable_text(value):
        raise errors.Unauthorized(
            f"Invalid token: `{name}` must be a non-empty string of at most {max_length}"
            " characters, without NUL"
        )
    return value


def _optional_text_claim(claims: dict[str, Any], name: str, max_length: int) -> str | None:
    return _text_claim(claims, name, max_length) if name in claims else None


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
