"""The admin API's Controls (control.py) over the running Daemon: built by wiring.py.

Every method runs on an admin server thread, never the loop's: it reads `daemon.runtime` once
(a reload may replace it meanwhile), works on a SQLite connection of its own, and only logs
keys or sets flags; the loop does the syncing (the one-processor rule).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Iterator
from typing import Any

from cdc_daemon.backfill import Backfill
from cdc_daemon.changelog import ChangeLog
from cdc_daemon.daemon import Daemon, Runtime
from cdc_daemon.database import Database
from cdc_daemon.dead_letters import DeadLetters
from cdc_daemon.log_status import LogStatus
from cdc_daemon.status import sync_status
from cdc_daemon.verify import Verifier, verify_tables


class DaemonControls:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def tables(self) -> Collection[str]:
        return list(self.daemon.runtime.mappings)

    def paused(self) -> bool:
        return self.daemon.paused.is_set()

    def pause(self) -> None:
        self.daemon.paused.set()

    def resume(self) -> None:
        self.daemon.paused.clear()

    def loop_idle_seconds(self) -> float:
        return time.monotonic() - self.daemon.last_beat

    @contextlib.contextmanager
    def _database(self) -> Iterator[tuple[Runtime, Database]]:
        runtime = self.daemon.runtime
        db = Database(runtime.db.path)
        try:
            yield runtime, db
        finally:
            db.close()

    def status(self) -> dict[str, Any]:
        with self._database() as (runtime, db):
            status = sync_status(db, runtime.names, list(runtime.mappings))
        for table, problem in list(runtime.syncer.broken.items()):  # skipped: changes wait
            status["tables"].setdefault(table, {})["problem"] = problem
        keys = runtime.keys.stats()
        status["daemon"] = {
            "paused": self.paused(),
            "loop_idle_seconds": round(self.loop_idle_seconds(), 3),
            "consecutive_failures": self.daemon.consecutive_failures,
            "typesense_up": runtime.sink.up,
            "api_key_source": keys.source,  # never the key
            "kms_up": keys.kms_up,
        }
        return status

    def retry_dead_letters(self, table: str | None) -> int:
        with self._database() as (runtime, db):
            return DeadLetters(db, runtime.names).retry(table)

    def verify(self, table: str | None, repair: bool) -> dict[str, Any]:
        with self._database() as (runtime, db):
            changelog = ChangeLog(db, runtime.names, runtime.settings.max_attempts)
            # Inside the daemon: its loop delivers what is in the log.
            verifier = Verifier(db, changelog, runtime.sink, processor_running=True)
            tables = list(runtime.mappings)
            summary, queued = verify_tables(
                verifier,
                [runtime.mappings[name] for name in ([table] if table else tables)],
                runtime.syncer.entries,
                runtime.syncer.collections,
                lambda: LogStatus(db, runtime.names).summary(tables),
                repair=repair,  # logs the keys; the loop syncs them
            )
        if repair:
            summary["repair_queued"] = queued
        return summary

    def backfill(self, table: str | None) -> dict[str, Any]:
        with self._database() as (runtime, db):
            backfill = Backfill(db, runtime.names)
            running = backfill.active()
            started, already = [], []
            for name in [table] if table else list(runtime.mappings):
                if name in running:
                    already.append(name)
                else:
                    backfill.start(name)  # the loop logs its pages between batches
                    started.append(name)
        return {"started": started, "already_running": already}
