"""Token minting and checking."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from taskyard import auth, errors
from taskyard.config import default_of

SECRET = "s" * 40


def test_round_trip_keeps_bindings() -> None:
    """A minted callback token verifies with its server, task and attempt."""
    tok = auth.mint(
        SECRET, sub="server:b", roles=["service"], ttl_s=60, server_id="b", task_id="t", attempt=2
    )
    principal = auth.verify(SECRET, tok)
    assert principal.is_service and not principal.is_admin
    assert (principal.server_id, principal.task_id, principal.attempt) == ("b", "t", 2)


def test_plain_pyjwt_token_works() -> None:
    """A token from any HS256 library with `roles` and `exp` is accepted."""
    tok = jwt.encode({"sub": "a", "roles": ["admin"], "exp": time.time() + 60}, SECRET, "HS256")
    assert auth.verify(SECRET, tok).is_admin


def _unsigned(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


@pytest.mark.parametrize(
    "tok",
    [
        _unsigned({"sub": "a", "roles": ["admin"], "exp": int(time.time()) + 60}),
        jwt.encode({"sub": "a", "roles": ["admin"], "exp": time.time() + 60}, "x" * 40, "HS256"),
        jwt.encode({"sub": "a", "roles": ["admin"], "exp": time.time() - 60}, SECRET, "HS256"),
        jwt.encode({"sub": "a", "roles": ["admin"]}, SECRET, "HS256"),
        jwt.encode({"sub": "a", "roles": "admin", "exp": time.time() + 60}, SECRET, "HS256"),
        "not-a-token",
    ],
    ids=["alg-none", "wrong-key", "expired", "no-exp", "roles-not-array", "garbage"],
)
def test_bad_tokens_are_refused(tok: str) -> None:
    """alg none, a wrong key, expiry, a missing exp or a bad roles claim → Unauthorized."""
    with pytest.raises(errors.Unauthorized):
        auth.verify(SECRET, tok)


def test_issuer_server_token_claims() -> None:
    """The registration token: bound to its server, valid for TASKYARD_SERVER_TOKEN_TTL_S
    (its default when the issuer is given none), nothing more."""
    claims = jwt.decode(auth.JwtIssuer(SECRET).server_token("gpu-1"), SECRET, ["HS256"])
    assert claims.pop("exp") - claims.pop("iat") == default_of("server_token_ttl_s")
    assert claims == {"sub": "server:gpu-1", "roles": ["service"], "srv": "gpu-1"}


def test_issuer_callback_token_claims() -> None:
    """The per-attempt token: server, task and attempt, valid for the TTL given."""
    tok = auth.JwtIssuer(SECRET).callback_token(server_id="b", task_id="t", attempt=2, ttl_s=70.5)
    claims = jwt.decode(tok, SECRET, ["HS256"])
    assert claims.pop("exp") - claims.pop("iat") == 70
    assert claims == {"sub": "server:b", "roles": ["service"], "srv": "b", "tid": "t", "att": 2}
    assert auth.verify(SECRET, tok).attempt == 2
