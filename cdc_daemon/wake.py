"""Sleeping until the database changes: inotify on its folder, confirmed by PRAGMA data_version.

Idle, the daemon wakes only every poll_interval (a fallback for missed events, network file
systems, and log entries whose backoff ends). inotify reports the `-wal`/`-journal` write a moment
before the commit is visible, so after an event we look again shortly before giving up. A file
renamed over the database (a backup restored with `mv`: MOVED_TO) changes no data_version of
ours: a changed `file_identity` wakes us for it. An admin resume nudges the wait (Nudge): a backlog
waits for no event then.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import inotify_simple
except ImportError:  # not Linux: fall back to polling
    inotify_simple = None

# After an event, data_version is looked at again after each of these waits (a commit's last
# write comes before SQLite shows it: an fsync in between with synchronous=FULL, several ms here).
# A new event ends a wait early and starts them again: a commit right after our own
# acknowledgement's write is seen at once, not at the next of these looks.
SETTLE_DELAYS = (0.001, 0.002, 0.003, 0.005, 0.01, 0.01)


class Nudge:
    """Ends a wait at once, from any thread (also a signal handler: the lock is re-entrant): a
    pipe polled beside the inotify descriptor (ChangeWaiter; fleet.py's main thread). Calling it
    after close() does nothing (its descriptors may be reused)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()  # not inherited by children (PEP 446)
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._lock = threading.RLock()
        self._closed = False

    def fileno(self) -> int:
        return self._read

    def __call__(self) -> None:
        with self._lock:
            if not self._closed:
                with contextlib.suppress(BlockingIOError):  # full: a nudge is pending anyway
                    os.write(self._write, b"\0")

    def taken(self) -> bool:
        """Whether it was nudged since the last call (and clear that: every pending nudge)."""
        nudged = False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                nudged = True
        return nudged

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._read)
                os.close(self._write)


class ChangeWaiter:
    def __init__(
        self,
        database: Path,
        data_version: Callable[[], int],
        poll_interval: float,
        stop: threading.Event,
        file_identity: Callable[[], object] = lambda: None,
        nudge: Nudge | None = None,
    ) -> None:
        self._data_version = data_version
        # A file renamed over the database (mv) moves no data_version of ours: wake once for it.
        self._file_identity = file_identity
        self._file = file_identity()
        self._poll_interval = poll_interval
        self._stop = stop
        self._nudge = nudge
        self._last = data_version()
        self._inotify = None
        self._name = database.name
        self._poll: select.poll | None = None  # inotify and the nudge (poll: any fd number)
        if inotify_simple is not None:
            flags = inotify_simple.flags
            self._inotify = inotify_simple.INotify()
            self._inotify.add_watch(
                str(database.parent),
                flags.MODIFY | flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE,
            )
            if nudge is not None:
                self._poll = select.poll()
                self._poll.register(self._inotify.fileno(), select.POLLIN)
                self._poll.register(nudge.fileno(), select.POLLIN)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()

    def changed(self) -> bool:
        file = self._file_identity()
        if file != self._file:
            self._file = file
            return True
        version = self._data_version()
        if version != self._last:
            self._last = version
            return True
        return False

    def wait(self) -> None:
        """Return when another connection committed, poll_interval passed, stop was set or the
        nudge was called."""
        deadline = time.monotonic() + self._poll_interval
        settle: list[float] = []  # the looks still due after the last event
        while not self._stop.is_set():
            if self.changed():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._inotify is None:
                self._stop.wait(min(remaining, 0.05))
                if self._nudge is not None and self._nudge.taken():
                    return
                continue
            wait = settle.pop(0) if settle else min(remaining, 0.25)
            events = self._events(max(1, round(wait * 1000)))
            if events is None:
                return
            if any(e.name.startswith(self._name) for e in events):
                settle = list(SETTLE_DELAYS)

    def _events(self, timeout_ms: int) -> list[Any] | None:
        """The folder's file events within `timeout_ms`; None when nudged meanwhile."""
        assert self._inotify is not None
        if self._poll is None or self._nudge is None:
            return list(self._inotify.read(timeout=timeout_ms))
        ready = {fd for fd, _event in self._poll.poll(timeout_ms)}
        if self._nudge.fileno() in ready and self._nudge.taken():
            return None
        return list(self._inotify.read(timeout=0)) if self._inotify.fileno() in ready else []
