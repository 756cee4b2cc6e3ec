"""JWT tokens: minting and checking. No web framework here.

Tokens carry a `roles` array and a required `exp` and `sub`; they are checked with the key their
`kid` header names (keys.py: HS256 secrets, RS256/ES256 keys from a JWKS; no `kid`: the seed's
shared secret), and with the configured `iss`, `aud` and clock leeway (`TokenPolicy`).
Backends get two kinds of `service` token, both bound to their server (`srv`) and to its
registration (`reg`, the server's `revision`: a delete or a new registration revokes them): a
server token (heartbeats, reports), returned at registration and renewed by each heartbeat, and a
short-lived callback token bound to one attempt (`tid`, `att`). Every claim that reaches a query
or a row is checked to be storable.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import jwt

from taskyard import errors
from taskyard.config import Settings, default_of
from taskyard.domain.principal import Principal as Principal  # re-exported: callers use it
from taskyard.jsonsafe import storable_text
from taskyard.keys import JwksSource, KeyRing, SigningKey, parse_secrets, signing_kid
from taskyard.roles import ADMIN as ADMIN  # re-exported: auth.ADMIN is what callers use
from taskyard.roles import SERVICE as SERVICE
from taskyard.roles import USER as USER

ALGORITHMS = ["HS256"]  # what taskyard signs with; never "none" (pyjwt refuses unlisted ones)


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """Claims checked beyond the signature: `iss` and `aud` when set (taskyard's own tokens
    then carry them too), and the clock skew allowed on `exp`, `nbf` and `iat`. Unset, each
    is the setting's default (TASKYARD_JWT_ISSUER, _AUDIENCE, _LEEWAY_S)."""

    issuer: str = default_of("jwt_issuer")
    audience: str = default_of("jwt_audience")
    leeway_s: float = default_of("jwt_leeway_s")


class UnknownKey(errors.Unauthorized):
    """The token names a `kid` no configured key has (a JWKS refetch may find it)."""


def mint(
    key: str | SigningKey,
    *,
    sub: str,
    roles: list[str],
    ttl_s: float,
    server_id: str | None = None,
    task_id: str | None = None,
    attempt: int | None = None,
    registration: str | None = None,
    policy: TokenPolicy | None = None,
) -> str:
    """Sign a token with `key` (a bare string: the shared secret, no `kid` header)."""
    signing = key if isinstance(key, SigningKey) else SigningKey(key)
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "roles": roles, "iat": now, "exp": now + int(ttl_s)}
    if server_id is not None:
        claims["srv"] = server_id
    if registration is not None:
        claims["reg"] = registration
    if task_id is not None:
        claims["tid"] = task_id
        claims["att"] = attempt
    if policy is not None and policy.issuer:
        claims["iss"] = policy.issuer
    if policy is not None and policy.audience:
        claims["aud"] = policy.audience
    headers = {"kid": signing.kid} if signing.kid is not None else None
    return jwt.encode(claims, signing.secret, algorithm=ALGORITHMS[0], headers=headers)


class JwtIssuer:
    """The domain's `TokenIssuer`: `service` tokens for backends, signed with the signing key.

    Both carry `sub: server:<id>`, `srv` and `reg`; a callback token adds `tid` and `att`."""

    def __init__(
        self,
        key: str | SigningKey,
        *,
        server_token_ttl_s: float = default_of("server_token_ttl_s"),
        policy: TokenPolicy | None = None,
    ) -> None:
        self._key = key
        self._server_token_ttl_s = server_token_ttl_s
        self._policy = policy

    def server_token(self, server_id: str, *, registration: str | None = None) -> str:
        return mint(
            self._key,
            sub=f"server:{server_id}",
            roles=[SERVICE],
            ttl_s=self._server_token_ttl_s,
            server_id=server_id,
            registration=registration,
            policy=self._policy,
        )

    def callback_token(
        self,
        *,
        server_id: str,
        task_id: str,
        attempt: int,
        ttl_s: float,
        registration: str | None = None,
    ) -> str:
        return mint(
            self._key,
            sub=f"server:{server_id}",
            roles=[SERVICE],
            ttl_s=ttl_s,
            server_id=server_id,
            task_id=task_id,
            attempt=attempt,
            registration=registration,
            policy=self._policy,
        )


