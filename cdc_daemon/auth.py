"""JWT bearer tokens for the admin API: verification (PyJWT) and roles. No HTTP here.

Rules (docs/security.md):
- the token's `alg` must be in `admin.jwt.algorithms`; `none` is never accepted, and HS* and
  public-key algorithms never share one config (config.py refuses it), so a public key can never
  be used as an HMAC secret. Public keys are handed to PyJWT as key objects, never as bytes.
- `exp` is required; `exp`, `nbf` and `iat` are checked with a leeway of 30 s.
- `iss` and `aud` are checked when `issuer` / `audience` are configured.
- roles come from `roles_claim` (a dotted path such as `realm_access.roles` also works): a list
  of strings; anything else means no role.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cdc_daemon.config import JwtConfig
from cdc_daemon.errors import ConfigError
from cdc_daemon.logs import register_secret
from cdc_daemon.permissions import not_readable

LEEWAY = 30.0  # seconds, for exp / nbf / iat
MIN_HMAC_SECRET = 32  # bytes (RFC 7518 3.2: at least the hash size for HS256)


class Unauthorized(Exception):
    """No token, or one that is not valid: HTTP 401. The message never contains the token."""


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[str]

    def has_any(self, roles: set[str] | frozenset[str]) -> bool:
        return bool(self.roles & roles)


def _algorithms_for(key: Any) -> set[str]:
    """Which algorithms a public key can verify (an RSA key never an ES or HS token)."""
    if isinstance(key, rsa.RSAPublicKey):
        return {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {{"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(
            key.curve.name, ""
        )} - {""}
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return {"EdDSA"}
    return set()


class JwtVerifier:
    """Checks bearer tokens against one config; build it with `from_config`."""

    def __init__(
        self,
        config: JwtConfig,
        secret: bytes | None = None,
        public_key: Any = None,
        jwks: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.algorithms = list(config.algorithms)
        self._secret = secret
        self._public_key = public_key
        self._jwks = dict(jwks or {})  # kid → public key object

    @classmethod
    def from_config(
        cls, config: JwtConfig, environ: Mapping[str, str] | None = None
    ) -> JwtVerifier:
        """Read the secret or the public key(s) named by the config; ConfigError names the key."""
        env = os.environ if environ is None else environ
        if config.secret_env is not None:
            value = env.get(config.secret_env, "")
            if not value:
                raise ConfigError(
                    f"admin.jwt.secret_env: environment variable {config.secret_env} is not set"
                )
            if len(value.encode()) < MIN_HMAC_SECRET:
                raise ConfigError(
                    f"admin.jwt.secret_env: the secret in {config.secret_env} is shorter than"
                    f" {MIN_HMAC_SECRET} bytes"
                )
            register_secret(value)
            return cls(config, secret=value.encode())
        if config.public_key_file is not None:
            key = _load_pem(config.public_key_file)
            usable = _algorithms_for(key) & set(config.algorithms)
            if not usable:
                raise ConfigError(
                    f"admin.jwt.public_key_file: a {type(key).__name__} cannot verify"
                    f" {config.algorithms}"
                )
            return cls(config, public_key=key)
        assert config.jwks_file is not None  # config.py: exactly one source
        return cls(config, jwks=_load_jwks(config.jwks_file, config.algorithms))

    def _key_for(self, header: Mapping[str, Any], alg: str) -> Any:
        if self._secret is not None:
            return self._secret
        if self._public_key is not None:
            key = self._public_key
        else:
            kid = header.get("kid")
            if kid is None and len(self._jwks) == 1:
                key = next(iter(self._jwks.values()))
            elif isinstance(kid, str) and kid in self._jwks:
                key = self._jwks[kid]
            else:
                raise Unauthorized("unknown key id (kid)")
        if alg not in _algorithms_for(key):
            raise Unauthorized(f"algorithm {alg} does not fit the key")
        return key

    def verify(self, token: str) -> Principal:
        """The token's subject and roles; Unauthorized for anything that is not a valid token."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Unauthorized(f"algorithm {str(alg)[:20]!r} is not allowed")
        key = self._key_for(header, alg)
        config = self.config
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=config.audience,
                issuer=config.issuer,
                leeway=LEEWAY,
                options={
                    "require": ["exp"],
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": config.audience is not None,
                    "verify_iss": config.issuer is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(_reason(exc)) from None
        subject = claims.get("sub")
        return Principal(
            subject=str(subject)[:200] if subject is not None else "",
            roles=frozenset(_roles(claims, config.roles_claim)),
        )


def _reason(exc: jwt.PyJWTError) -> str:
    """A short reason for the 401 body and the log; never the token itself."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token has no {exc.claim!r} claim"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not valid yet (nbf)"
    if isinstance(exc, jwt.InvalidIssuedAtError):
        return "token issued in the future (iat)"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    return f"invalid token ({type(exc).__name__})"


def _roles(claims: Mapping[str, Any], claim: str) -> list[str]:
    value: Any = claims.get(claim)
    if value is None and "." in claim:
        value = claims
        for part in claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    if not isinstance(value, list):
        return []
    return [role for role in value if isinstance(role, str)]


def _load_pem(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except PermissionError:
        raise ConfigError(not_readable(path, "admin.jwt.public_key_file")) from None
    except OSError as exc:
        reason = exc.strerror
        raise ConfigError(f"admin.jwt.public_key_file: cannot read {path}: {reason}") from None
    try:
        return load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(
            f"admin.jwt.public_key_file: {path} is not a PEM public key"
            " (an HMAC secret goes in secret_env)"
        ) from None


def _load_jwks(path: Path, algorithms: list[str]) -> dict[str, Any]:
    """kid → public key object; keys for other algorithms (and symmetric keys) are left out."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        keys = jwt.PyJWKSet.from_dict(data).keys
    except PermissionError:
        raise ConfigError(not_readable(path, "admin.jwt.jwks_file")) from None
    except OSError as exc:
        raise ConfigError(f"admin.jwt.jwks_file: cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError, jwt.PyJWTError) as exc:
        raise ConfigError(f"admin.jwt.jwks_file: {path} is not a usable JWKS: {exc}") from None
    usable: dict[str, Any] = {}
    for i, jwk in enumerate(keys):
        if jwk.key_type == "oct" or not _algorithms_for(jwk.key) & set(algorithms):
            continue  # never a symmetric key from a key *set*; never an algorithm not allowed
        usable[jwk.key_id or f"#{i}"] = jwk.key
    if not usable:
        raise ConfigError(f"admin.jwt.jwks_file: {path} has no public key for {algorithms}")
    return usable

