"""Keys in process: several HS256 secrets by `kid`, a JWKS from a file and from a real HTTP
server on 127.0.0.1 (refetched on an unknown kid, rate limited), `iss`/`aud`/`nbf`/`iat`, and
the algorithm pinned per key."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from taskyard import auth, errors
from taskyard.clock import SystemClock
from taskyard.config import Settings
from taskyard.domain.coordinator import Coordinator
from taskyard.domain.registry import Registration
from taskyard.domain_config import coordinator_config
from taskyard.keys import JwksSource, KeyConfigError, KeyRing, SigningKey, parse_secrets
from taskyard.testing import MemoryStore
from tests.jwks import JwksServer, b64, hmac_token, jwk, jwks_document
from tests.unit.fakes import ScriptedBackend

OLD, NEW = "old-" + "o" * 40, "new-" + "n" * 40
LEGACY = "legacy-" + "l" * 40
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "roles": ["user"], "exp": int(time.time()) + 600, **extra}


def hs(secret: str, kid: str | None = None, **extra: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**extra), secret, algorithm="HS256", headers=headers)


# ---- HS256 secrets by kid --------------------------------------------------------------------


def test_secrets_format_parses_kids_and_keeps_colons_in_secrets() -> None:
    assert parse_secrets(" k1:abc , k2:x:y,") == {"k1": "abc", "k2": "x:y"}


@pytest.mark.parametrize("text", ["nokid", "k1:", "bad kid:s", "k1:a,k1:b", ":secret"])
def test_malformed_secrets_are_refused_without_echoing_the_secret(text: str) -> None:
    with pytest.raises(KeyConfigError) as caught:
        parse_secrets(text)
    assert "secret" not in str(caught.value).replace("kid:secret", "").replace("SECRETS", "")


def test_every_configured_secret_verifies_by_its_kid_and_kidless_tokens_use_the_shared_one() -> (
    None
):
    ring = KeyRing(secret=LEGACY, secrets={"k1": OLD, "k2": NEW}, signing_kid="k2")
    verifier = auth.TokenVerifier(ring)
    assert verifier.verify(hs(OLD, "k1")).sub == "alice"
    assert verifier.verify(hs(NEW, "k2")).sub == "alice"
    assert verifier.verify(hs(LEGACY)).sub == "alice"  # the seed's kind: no kid
    for wrong in (hs(OLD, "k2"), hs(NEW), hs(LEGACY, "k1")):
        with pytest.raises(errors.Unauthorized):
            verifier.verify(wrong)
    with pytest.raises(auth.UnknownKey):
        verifier.verify(hs(NEW, "k3"))


def test_kidless_token_is_refused_when_only_named_secrets_are_configured() -> None:
    verifier = auth.TokenVerifier(KeyRing(secrets={"k1": OLD}, signing_kid="k1"))
    with pytest.raises(errors.Unauthorized, match="without `kid`"):
        verifier.verify(hs(OLD))


def test_minting_with_the_signing_key_puts_its_kid_in_the_header() -> None:
    ring = KeyRing(secret=LEGACY, secrets={"k1": OLD, "k2": NEW}, signing_kid="k2")
    tok = auth.mint(ring.signing, sub="bob", roles=["admin"], ttl_s=60)
    assert jwt.get_unverified_header(tok)["kid"] == "k2"
    assert jwt.decode(tok, NEW, ["HS256"])["sub"] == "bob"
    assert "kid" not in jwt.get_unverified_header(auth.mint(LEGACY, sub="b", roles=[], ttl_s=9))


def test_settings_pick_the_signing_kid_and_refuse_an_ambiguous_or_unknown_one() -> None:
    two = f"k1:{OLD},k2:{NEW}"
    settings = Settings(jwt_secrets=two, jwt_signing_kid="k1")
    assert auth.keys_from(settings).signing == SigningKey(OLD, "k1")
    assert auth.keys_from(Settings(jwt_secrets=f"only:{NEW}")).signing.kid == "only"
    assert auth.keys_from(Settings(jwt_secret=LEGACY)).signing == SigningKey(LEGACY)
    for chosen in ("", "k9"):  # several keys and none named, or a kid that is not there
        with pytest.raises(ValueError, match="SIGNING_KID"):
            Settings(jwt_secrets=two, jwt_signing_kid=chosen)


def test_production_minimum_length_applies_to_every_secret() -> None:
    Settings(env="production", jwt_secrets=f"k1:{OLD},k2:{NEW}", jwt_signing_kid="k2")
    with pytest.raises(ValidationError) as caught:
        Settings(env="production", jwt_secrets=f"k1:tiny-value,k2:{NEW}", jwt_signing_kid="k2")
    message = caught.value.errors()[0]["msg"]  # what `taskyard serve` prints
    assert "'k1'" in message and "tiny-value" not in message
    with pytest.raises(ValidationError, match="TASKYARD_JWT_SECRET needs"):  # the shared one too
        Settings(env="production", jwt_secret="short", jwt_secrets=f"k2:{NEW}")


# ---- iss, aud, nbf, iat ----------------------------------------------------------------------


def test_issuer_and_audience_are_required_when_configured_and_minted_tokens_carry_them() -> None:
    policy = auth.TokenPolicy(issuer="https://idp.test", audience="taskyard")
    verifier = auth.TokenVerifier(LEGACY, policy=policy)
    assert verifier.verify(hs(LEGACY, iss="https://idp.test", aud="taskyard")).sub == "alice"
    for bad in (
        hs(LEGACY),
        hs(LEGACY, iss="https://evil.test", aud="taskyard"),
        hs(LEGACY, iss="https://idp.test", aud="other"),
        hs(LEGACY, iss="https://idp.test"),
    ):
        with pytest.raises(errors.Unauthorized):
            verifier.verify(bad)
    issuer = auth.JwtIssuer(LEGACY, policy=policy)
    assert verifier.verify(issuer.server_token("gpu-1", registration="r1")).registration == "r1"


def test_nbf_and_iat_in_the_future_are_refused_past_the_leeway() -> None:
    verifier = auth.TokenVerifier(LEGACY, policy=auth.TokenPolicy(leeway_s=30))
    now = int(time.time())
    assert verifier.verify(hs(LEGACY, nbf=now + 20, iat=now + 20)).sub == "alice"  # clock skew
    with pytest.raises(errors.Unauthorized, match="not valid yet"):
        verifier.verify(hs(LEGACY, nbf=now + 120))
    with pytest.raises(errors.Unauthorized, match="not valid yet"):
        verifier.verify(hs(LEGACY, iat=now + 120))


def test_expiry_leeway_is_the_configured_one() -> None:
    expired_20s_ago = hs(LEGACY, exp=int(time.time()) - 20)
    assert auth.verify(LEGACY, expired_20s_ago, auth.TokenPolicy(leeway_s=30)).sub == "alice"
    with pytest.raises(errors.Unauthorized, match="expired"):
        auth.verify(LEGACY, expired_20s_ago, auth.TokenPolicy(leeway_s=5))


# ---- algorithm pinned per key ----------------------------------------------------------------


def file_ring(tmp_path: Path, *entries: dict[str, Any]) -> KeyRing:
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks_document(*entries))
    return KeyRing(secret=LEGACY, jwks=JwksSource(str(path), min_refetch_s=30))


async def test_hs256_token_signed_with_the_rsa_public_key_is_refused(tmp_path: Path) -> None:
    """The classic confusion: the RSA public key (public, after all) used as an HMAC secret."""
    verifier = auth.TokenVerifier(file_ring(tmp_path, jwk(RSA_KEY.public_key(), "rsa-1")))
    await verifier.start()
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = hmac_token(pem, {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims())
    with pytest.raises(errors.Unauthorized, match="`alg` does not match"):
        verifier.verify(forged)
    # And an RS256 token naming no kid is not checked with the shared secret's algorithm.
    rs_without_kid = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    with pytest.raises(errors.Unauthorized):
        verifier.verify(rs_without_kid)


def test_alg_none_is_refused() -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps({**claims(), "roles": ["admin"]}).encode())
    with pytest.raises(errors.Unauthorized):
        auth.TokenVerifier(LEGACY).verify(f"{header}.{payload}.")


# ---- JWKS ------------------------------------------------------------------------------------


async def test_rs256_and_es256_tokens_verify_with_jwks_keys_from_a_file(tmp_path: Path) -> None:
    oct_key = {"kty": "oct", "k": b64(b"s" * 32), "kid": "sym", "alg": "HS256"}
    ring = file_ring(
        tmp_path, jwk(RSA_KEY.public_key(), "rsa-1"), jwk(EC_KEY.public_key(), "ec-1"), oct_key
    )
    verifier = auth.TokenVerifier(ring)
    await verifier.start()
    rs = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})
    assert verifier.verify(rs).sub == verifier.verify(es).sub == "alice"
    with pytest.raises(auth.UnknownKey):  # a symmetric key in a JWKS is never used
        verifier.verify(hs("s" * 32, "sym"))
    swapped = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "rsa-1"})
    with pytest.raises(errors.Unauthorized):
        verifier.verify(swapped)


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_unknown_kid_refetches_the_jwks_at_most_once_per_interval(
    jwks_server: JwksServer,
) -> None:
    clock = Clock()
    jwks = JwksSource(jwks_server.url, min_refetch_s=30, clock=clock)
    verifier = auth.TokenVerifier(KeyRing(secret=LEGACY, jwks=jwks))
    jwks_server.document = jwks_document(jwk(RSA_KEY.public_key(), "rsa-1"))
    await verifier.start()
    assert jwks_server.fetches == 1
    rs1 = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    assert (await verifier.verify_async(rs1)).sub == "alice"

    # The provider rotates: a token with the new kid makes taskyard fetch again, and passes.
    clock.now += 31
    jwks_server.document = jwks_document(
        jwk(RSA_KEY.public_key(), "rsa-1"), jwk(EC_KEY.public_key(), "ec-2")
    )
    es2 = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "ec-2"})
    assert (await verifier.verify_async(es2)).sub == "alice"
    assert jwks_server.fetches == 2

    # A flood of made-up kids within the interval: every one refused, no fetch at all.
    for _ in range(50):
        bogus = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": uuid.uuid4().hex})
        with pytest.raises(auth.UnknownKey):
            await verifier.verify_async(bogus)
    assert jwks_server.fetches == 2

    clock.now += 31  # past the interval: one more fetch is allowed
    with pytest.raises(auth.UnknownKey):
        await verifier.verify_async(bogus)
    assert jwks_server.fetches == 3


async def test_a_key_dropped_from_the_jwks_stops_working_once_the_keys_are_stale(
    jwks_server: JwksServer,
) -> None:
    clock = Clock()
    jwks = JwksSource(jwks_server.url, min_refetch_s=30, clock=clock)
    verifier = auth.TokenVerifier(KeyRing(secret=LEGACY, jwks=jwks))
    jwks_server.document = jwks_document(jwk(RSA_KEY.public_key(), "rsa-1"))
    await verifier.start()
    rs1 = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    assert verifier.verify(rs1).sub == "alice"  # now cached
    jwks_server.document = jwks_document(jwk(EC_KEY.public_key(), "ec-2"))
    clock.now += 299  # not stale yet: the cached token still passes, nothing fetched
    assert (await verifier.verify_async(rs1)).sub == "alice"
    assert jwks_server.fetches == 1
    clock.now += 2  # past JWKS_MAX_AGE_S: the next check fetches first, and rsa-1 is gone
    with pytest.raises(auth.UnknownKey):
        await verifier.verify_async(rs1)
    assert jwks_server.fetches == 2


async def test_an_unreachable_jwks_keeps_the_shared_secret_working(tmp_path: Path) -> None:
    verifier = auth.TokenVerifier(
        KeyRing(secret=LEGACY, jwks=JwksSource(str(tmp_path / "missing.json"), min_refetch_s=30))
    )
    await verifier.start()  # logs a warning, does not raise
    assert (await verifier.verify_async(hs(LEGACY))).sub == "alice"


# ---- server tokens die with their registration (in process, memory store) -------------------


def memory_coordinator() -> Coordinator:
    return Coordinator(
        store=MemoryStore(),
        client=ScriptedBackend(),
        tokens=auth.JwtIssuer(LEGACY),
        config=coordinator_config(Settings(public_url="http://yard.test"), "n1"),
        clock=SystemClock(),
    )


async def test_a_new_registration_or_a_delete_revokes_the_token_and_a_racing_heartbeat_too() -> (
    None
):
    yard = memory_coordinator()
    reg = Registration("gpu-1", "gpu-1", "test", "http://gpu-1.test/predict", None)
    server, first = await yard.fleet.register_server(reg)
    holder = auth.verify(LEGACY, first)
    await yard.fleet.check_registration(holder)  # current: accepted

    await yard.fleet.register_server(reg)  # registered again: the first token is dead
    with pytest.raises(errors.Unauthorized, match="revoked"):
        await yard.fleet.check_registration(holder)
    # A heartbeat of the old holder that raced the new registration renews only its own
    # (dead) registration, never the new one.
    current = await yard.fleet.get_server("gpu-1")
    renewed = auth.verify(LEGACY, yard.fleet.renewed_server_token(current, holder))
    assert renewed.registration == server.revision != current.revision

    newest = auth.verify(LEGACY, (await yard.fleet.register_server(reg))[1])
    await yard.fleet.delete_server("gpu-1")
    with pytest.raises(errors.Unauthorized, match="revoked"):
        await yard.fleet.check_registration(newest)
