"""Keys over HTTP, against the app in-process (`tests.inprocess`): two HS256 secrets by `kid`
beside the seed's shared one, a JWKS served by a real HTTP server on 127.0.0.1, a required `iss`
and `aud`, `taskyard token` (the command, run as a process) signing with the signing kid;
`taskyard serve` in production refusing a short secret of any kid."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.inprocess import InProcessYard
from tests.jwks import JwksServer, hmac_token, jwk, jwks_document
from tests.support import SECRET, bearer, clean_env, wait_for

OLD, NEW = "old-" + "o" * 40, "new-" + "n" * 40
KEYS_ENV = {"TASKYARD_JWT_SECRETS": f"k1:{OLD},k2:{NEW}", "TASKYARD_JWT_SIGNING_KID": "k2"}
ISSUER, AUDIENCE = "https://idp.test", "taskyard-test"
REFETCH_MIN_S = 1.0
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    server.document = jwks_document(jwk(RSA_KEY.public_key(), "rsa-1"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def yard(jwks_server: JwksServer) -> Iterator[InProcessYard]:
    settings: dict[str, Any] = {
        "jwt_secrets": KEYS_ENV["TASKYARD_JWT_SECRETS"],
        "jwt_signing_kid": "k2",
        "jwks_url": jwks_server.url,
        "jwks_refetch_min_s": REFETCH_MIN_S,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
    }
    with InProcessYard(**settings) as node:  # jwt_secret=SECRET as well
        yield node


def claims(**extra: Any) -> dict[str, Any]:
    return {
        "sub": "ops",
        "roles": ["admin"],
        "exp": int(time.time()) + 600,
        "iss": ISSUER,
        "aud": AUDIENCE,
        **extra,
    }


def status(yard: InProcessYard, tok: str) -> int:
    return yard.http.get(f"{yard.url}/api/servers", headers=bearer(tok)).status_code


def test_every_hs256_secret_is_accepted_by_its_kid_and_the_shared_one_without(
    yard: InProcessYard,
) -> None:
    assert status(yard, jwt.encode(claims(), OLD, "HS256", headers={"kid": "k1"})) == 200
    assert status(yard, jwt.encode(claims(), NEW, "HS256", headers={"kid": "k2"})) == 200
    assert status(yard, jwt.encode(claims(), SECRET, "HS256")) == 200  # seed style: no kid
    assert status(yard, jwt.encode(claims(), OLD, "HS256", headers={"kid": "k2"})) == 401
    assert status(yard, jwt.encode(claims(), NEW, "HS256")) == 401


def test_issuer_and_audience_are_enforced(yard: InProcessYard) -> None:
    assert status(yard, jwt.encode(claims(), NEW, "HS256", headers={"kid": "k2"})) == 200
    for wrong in ({"iss": "https://evil.test"}, {"aud": "someone-else"}):
        assert status(yard, jwt.encode(claims(**wrong), NEW, "HS256", headers={"kid": "k2"})) == 401
    bare = {"sub": "ops", "roles": ["admin"], "exp": int(time.time()) + 600}
    assert status(yard, jwt.encode(bare, NEW, "HS256", headers={"kid": "k2"})) == 401


def test_rs256_from_the_jwks_is_accepted_and_the_hs256_confusion_is_not(
    yard: InProcessYard,
) -> None:
    rs = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    assert status(yard, rs) == 200
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = hmac_token(pem, {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims())
    assert status(yard, forged) == 401


def test_a_new_jwks_key_is_fetched_on_its_first_token_and_a_flood_of_kids_is_rate_limited(
    yard: InProcessYard, jwks_server: JwksServer
) -> None:
    jwks_server.document = jwks_document(
        jwk(RSA_KEY.public_key(), "rsa-1"), jwk(EC_KEY.public_key(), "ec-2")
    )
    es = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "ec-2"})
    # Refused until the refetch interval since the last fetch has passed, then fetched and good.
    wait_for(lambda: status(yard, es) == 200, interval=0.2, what="ec-2 fetched")

    before, started = jwks_server.fetches, time.monotonic()
    for _ in range(30):
        bogus = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": uuid.uuid4().hex})
        assert status(yard, bogus) == 401
    elapsed = time.monotonic() - started
    assert jwks_server.fetches - before <= 1 + elapsed / REFETCH_MIN_S


def test_token_command_signs_with_the_signing_kid(yard: InProcessYard, tmp_path: Path) -> None:
    env = clean_env(
        **KEYS_ENV,
        TASKYARD_JWT_ISSUER=ISSUER,
        TASKYARD_JWT_AUDIENCE=AUDIENCE,
        XDG_CONFIG_HOME=str(tmp_path),
    )
    done = subprocess.run(
        [sys.executable, "-m", "taskyard", "token", "--role", "admin", "--sub", "ops"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    tok = done.stdout.strip()
    assert jwt.get_unverified_header(tok)["kid"] == "k2"
    assert "kid 'k2'" in done.stderr and NEW not in done.stderr
    assert status(yard, tok) == 200


def test_production_refuses_a_short_secret_under_any_kid(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taskyard", "serve"],
        cwd=tmp_path,
        env=clean_env(
            TASKYARD_ENV="production",
            TASKYARD_JWT_SECRETS=f"k1:tiny-secret,k2:{NEW}",
            TASKYARD_JWT_SIGNING_KID="k2",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert "'k1'" in done.stderr and "tiny-secret" not in done.stderr
