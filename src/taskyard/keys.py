"""The keys that sign and check tokens. No web framework here.

- HS256 secrets: `TASKYARD_JWT_SECRET` (tokens without a `kid` header: the seed's kind) and
  `TASKYARD_JWT_SECRETS` (`kid:secret,kid:secret`, chosen by the token's `kid`), one of which
  signs what taskyard mints (`TASKYARD_JWT_SIGNING_KID`). Several at once: rotation without
  downtime (add the new key everywhere, then sign with it, then drop the old one).
- RS256/ES256 public keys from a JWKS (`TASKYARD_JWKS_URL`: an http(s) URL or a file), for tokens
  an identity provider signs. Fetched at start and again when a token names an unknown `kid`, at
  most once per `min_refetch_s`, so a flood of made-up kids cannot hammer the JWKS server.

Every key is pinned to one algorithm: a token is checked only with the algorithm of the key its
`kid` names, so an HS256 token cannot be "verified" with an RSA public key as its HMAC secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt

log = logging.getLogger(__name__)

HS256 = "HS256"
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "ES256"})  # what a JWKS key may be used for
KID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_JWKS_BYTES = 1_048_576
JWKS_MAX_AGE_S = 300.0  # keys this old are fetched again: a key dropped there stops working


class KeyConfigError(ValueError):
    """A key setting that cannot be used; the message never contains a secret."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    key: Any = field(repr=False)  # an HS256 secret (str) or a `cryptography` public key
    algorithm: str  # the only `alg` a token checked with this key may name


@dataclass(frozen=True, slots=True)
class SigningKey:
    secret: str = field(repr=False)
    kid: str | None = None  # None: TASKYARD_JWT_SECRET, tokens without a `kid` header


def parse_secrets(text: str) -> dict[str, str]:
    """`kid1:secret1,kid2:secret2` → {kid: secret}. A secret may hold `:` (split at the first)."""
    found: dict[str, str] = {}
    for number, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue
        kid, colon, secret = entry.partition(":")
        kid = kid.strip()
        if not colon or not secret:
            raise KeyConfigError(f"TASKYARD_JWT_SECRETS entry {number} is not `kid:secret`")
        if not KID_PATTERN.fullmatch(kid):
            raise KeyConfigError(
                f"TASKYARD_JWT_SECRETS entry {number}: a kid is 1-64 of A-Z a-z 0-9 . _ -"
            )
        if kid in found:
            raise KeyConfigError(f"TASKYARD_JWT_SECRETS names kid {kid!r} twice")
        found[kid] = secret
    return found


def signing_kid(secrets: Mapping[str, str], chosen: str) -> str | None:
    """Which of `secrets` signs: the one named, or the only one; None means TASKYARD_JWT_SECRET."""
    if chosen:
        if chosen not in secrets:
            raise KeyConfigError("TASKYARD_JWT_SIGNING_KID must name a kid of TASKYARD_JWT_SECRETS")
        return chosen
    if len(secrets) == 1:
        return next(iter(secrets))
    if secrets:
        raise KeyConfigError(
            "TASKYARD_JWT_SECRETS has several keys: name the signing one in"
            " TASKYARD_JWT_SIGNING_KID"
        )
    return None


class JwksSource:
    """Public keys from a JWKS document at an http(s) URL or in a file.

    Fetched with aiohttp (already taskyard's HTTP client) rather than `jwt.PyJWKClient`, whose
    blocking urllib call would stall the event loop, and every request with it, for as long
    as the JWKS server takes to answer."""

    def __init__(
        self,
        location: str,
        *,
        min_refetch_s: float,
        max_age_s: float = JWKS_MAX_AGE_S,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.location = location
        self.min_refetch_s = min_refetch_s
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self._clock = clock
        self.keys: dict[str, VerificationKey] = {}
        self.fetches = 0  # attempts, failed ones too
        self.generation = 0  # +1 each time the key set changes
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()

    def is_stale(self) -> bool:
        """Last fetched (or tried) over `max_age_s` ago."""
        return self._last_attempt is not None and (
            self._clock() - self._last_attempt >= self.max_age_s
        )

    def may_refetch(self) -> bool:
        return self._last_attempt is None or (
            self._clock() - self._last_attempt >= self.min_refetch_s
        )

    async def refresh(self) -> bool:
        """Fetch the keys again unless that was tried within `min_refetch_s`. Callers arriving
        while a fetch is under way wait for it instead of starting their own. Returns whether
        the key set changed. A failed fetch keeps the keys known so far."""
        async with self._lock:
            if not self.may_refetch():
                return False
            self._last_attempt = self._clock()
            self.fetches += 1
            try:
                keys = parse_jwks(await self._load())
            except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("JWKS %s not loaded: %s", self.location, type(exc).__name__)
                return False
            changed = keys.keys() != self.keys.keys() or any(
                keys[kid] != self.keys[kid] for kid in keys
            )
            self.keys = keys
            if changed:
                self.generation += 1
            return changed

    async def _load(self) -> bytes:
        if not self.location.startswith(("http://", "https://")):
            path = Path(self.location.removeprefix("file://"))
            return await asyncio.to_thread(path.read_bytes)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self.location, allow_redirects=False) as response,
        ):
            response.raise_for_status()
            body = await response.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("JWKS document too large")
            return body


def parse_jwks(raw: bytes) -> dict[str, VerificationKey]:
    """The usable signing keys of a JWKS document by kid: RS256 or ES256, with a `kid`.
    Others (symmetric `oct` keys, encryption keys, other algorithms) are skipped."""
    document = json.loads(raw)
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("a JWKS document is an object with a `keys` array")
    keys: dict[str, VerificationKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        try:
            jwk = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        if jwk.algorithm_name not in ASYMMETRIC_ALGORITHMS:
            continue
        key = jwk.key
        if hasattr(key, "public_key"):  # a JWK with private parts: only its public half
            key = key.public_key()
        keys[kid] = VerificationKey(key, jwk.algorithm_name)
    return keys


class KeyRing:
    """Every key taskyard checks tokens with, and the one it signs with."""

    def __init__(
        self,
        *,
        secret: str = "",
        secrets: Mapping[str, str] | None = None,
        signing_kid: str | None = None,
        jwks: JwksSource | None = None,
    ) -> None:
        self._unnamed = VerificationKey(secret, HS256) if secret else None
        self._named = {kid: VerificationKey(s, HS256) for kid, s in (secrets or {}).items()}
        self.jwks = jwks
        if signing_kid is not None:
            self.signing = SigningKey((secrets or {})[signing_kid], signing_kid)
        elif secret:
            self.signing = SigningKey(secret)
        else:
            raise KeyConfigError("no key to sign with: set TASKYARD_JWT_SECRET(S)")

    def lookup(self, kid: str | None) -> VerificationKey | None:
        """The key a token with this `kid` header is checked with (None: no such key). Named
        HS256 secrets win over JWKS keys of the same kid."""
        if kid is None:
            return self._unnamed
        named = self._named.get(kid)
        if named is not None:
            return named
        return self.jwks.keys.get(kid) if self.jwks is not None else None
