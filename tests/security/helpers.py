"""Security test helpers: a real KMS-like HTTP server whose key can be switched, Typesense scoped
keys, and JWTs (well-formed and hostile) for the admin API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support import API_KEY

from cdc_daemon.localserver import LocalTypesense

# What the daemon's Typesense key needs (docs/security.md): collections (create, inspect, drop
# after a rebuild), documents (import, delete, export, get) and aliases (each collection is an
# alias to a versioned collection).
DAEMON_KEY_ACTIONS = ["collections:*", "documents:*", "aliases:*"]


class KmsServer:
    """`GET /keys/<name>` with `Authorization: Bearer <token>` → {"api_key": ...}, on a thread.

    `key` can be switched at any time; `requests` lists (name, authorized) per request;
    `status` forces an error answer (e.g. 503) while set."""

    def __init__(self, token: str, keys: dict[str, str], port: int = 0) -> None:
        self.token = token
        self.keys = dict(keys)
        self.status: int | None = None
        self.requests: list[tuple[str, bool]] = []
        self._lock = threading.Lock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self._port

    def set_key(self, name: str, key: str) -> None:
        with self._lock:
            self.keys[name] = key

    def count(self, name: str | None = None) -> int:
        with self._lock:
            return sum(1 for n, ok in self.requests if ok and (name is None or n == name))

    def start(self) -> KmsServer:
        kms = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.removeprefix("/keys/")
                authorized = self.headers.get("Authorization") == f"Bearer {kms.token}"
                with kms._lock:
                    kms.requests.append((name, authorized))
                    key = kms.keys.get(name)
                    forced = kms.status
                if forced is not None:
                    self._answer(forced, {"error": "forced"})
                elif not self.path.startswith("/keys/") or not authorized:
                    self._answer(401, {"error": "unauthorized"})
                elif key is None:
                    self._answer(404, {"error": "no such key"})
                else:
                    self._answer(200, {"api_key": key})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        # shutdown() waits for the serving loop's next look (0.5 s by default): look often.
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._port = self._server.server_address[1]
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)


def create_scoped_key(typesense: LocalTypesense, description: str) -> tuple[int, str]:
    """A Typesense key with only the actions the daemon needs: (id, value)."""
    response = httpx.post(
        f"{typesense.url}/keys",
        headers={"X-TYPESENSE-API-KEY": API_KEY},
        json={"description": description, "actions": DAEMON_KEY_ACTIONS, "collections": ["*"]},
        timeout=10,
    )
    response.raise_for_status()
    body = response.json()
    return int(body["id"]), str(body["value"])


def delete_key(typesense: LocalTypesense, key_id: int) -> None:
    response = httpx.delete(
        f"{typesense.url}/keys/{key_id}", headers={"X-TYPESENSE-API-KEY": API_KEY}, timeout=10
    )
    response.raise_for_status()


def key_works(typesense: LocalTypesense, key: str) -> bool:
    response = httpx.get(
        f"{typesense.url}/collections?limit=1", headers={"X-TYPESENSE-API-KEY": key}, timeout=10
    )
    return response.status_code == 200


# -- JWTs ------------------------------------------------------------------------------------


class Keys:
    """An RSA key pair for signing test tokens, and its public key as PEM."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def claims(roles: list[str] | None = None, sub: str = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 300}
    if roles is not None:
        body["roles"] = roles
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None}


def sign_rs256(keys: Keys, payload: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(payload, keys.private, algorithm="RS256", headers=headers or None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token built by hand (PyJWT refuses to make the hostile ones): HS256 over `secret`, or
    no signature at all when `secret` is None."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if secret is None:
        return signing_input + "."
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def tamper(token: str, **changes: Any) -> str:
    """The same signature over a changed payload."""
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(changes)
    return f"{header}.{_b64(json.dumps(body).encode())}.{signature}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def lines_of(text: str) -> Iterator[dict[str, Any]]:
    """The JSON log lines of a daemon's stderr (other lines are skipped)."""
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue
