"""Waiting until the log is synced up to a seq: done here when no daemon runs, else by the daemon.

Only one process may sync a database at a time (ProcessorLock), so `backfill` and
`verify --repair` either take the lock and call sync_once themselves, or wait for the daemon.
`backfill_table` is the `backfill` command's driver: a page of keys logged, then drained.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from cdc_daemon.backfill import Backfill, BackfillProgress
from cdc_daemon.database import ProcessorLock
from cdc_daemon.errors import CdcError
from cdc_daemon.log_status import LogStatus
from cdc_daemon.retry import call_with_retry
from cdc_daemon.schema import TableMapping
from cdc_daemon.sync import BatchReport, Syncer

WAIT_FOR_DAEMON = 0.1  # seconds between looks at the log while the daemon does the work


class Drainer:
    def __init__(self, syncer: Syncer, log_status: LogStatus, stop: threading.Event) -> None:
        self.syncer = syncer
        self.log_status = log_status
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

    def drain_through(self, seq: int) -> bool:
        """Block until every entry up to `seq` is synced (or backing off); False if stopped."""
        while not self.stop.is_set():
            if self.log_status.unsynced_through(seq) == 0:
                return True
            if not self.hold():
                self.stop.wait(WAIT_FOR_DAEMON)
                continue
            report = self._sync()
            if report is None:
                return False
            if not report.entries:  # what is left is waiting for its retry time
                self.stop.wait(WAIT_FOR_DAEMON)
        return False

    def _sync(self) -> BatchReport | None:
        """One batch, retried with backoff while Typesense fails; None when stopped."""
        try:
            return call_with_retry("sync", self.syncer.sync_once, self.stop, quiet=True)
        except CdcError as exc:
            if exc.retryable and self.stop.is_set():
                return None
            raise


def backfill_table(
    backfill: Backfill,
    mapping: TableMapping,
    drainer: Drainer,
    on_progress: Callable[[BackfillProgress], None],
) -> bool:
    """The `backfill` command for one table; False if stopped before the end (resumable)."""
    done = backfill.begin_or_resume(mapping.table)
    progress = BackfillProgress(mapping.table, backfill.count(mapping), done, resumed_from=done)
    on_progress(progress)
    while not drainer.stop.is_set():
        page = backfill.log_next_page(mapping)
        if page is None:
            return True
        max_seq, rows = page
        if not drainer.drain_through(max_seq):
            return False
        progress.done += rows
        progress.total = max(progress.total, progress.done)
        on_progress(progress)
    return False
