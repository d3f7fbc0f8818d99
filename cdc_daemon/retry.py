"""The one retry layer: tenacity's exponential backoff with jitter, capped. Nothing else retries."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    wait_exponential_jitter,
)

from cdc_daemon.errors import CdcError

T = TypeVar("T")
log = structlog.get_logger("cdc_daemon.retry")


def backoff_delay(attempt: int, initial: float = 0.2, cap: float = 30.0) -> float:
    """Seconds to wait before try number `attempt + 1` (attempt counts from 1)."""
    wait = wait_exponential_jitter(multiplier=initial, max=cap, jitter=initial)
    state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = max(1, attempt)
    return float(wait(state))


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, CdcError) and exc.retryable


def call_with_retry(
    what: str,
    fn: Callable[[], T],
    stop: threading.Event,
    cap: float = 30.0,
    on_retry: Callable[[BaseException], None] | None = None,
    sleep: Callable[[float], object] | None = None,
) -> T:
    """Call `fn` until it succeeds, retrying retryable CdcErrors with backoff until `stop` is set.

    A non-retryable error, or `stop` being set, re-raises the last error. `sleep` waits between
    tries (default: `stop.wait`; the daemon passes one that keeps the systemd watchdog fed).
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("retrying", what=what, attempt=state.attempt_number, error=str(exc))
        if on_retry is not None and exc is not None:
            on_retry(exc)

    retrying = Retrying(
        retry=retry_if_exception(_retryable),
        wait=wait_exponential_jitter(multiplier=0.2, max=cap, jitter=0.2),
        stop=lambda _state: stop.is_set(),
        sleep=sleep or stop.wait,  # type: ignore[arg-type]  # its result is ignored
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)
