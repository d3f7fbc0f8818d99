"""JWT bearer tokens for the admin API: verification (PyJWT) and roles. No HTTP here.

Rules (docs/security.md; the root turns `admin.jwt` into `TokenRules` and a key):
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cdc_daemon.errors import ConfigError
from cdc_daemon.logs import register_secret
from cdc_daemon.permissions import cannot_read

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


@dataclass(frozen=True)
class TokenRules:
    """What a token must be besides well signed: one of `algorithms`, from `issuer` and for
    `audience` when they are set; its roles are in the claim `roles_claim`."""

    algorithms: tuple[str, ...]
    issuer: str | None = None
    audience: str | None = None
    roles_claim: str = "roles"


class JwtVerifier:
    """Checks bearer tokens against one set of rules and one key: an HMAC `secret`, a
    `public_key` object, or `jwks` (kid → public key object). Read-only once built: admin
    requests use it from any thread."""

    def __init__(
        self,
        rules: TokenRules,
        secret: bytes | None = None,
        public_key: Any = None,
        jwks: Mapping[str, Any] | None = None,
    ) -> None:
        self.rules = rules
        self.algorithms = list(rules.algorithms)
        self._secret = secret
        self._public_key = public_key
        self._jwks = dict(jwks or {})  # kid → public key object

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
        rules = self.rules
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=rules.audience,
                issuer=rules.issuer,
                leeway=LEEWAY,
                options={
                    "require": ["exp"],
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": rules.audience is not None,
                    "verify_iss": rules.issuer is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(_reason(exc)) from None
        subject = claims.get("sub")
        return Principal(
            subject=str(subject)[:200] if subject is not None else "",
            roles=frozenset(_roles(claims, rules.roles_claim)),
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


# -- the keys: ConfigError names the key relative to the jwt section (the root adds its path) --


def hmac_secret(variable: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The HMAC secret in environment variable `variable` (`secret_env`)."""
    value = (os.environ if environ is None else environ).get(variable, "")
    if not value:
        raise ConfigError(f"environment variable {variable} is not set", key="secret_env")
    if len(value.encode()) < MIN_HMAC_SECRET:
        raise ConfigError(
            f"the secret in {variable} is shorter than {MIN_HMAC_SECRET} bytes", key="secret_env"
        )
    register_secret(value)
    return value.encode()


def load_public_key(path: Path, algorithms: Sequence[str]) -> Any:
    """The PEM public key in `path` (`public_key_file`), which must fit one of `algorithms`."""
    key = _load_pem(path)
    if not _algorithms_for(key) & set(algorithms):
        raise ConfigError(
            f"a {type(key).__name__} cannot verify {list(algorithms)}", key="public_key_file"
        )
    return key


def _load_pem(path: Path) -> Any:
    where = "public_key_file"
    try:
        data = path.read_bytes()
    except PermissionError:
        raise ConfigError(cannot_read(path), key=where) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=where) from None
    try:
        return load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{path} is not a PEM public key (an HMAC secret goes in secret_env)", key=where
        ) from None


def load_jwks(path: Path, algorithms: Sequence[str]) -> dict[str, Any]:
    """kid → public key object from the JWKS in `path` (`jwks_file`); keys for other
    algorithms (and symmetric keys) are left out."""
    where = "jwks_file"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        keys = jwt.PyJWKSet.from_dict(data).keys
    except PermissionError:
        raise ConfigError(cannot_read(path), key=where) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=where) from None
    except (ValueError, UnicodeDecodeError, jwt.PyJWTError) as exc:
        raise ConfigError(f"{path} is not a usable JWKS: {exc}", key=where) from None
    usable: dict[str, Any] = {}
    for i, jwk in enumerate(keys):
        if jwk.key_type == "oct" or not _algorithms_for(jwk.key) & set(algorithms):
            continue  # never a symmetric key from a key *set*; never an algorithm not allowed
        usable[jwk.key_id or f"#{i}"] = jwk.key
    if not usable:
        raise ConfigError(f"{path} has no public key for {list(algorithms)}", key=where)
    return usable

