"""The one retry layer: exponential backoff with jitter, capped. Nothing else retries.

`call_with_retry` is the loop (the daemon's start-up calls, `run --once`'s bounded tries, the
drainer of `backfill` / `verify --repair`, the KMS refresher); `backoff_delay` is its wait, also
used where a failure is backed off between the loop's own iterations rather than retried on the
spot (the daemon's batches, resyncs and sweeps, a key's next attempt in the change log, a
Typesense node's health).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import structlog
from tenacity import RetryCallState, Retrying, wait_exponential_jitter

from cdc_daemon.errors import CdcError, GaveUp

T = TypeVar("T")
log = structlog.get_logger("cdc_daemon.retry")


def backoff_delay(attempt: int, initial: float = 0.2, cap: float = 30.0) -> float:
    """Seconds to wait before try number `attempt + 1` (attempt counts from 1)."""
    wait = wait_exponential_jitter(multiplier=initial, max=cap, jitter=initial)
    state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = max(1, attempt)
    return float(wait(state))


def call_with_retry(
    what: str,
    fn: Callable[[], T],
    stop: threading.Event,
    *,
    cap: float = 30.0,
    max_tries: int | None = None,
    on_retry: Callable[[CdcError], None] | None = None,
    sleep: Callable[[float], object] | None = None,
    quiet: bool = False,
) -> T:
    """Call `fn` until it succeeds, retrying retryable CdcErrors with backoff.

    A non-retryable error, or `stop` set (before or during a wait), re-raises the last error;
    after `max_tries` failed tries, GaveUp. `on_retry` sees each retried error (metrics).
    `sleep` waits between tries (default: `stop.wait`; the daemon passes one that keeps the
    systemd watchdog fed). Each retry is logged ("retrying") unless `quiet`."""
    failures = 0
    while True:
        try:
            return fn()
        except CdcError as exc:
            if not exc.retryable or stop.is_set():
                raise
            failures += 1
            if on_retry is not None:
                on_retry(exc)
            if max_tries is not None and failures >= max_tries:
                raise GaveUp(f"{what}: gave up after {failures} tries: {exc}") from None
            delay = backoff_delay(failures, cap=cap)
            if not quiet:
                log.warning(
                    "retrying",
                    what=what,
                    attempt=failures,
                    error=str(exc),
                    retry_in_s=round(delay, 2),
                )
            (sleep or stop.wait)(delay)
            if stop.is_set():
                raise
