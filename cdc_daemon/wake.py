"""Sleeping until the database changes: inotify on its folder, confirmed by PRAGMA data_version.

Idle, the daemon wakes only every poll_interval (a fallback for missed events, network file
systems, and log entries whose backoff ends). inotify reports the `-wal`/`-journal` write a moment
before the commit is visible, so after an event we look again shortly before giving up. A file
renamed over the database (a backup restored with `mv`: MOVED_TO) changes no data_version of
ours: a changed `file_identity` wakes us for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

try:
    import inotify_simple
except ImportError:  # not Linux: fall back to polling
    inotify_simple = None

# After an event, data_version is looked at again after each of these waits (a commit's last
# write comes before SQLite shows it: an fsync in between with synchronous=FULL, several ms here).
# A new event ends a wait early and starts them again: a commit right after our own
# acknowledgement's write is seen at once, not at the next of these looks.
SETTLE_DELAYS = (0.001, 0.002, 0.003, 0.005, 0.01, 0.01)


class ChangeWaiter:
    def __init__(
        self,
        database: Path,
        data_version: Callable[[], int],
        poll_interval: float,
        stop: threading.Event,
        file_identity: Callable[[], object] = lambda: None,
    ) -> None:
        self._data_version = data_version
        # A file renamed over the database (mv) moves no data_version of ours: wake once for it.
        self._file_identity = file_identity
        self._file = file_identity()
        self._poll_interval = poll_interval
        self._stop = stop
        self._last = data_version()
        self._inotify = None
        self._name = database.name
        if inotify_simple is not None:
            flags = inotify_simple.flags
            self._inotify = inotify_simple.INotify()
            self._inotify.add_watch(
                str(database.parent),
                flags.MODIFY | flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE,
            )

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
        """Return when another connection committed, poll_interval passed, or stop was set."""
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
                continue
            wait = settle.pop(0) if settle else min(remaining, 0.25)
            events = self._inotify.read(timeout=max(1, round(wait * 1000)))
            if any(e.name.startswith(self._name) for e in events):
                settle = list(SETTLE_DELAYS)
