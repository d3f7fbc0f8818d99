"""The Typesense API key: a static one from the config, or one fetched from a KMS and rotated.

KMS protocol (docs/security.md): `GET {url}/keys/{key_name}` with `Authorization: Bearer <token>`
(the token file is read again for every fetch, its surrounding whitespace ignored) answers
`{"api_key": "..."}`. The key is fetched on first use (the daemon asks for it at start, retried
with backoff while the KMS is unreachable), again every `refresh_interval` by a background thread,
and at once when Typesense refuses it (401/403): `rejected(key)` is single-flight, so a burst of
refusals of one key costs one fetch, and a refusal of a key that was already replaced costs none
(callers that fail again later each ask again; the loop's backoff paces them).
While a refresh fails the last good key stays in use. Keys and tokens are registered with
`logs.register_secret` before anything could print them; no message here contains them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import httpx
import structlog

from cdc_daemon import turns
from cdc_daemon.errors import KmsUnavailable
from cdc_daemon.logs import register_secret
from cdc_daemon.retry import call_with_retry
from cdc_daemon.secret_files import read_secret_file

log = structlog.get_logger("cdc_daemon.kms")

KMS_TIMEOUT = 10.0  # seconds per KMS request (at most typesense.timeout)
RETRY_CAP = 60.0  # seconds: the longest wait between background refresh attempts that fail


@dataclass
class KeyStats:
    """For metrics: fetches by (reason, result), and the state of the key in use."""

    source: str  # "static" or "kms"
    fetches: dict[tuple[str, str], int] = field(default_factory=dict)
    kms_up: bool | None = None  # did the last fetch succeed? None: no fetch yet (or static)
    key_age: float | None = None  # seconds since the key in use was fetched


class ApiKeys(Protocol):
    """What the sink and the daemon need from a key source."""

    def __call__(self) -> str: ...

    def ready(self) -> None:
        """Have a key (fetch it now if needed); KmsUnavailable when it can't."""

    def rejected(self, key: str) -> None:
        """Typesense refused `key`: get a new one if that is possible."""

    def stats(self) -> KeyStats: ...

    def close(self) -> None: ...


class StaticKey:
    """`api_key`, `api_key_env` or `api_key_file`: read once, never rotated by us."""

    def __init__(self, key: str) -> None:
        register_secret(key)
        self._key = key

    def __call__(self) -> str:
        return self._key

    def ready(self) -> None:
        return None

    def rejected(self, key: str) -> None:
        return None  # nothing to fetch: the loop backs off and reports the AuthError

    def stats(self) -> KeyStats:
        return KeyStats(source="static")

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class KmsSource:
    """Where a KMS key comes from. `name` is what messages call this source: the root passes
    its config key path (`typesense.kms`), and messages name this source's own keys below it
    (`typesense.kms.token_file`), so that an error points at what to fix. Not a ConfigError
    wrapped by the root: it is raised on fetches, long after start (the refresher thread)."""

    url: str
    key_name: str
    token_file: Path
    refresh_interval: float  # seconds
    name: str


