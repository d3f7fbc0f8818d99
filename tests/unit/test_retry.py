"""retry.call_with_retry, the one retry loop (the daemon's start-up calls, `run --once`'s bound,
the drainer): what is retried, the bound, a stop during a wait. Waits are recorded, not slept."""

from __future__ import annotations

import threading

import pytest

from cdc_daemon.errors import CdcError, ConfigError, GaveUp, TargetUnavailable
from cdc_daemon.retry import call_with_retry


class Flaky:
    """Fails with `error` the first `failures` calls, then returns "done"."""

    def __init__(self, failures: int, error: CdcError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def test_retryable_errors_are_retried_with_growing_waits() -> None:
    waits: list[float] = []
    seen: list[CdcError] = []
    fn = Flaky(3, TargetUnavailable("typesense down"))
    result = call_with_retry("call", fn, threading.Event(), on_retry=seen.append,
                             sleep=waits.append)
    assert result == "done" and fn.calls == 4
    assert len(seen) == 3 and len(waits) == 3
    assert waits[0] < waits[2] <= 30.0


def test_an_error_that_waiting_does_not_fix_is_raised_at_once() -> None:
    fn = Flaky(1, ConfigError("bad"))
    with pytest.raises(ConfigError):
        call_with_retry("call", fn, threading.Event(), sleep=lambda _s: None)
    assert fn.calls == 1


def test_max_tries_gives_up_naming_what_and_the_last_error() -> None:
    fn = Flaky(100, TargetUnavailable("typesense down"))
    with pytest.raises(GaveUp, match=r"ensure collections: gave up after 8 tries: typesense down"):
        call_with_retry("ensure collections", fn, threading.Event(), max_tries=8,
                        sleep=lambda _s: None)
    assert fn.calls == 8


def test_a_stop_during_a_wait_raises_the_last_error_without_another_try() -> None:
    stop = threading.Event()
    fn = Flaky(100, TargetUnavailable("typesense down"))
    with pytest.raises(TargetUnavailable):
        call_with_retry("call", fn, stop, sleep=lambda _s: stop.set())
    assert fn.calls == 1