def verify(keys: str | KeyRing, token: str, policy: TokenPolicy | None = None) -> Principal:
    """Check a token's signature, expiry and shape; raise `Unauthorized` otherwise."""
    return _verify(_ring(keys), token, policy or TokenPolicy())[0]


def _ring(keys: str | KeyRing) -> KeyRing:
    return keys if isinstance(keys, KeyRing) else KeyRing(secret=keys)


def _verify(keys: KeyRing, token: str, policy: TokenPolicy) -> tuple[Principal, float]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise errors.Unauthorized("Invalid token") from exc
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise errors.Unauthorized("Invalid token: `kid` must be a string")
    key = keys.lookup(kid)
    if key is None:
        if kid is None:
            raise errors.Unauthorized("Invalid token: a token without `kid` needs a shared secret")
        raise UnknownKey("Invalid token: no key has this `kid`")
    try:
        claims = jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm],  # pinned per key: no algorithm confusion, never "none"
            options={"require": ["exp", "sub"]},
            leeway=policy.leeway_s,
            issuer=policy.issuer or None,
            audience=policy.audience or None,
        )
    except jwt.ExpiredSignatureError as exc:
        raise errors.Unauthorized("Token expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise errors.Unauthorized("Invalid token: not valid yet (`nbf` or `iat`)") from exc
    except jwt.InvalidIssuerError as exc:
        raise errors.Unauthorized("Invalid token: wrong `iss`") from exc
    except jwt.InvalidAudienceError as exc:
        raise errors.Unauthorized("Invalid token: wrong `aud`") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise errors.Unauthorized("Invalid token: `alg` does not match its key") from exc
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
        registration=_optional_text_claim(claims, "reg", MAX_ID_LENGTH),
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
    signature check costs more than the rest of a small request. Entries expire with the token,
    and all go when the JWKS keys change (a key dropped there must stop working)."""

    def __init__(
        self,
        keys: str | KeyRing,
        *,
        policy: TokenPolicy | None = None,
        max_entries: int = 10_000,
    ) -> None:
        self.keys = _ring(keys)
        self._policy = policy or TokenPolicy()
        self._max_entries = max_entries
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._jwks_generation = 0

    async def start(self) -> None:
        """Load the JWKS, if any. A JWKS that cannot be loaded now is retried on demand."""
        if self.keys.jwks is not None:
            await self.keys.jwks.refresh()

    def verify(self, token: str) -> Principal:
        """Check `token` with the keys known now (no JWKS refetch)."""
        jwks = self.keys.jwks
        if jwks is not None and jwks.generation != self._jwks_generation:
            self._cache.clear()  # a key may have left the JWKS: check every token afresh
            self._jwks_generation = jwks.generation
        hit = self._cache.get(token)
        if hit is not None:
            if time.time() < hit[1]:
                return hit[0]
            del self._cache[token]
        principal, exp = _verify(self.keys, token, self._policy)
        if len(self._cache) >= self._max_entries:
            self._cache.clear()  # crude, but bounded; a full cache refills in one round of calls
        self._cache[token] = (principal, exp)
        return principal

    async def verify_async(self, token: str) -> Principal:
        """`verify`, and when the token names an unknown `kid`, refetch the JWKS (at most once
        per its `min_refetch_s`, whoever asks) and try once more. Keys older than the JWKS's
        `max_age_s` are fetched again first, so that a key dropped there stops working."""
        if self.keys.jwks is not None and self.keys.jwks.is_stale():
            await self.keys.jwks.refresh()
        try:
            return self.verify(token)
        except UnknownKey:
            jwks = self.keys.jwks
            if jwks is None or not jwks.may_refetch():
                raise
        await jwks.refresh()
        return self.verify(token)


def keys_from(settings: Settings) -> KeyRing:
    """The key ring the settings describe (they were validated: the kids make sense)."""
    named = parse_secrets(settings.jwt_secrets)
    jwks = (
        JwksSource(settings.jwks_url, min_refetch_s=settings.jwks_refetch_min_s)
        if settings.jwks_url
        else None
    )
    return KeyRing(
        secret=settings.jwt_secret,
        secrets=named,
        signing_kid=signing_kid(named, settings.jwt_signing_kid),
        jwks=jwks,
    )


def policy_from(settings: Settings) -> TokenPolicy:
    return TokenPolicy(
        issuer=settings.jwt_issuer, audience=settings.jwt_audience, leeway_s=settings.jwt_leeway_s
    )
