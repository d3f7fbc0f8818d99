"""Signals for `run` and `backfill`, as a server handles them (uvicorn does the same).

The first SIGTERM or SIGINT asks for a graceful stop: the handler only calls `on_stop` (which sets
a flag and an Event); the loop finishes or abandons the work in hand and returns. A second one
while that stop is under way forces the exit: the process kills itself with the same signal and
its default action, so the shell and systemd see "terminated by SIGTERM" (143) or "by SIGINT"
(130), what they expect of an interrupted process. SIGHUP (`run` only) calls `on_reload`.
The previous handlers are put back when the context ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import structlog

log = structlog.get_logger("cdc_daemon")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalState:
    """What the handlers saw: `received` is the signal that asked for the stop, if any."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None


def force_exit(signum: int) -> None:
    """Die by `signum` with its default action (exit status 128 + signum as a fallback)."""
    # The handler may have interrupted a write to stderr: a reentrant write can fail, and
    # nothing may keep the process from ending.
    with contextlib.suppress(Exception):
        name = signal.Signals(signum).name
        log.warning("second signal while stopping: exiting now", signal=name)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # not reached: the default action of SIGTERM/SIGINT ends the process


@contextlib.contextmanager
def handle_signals(
    on_stop: Callable[[int], None], on_reload: Callable[[], None] | None = None
) -> Iterator[SignalState]:
    """Install the handlers (main thread only) for the duration of the block."""
    state = SignalState()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            if on_reload is not None:
                on_reload()
            return
        if state.received is not None:
            force_exit(signum)
        state.received = signal.Signals(signum)
        on_stop(signum)

    wanted = STOP_SIGNALS + ((signal.SIGHUP,) if on_reload is not None else ())
    previous: dict[signal.Signals, Any] = {}
    try:
        for signum in wanted:
            previous[signum] = signal.signal(signum, handler)
        yield state
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