class KmsKey:
    """A key from a KMS, refreshed every `refresh_interval` and when Typesense refuses it.
    Any thread may call it: fetches are serialized by one lock."""

    def __init__(
        self,
        source: KmsSource,
        timeout: float = KMS_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.url = f"{source.url.rstrip('/')}/keys/{quote(source.key_name, safe='')}"
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
            transport=transport,
            follow_redirects=False,
        )
        self._clock = clock
        self._lock = threading.Lock()  # one fetch at a time (single flight)
        self._key: str | None = None
        self._fetched_at = float("-inf")
        self._fetches: dict[tuple[str, str], int] = {}
        self._up: bool | None = None
        self._closed = threading.Event()
        self._refresher: threading.Thread | None = None

    # -- what the sink calls ----------------------------------------------------------------

    def __call__(self) -> str:
        key = self._key
        if key is None:
            # The turn (a fleet's, turns.py) is given up before the lock: its holder may want it.
            with turns.waiting(), self._lock:
                key = self._key if self._key is not None else self._fetch("start")
        return key

    def ready(self) -> None:
        self()

    def rejected(self, key: str) -> None:
        """Typesense answered 401/403 to a request made with `key`: fetch once, whoever asks."""
        refused_at = self._clock()
        with turns.waiting(), self._lock:  # as __call__
            if key != self._key:
                return  # already replaced since that request was made
            if self._fetched_at >= refused_at:
                return  # another caller fetched while this one waited: single flight
            log.warning("typesense refused the api key; fetching it again", kms=self.url)
            with contextlib.suppress(KmsUnavailable):  # logged and counted; the caller retries
                self._fetch("rejected")

    def stats(self) -> KeyStats:
        age = self._clock() - self._fetched_at if self._key is not None else None
        return KeyStats(source="kms", fetches=dict(self._fetches), kms_up=self._up, key_age=age)

    def close(self) -> None:
        self._closed.set()
        if self._refresher is not None and self._refresher is not threading.current_thread():
            self._refresher.join(timeout=KMS_TIMEOUT + 1)
        self._client.close()

    # -- fetching ---------------------------------------------------------------------------

    def refresh(self, reason: str = "interval") -> str:
        with self._lock:
            return self._fetch(reason)

    def _fetch(self, reason: str) -> str:
        """One GET; call with the lock held. Keeps the old key when it fails."""
        try:
            key = self._get()
        except KmsUnavailable as exc:
            self._count(reason, "error")
            self._up = False
            log.warning("kms fetch failed", reason=reason, error=str(exc))
            raise
        self._count(reason, "ok")
        self._up = True
        changed = key != self._key
        self._key = key
        self._fetched_at = self._clock()
        log.info("api key fetched from the kms", kms=self.url, reason=reason, changed=changed)
        self._start_refresher()
        return key

    def _count(self, reason: str, result: str) -> None:
        self._fetches[(reason, result)] = self._fetches.get((reason, result), 0) + 1

    def _token(self) -> str:
        token = read_secret_file(
            self.source.token_file, f"{self.source.name}.token_file", KmsUnavailable
        )
        register_secret(token)
        return token

    def _get(self) -> str:
        token = self._token()
        where = f"{self.source.name}: {self.url}"
        try:
            response = self._client.get(self.url, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise KmsUnavailable(f"{where}: unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            # The body is not shown: a misbehaving KMS could echo the token or a key.
            raise KmsUnavailable(f"{where}: HTTP {response.status_code}")
        try:
            key = response.json().get("api_key")
        except (ValueError, AttributeError):
            raise KmsUnavailable(f"{where}: the answer is not a JSON object") from None
        if not isinstance(key, str) or not key.strip():
            raise KmsUnavailable(f"{where}: the answer has no api_key")
        key = key.strip()
        register_secret(key)
        return key

    # -- periodic refresh -------------------------------------------------------------------

    def _start_refresher(self) -> None:
        if self._refresher is None and not self._closed.is_set():
            self._refresher = threading.Thread(
                target=self._refresh_loop, name="cdc-kms-refresh", daemon=True
            )
            self._refresher.start()

    def _refresh_loop(self) -> None:
        """Until closed: wait until the key is due, then fetch it, a failed fetch retried with
        backoff (retry.py's loop, never longer apart than refresh_interval)."""
        interval = self.source.refresh_interval
        while not self._closed.wait(max(0.0, self._fetched_at + interval - self._clock())):
            with contextlib.suppress(KmsUnavailable):  # raised only once closed while failing
                call_with_retry(
                    "kms refresh", self._refresh_if_due, self._closed, cap=min(RETRY_CAP, interval)
                )

    def _refresh_if_due(self) -> None:
        with self._lock:
            due = self._fetched_at + self.source.refresh_interval
            if self._closed.is_set() or self._clock() < due:
                return  # closed, or refreshed meanwhile (a 401): wait for the new due time
            self._fetch("interval")
