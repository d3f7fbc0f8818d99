"""signals.py in this process: what the first signal does, and that the handlers the block
found are back afterwards (also after an error). The forced exit on a second signal ends the
process, so it is tested on a real daemon (tests/service/test_signals.py)."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from support import wait_for

from cdc_daemon.signals import handle_signals

WATCHED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def current() -> dict[int, Any]:
    return {signum: signal.getsignal(signum) for signum in WATCHED}


def test_the_first_signal_asks_for_a_stop_and_sighup_for_a_reload() -> None:
    seen: list[object] = []
    with handle_signals(seen.append, lambda: seen.append("reload")) as state:
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: seen == ["reload"], 5, message="SIGHUP handled", interval=0.01)
        assert state.received is None  # a reload is not a stop
        os.kill(os.getpid(), signal.SIGINT)
        wait_for(lambda: seen == ["reload", signal.SIGINT], 5, message="SIGINT", interval=0.01)
        assert state.received == signal.SIGINT


def test_the_handlers_found_are_restored_after_the_block() -> None:
    before = current()
    with handle_signals(lambda _signum: None, lambda: None):
        assert all(current()[s] is not before[s] for s in WATCHED)
    assert current() == before


def test_restored_after_an_error_and_sighup_left_alone_without_a_reload() -> None:
    before = current()
    with pytest.raises(RuntimeError), handle_signals(lambda _signum: None):
        assert current()[signal.SIGHUP] is before[signal.SIGHUP]  # `backfill` has no reload
        assert current()[signal.SIGTERM] is not before[signal.SIGTERM]
        raise RuntimeError("the block failed")
    assert current() == before
