"""Waiting until the log is synced up to a seq: done here when no daemon runs, else by the daemon.

Only one process may sync a database at a time (ProcessorLock), so `backfill` and
`verify --repair` either take the lock and call sync_once themselves, or wait for the daemon.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from cdc_daemon.changelog import ChangeLog
from cdc_daemon.database import ProcessorLock
from cdc_daemon.errors import CdcError
from cdc_daemon.retry import backoff_delay
from cdc_daemon.sync import Syncer

WAIT_FOR_DAEMON = 0.1  # seconds between looks at the log while the daemon does the work


class Drainer:
    def __init__(self, syncer: Syncer, changelog: ChangeLog, stop: threading.Event) -> None:
        self.syncer = syncer
        self.changelog = changelog
        self.stop = stop
        self.lock = ProcessorLock(syncer.db.path)
        self.holding = False

    def hold(self) -> bool:
        """Try to become the processor (True), else a running daemon is."""
        if not self.holding:
            self.holding = self.lock.acquire()
        return self.holding

    def close(self) -> None:
        self.lock.release()
        self.holding = False

    def drain_through(self, seq: int, on_error: Callable[[CdcError], None] | None = None) -> bool:
        """Block until every entry up to `seq` is synced (or backing off); False if stopped."""
        failures = 0
        while not self.stop.is_set():
            if self.changelog.unsynced_through(seq) == 0:
                return True
            if not self.hold():
                self.stop.wait(WAIT_FOR_DAEMON)
                continue
            try:
                report = self.syncer.sync_once()
                failures = 0
                if not report.entries:  # what is left is waiting for its retry time
                    self.stop.wait(WAIT_FOR_DAEMON)
            except CdcError as exc:
                if not exc.retryable:
                    raise
                failures += 1
                if on_error is not None:
                    on_error(exc)
                self.stop.wait(backoff_delay(failures))
        return False
