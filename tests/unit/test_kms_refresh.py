"""kms.py's background refresher on retry.py's loop: a failed refresh is retried with backoff
(never further apart than refresh_interval) until one succeeds, and close() ends it at once,
even while it is failing. The KMS is an httpx.MockTransport: nothing listens."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from support import wait_for

from cdc_daemon.kms import KmsKey, KmsSource


class FakeKms:
    """Answers with `keys` in turn; a None answers 503. Counts requests."""

    def __init__(self, answers: list[str | None]) -> None:
        self.answers = answers
        self.requests = 0
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            answer = self.answers[min(self.requests, len(self.answers) - 1)]
            self.requests += 1
        if answer is None:
            return httpx.Response(503)
        return httpx.Response(200, json={"api_key": answer})


class Clock:
    """The key source's clock, moved by the test: the key falls due when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def key_source(tmp_path: Path, kms: FakeKms, interval: float,
               clock: Callable[[], float] = time.monotonic) -> KmsKey:
    token = tmp_path / "token"
    token.write_text("a-token")
    source = KmsSource("http://kms.invalid", "svc", token, interval, name="test.kms")
    return KmsKey(source, timeout=1, transport=httpx.MockTransport(kms), clock=clock)


def test_failed_refreshes_are_retried_until_one_succeeds(tmp_path: Path) -> None:
    kms = FakeKms(["key-1", None, None, "key-2"])
    clock = Clock()
    keys = key_source(tmp_path, kms, interval=0.05, clock=clock)
    try:
        assert keys() == "key-1"
        clock.now += 0.05  # due: refreshed, each failure retried (at most 0.05 s later)
        wait_for(lambda: keys() == "key-2", 10, message="the refreshed key")
        # The clock stands still, so no other refresh falls due and the counts are final.
        assert keys.stats().fetches == {
            ("start", "ok"): 1,
            ("interval", "error"): 2,
            ("interval", "ok"): 1,
        }
        assert keys.stats().kms_up is True
    finally:
        keys.close()


def test_close_ends_a_failing_refresher_at_once(tmp_path: Path) -> None:
    kms = FakeKms(["key-1", None])
    keys = key_source(tmp_path, kms, interval=0.05)
    assert keys() == "key-1"
    wait_for(lambda: kms.requests >= 3, 10, message="refreshes failing")  # failing, retried
    refresher = keys._refresher
    assert refresher is not None and refresher.is_alive()
    started = time.monotonic()
    keys.close()
    assert time.monotonic() - started < 2
    assert not refresher.is_alive()  # so no request follows the close
    assert keys() == "key-1"  # the last good key stays
