"""JwtVerifier and the jwt config without a server: HS256 secrets, JWKS files, key/algorithm
fits, and the config's refusals (none, mixed families, a public key as an HMAC secret)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cdc_daemon.auth import JwtVerifier, Unauthorized
from cdc_daemon.config import JwtConfig, parse_config
from cdc_daemon.errors import ConfigError
from cdc_daemon.wiring import jwt_verifier
from security.helpers import Keys, claims, raw_token

SECRET = "s" * 40


def hs_verifier(**overrides: Any) -> JwtVerifier:
    config = JwtConfig(algorithms=["HS256"], secret_env="CDC_JWT", **overrides)
    return jwt_verifier(config, {"CDC_JWT": SECRET})


def test_hs256_tokens() -> None:
    verifier = hs_verifier(roles_claim="realm_access.roles")
    token = jwt.encode(claims(None, realm_access={"roles": ["operator", 7]}), SECRET, "HS256")
    principal = verifier.verify(token)
    assert principal.subject == "alice" and principal.roles == {"operator"}
    keys = Keys()
    for hostile in (
        jwt.encode(claims(["admin"]), keys.private, algorithm="RS256"),  # not in the allow-list
        jwt.encode(claims(["admin"]), "another secret of 32+ bytes......", "HS256"),
        raw_token({"alg": "none"}, claims(["admin"]), None),
        jwt.encode(claims(["admin"], exp=None), SECRET, "HS256"),
        jwt.encode(claims(["admin"], exp=int(time.time()) - 31), SECRET, "HS256"),
    ):
        with pytest.raises(Unauthorized):
            verifier.verify(hostile)


def test_hs_secret_must_be_set_and_long() -> None:
    config = JwtConfig(algorithms=["HS256"], secret_env="CDC_JWT")
    with pytest.raises(ConfigError, match=r"admin\.jwt\.secret_env: .*CDC_JWT is not set"):
        jwt_verifier(config, {})
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        jwt_verifier(config, {"CDC_JWT": "short"})


@pytest.mark.parametrize(("jwt_config", "message"), [
    ({"algorithms": ["none"], "secret_env": "X"}, "'none' is never accepted"),
    ({"algorithms": ["HS256", "RS256"], "public_key_file": "k.pem"}, "cannot be mixed"),
    ({"algorithms": ["RS256"], "secret_env": "X"}, "need public_key_file or jwks_file"),
    ({"algorithms": ["HS256"], "public_key_file": "k.pem"}, "need secret_env"),
    ({"algorithms": ["RS256"]}, "exactly one of"),
    ({"algorithms": ["XX1"], "secret_env": "X"}, "unknown algorithm"),
])
def test_jwt_config_refusals(jwt_config: dict[str, Any], message: str) -> None:
    raw = {"database": "a.db", "typesense": {"nodes": ["http://x:1"], "api_key": "k"},
           "tables": [{"table": "t"}], "admin": {"listen": "127.0.0.1:1", "jwt": jwt_config}}
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(raw, Path("."), "cdc.yaml")
    assert "admin.jwt" in str(caught.value)


def test_public_key_must_fit_the_algorithms(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "ec.pem").write_bytes(pem)
    with pytest.raises(ConfigError, match="cannot verify"):
        jwt_verifier(
            JwtConfig(algorithms=["RS256"], public_key_file=tmp_path / "ec.pem")
        )
    verifier = jwt_verifier(
        JwtConfig(algorithms=["ES256"], public_key_file=tmp_path / "ec.pem")
    )
    assert verifier.verify(jwt.encode(claims(["viewer"]), ec_key, "ES256")).roles == {"viewer"}
    # The PEM text as an HMAC secret gets nowhere, even with HS256 listed elsewhere.
    with pytest.raises(Unauthorized):
        verifier.verify(raw_token({"alg": "HS256"}, claims(["admin"]), pem))


def test_jwks_file(tmp_path: Path) -> None:
    one, two = Keys(), Keys()
    jwks = {"keys": [
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(one.private.public_key())), "kid": "one"},
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(two.private.public_key())), "kid": "two"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},  # a symmetric key in a set: never used
    ]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    verifier = jwt_verifier(
        JwtConfig(algorithms=["RS256"], jwks_file=tmp_path / "jwks.json")
    )
    token = jwt.encode(claims(["admin"], sub="k2"), two.private, "RS256", headers={"kid": "two"})
    assert verifier.verify(token).subject == "k2"
    for hostile in (
        jwt.encode(claims(["admin"]), two.private, "RS256", headers={"kid": "one"}),
        jwt.encode(claims(["admin"]), two.private, "RS256"),  # no kid, two keys
        raw_token({"alg": "HS256", "kid": "sym"}, claims(["admin"]), b"secret"),
    ):
        with pytest.raises(Unauthorized):
            verifier.verify(hostile)
