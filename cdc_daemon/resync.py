"""The resync driver: what the collections still owe, done a step at a time between batches.

A table owes a resync when its database file was replaced (a backup restored with `mv`, while
running or stopped), when its triggers came back (its changes meanwhile were never logged) or
when its mapping changed (reconfigure.py). The phases live in the state table (sweep.py's
ResyncState), so a kill -9 in the middle is finished after the restart; this class keeps the
loop's copy and the sweep's backoff. Main thread only (the loop's).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import structlog

from cdc_daemon.database import ProcessorLock
from cdc_daemon.errors import CdcError
from cdc_daemon.reconfigure import LeftoverCleaner, Reconfiguration
from cdc_daemon.retry import backoff_delay
from cdc_daemon.runtime import Runtime
from cdc_daemon.schema import TableMapping
from cdc_daemon.sweep import AFTER_BACKFILL, START_BACKFILL, ResyncState, Sweep

log = structlog.get_logger("cdc_daemon")

CLEAR_LEFTOVERS = "leftovers"  # a resync's last phase: what an earlier mapping left (reconfigure)


def record_changes(runtime: Runtime, previous: dict[str, TableMapping] | None) -> None:
    """Compare each table's mapping with the one its documents were made by; record the
    resync, re-send or old documents to clear that a change owes (reconfigure.py)."""
    reconfiguration = Reconfiguration(runtime.db, runtime.names)
    plan = reconfiguration.plan(runtime.mappings, previous)
    reconfiguration.record(runtime.mappings, plan)
    for table, changed in plan.reasons.items():
        log.warning(
            "documents change: bringing the collection to the new mapping",
            table=table,
            changed=changed,
            owes="resync" if table in plan.resync else "re-send",
            clears=plan.leftovers[table]["collection"] if table in plan.leftovers else None,
        )


class Resync:
    """The tables still owing a resync (table → phase) and the step that moves them on. The
    daemon gives it the runtime of the moment, its stop event and its heartbeat (a sweep of a
    large collection takes long: the watchdog is fed meanwhile)."""

    def __init__(
        self,
        stop: threading.Event,
        beat: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stop = stop
        self.beat = beat
        self.clock = clock
        self.owed: dict[str, str] = {}
        self._failures = 0
        self._due = 0.0  # clock(): no sweep before (backoff after a failed one)

    def reread(self, runtime: Runtime) -> None:
        """Take what the runtime's state table says is owed (after a switch: log_table may
        have changed)."""
        self.owed = ResyncState(runtime.db, runtime.names).owed()

    def begin(
        self, runtime: Runtime, tables: Iterable[str], lock: ProcessorLock | None = None
    ) -> None:
        """Record that these tables owe a resync (one transaction); `reread` picks it up."""
        ResyncState(runtime.db, runtime.names, lock).begin(tables)

    def on_start(self, runtime: Runtime, lock: ProcessorLock) -> None:
        """A file replaced while the daemon was stopped owes the same resync as one replaced
        under it (and a resync a kill -9 interrupted is continued)."""
        state = ResyncState(runtime.db, runtime.names, lock)
        if state.file_changed():
            log.warning(
                "database file is not the one last synced (a backup restored?); resyncing",
                database=str(runtime.db.path),
            )
            state.begin(runtime.mappings)
        else:
            state.rotate()  # a backup taken before now carries an older token
        self.owed = state.owed()

    def changes_at_start(self, runtime: Runtime) -> None:
        """A config changed while the daemon was stopped owes what a reload would."""
        record_changes(runtime, None)
        self.reread(runtime)

    @staticmethod
    def at_stop(runtime: Runtime, lock: ProcessorLock) -> None:
        """A new token: a backup restored from now on is seen, even one restored in place."""
        ResyncState(runtime.db, runtime.names, lock).rotate()

    def step(self, runtime: Runtime) -> bool:
        """Between batches: start each owing table's backfill, then sweep its collection.

        The sweep waits until the backfill has logged every row. Either order would be correct:
        both only log keys, and the sync path decides each key from its row in one snapshot (a
        row: upsert; none: delete); a document the sweep does not see was made from this file's
        log, whose triggers log that row's later changes. After, so that searches get every
        current row first, and a late write of the replaced file's last batch (a timed-out
        import applied late) has landed before the sweep looks. True when it did some work."""
        state = ResyncState(runtime.db, runtime.names)
        backfilling: dict[str, int] | None = None
        busy = False
        for table, phase in list(self.owed.items()):
            mapping = runtime.mappings.get(table)
            if mapping is None:
                continue  # not configured (any more): still owed if it is again
            if phase == START_BACKFILL:
                runtime.syncer.collections.backfill.start(table)
                state.set_phase(table, AFTER_BACKFILL)
                self.owed[table] = AFTER_BACKFILL
                busy = True
                continue
            if phase == CLEAR_LEFTOVERS:
                if not runtime.log_status.unsynced_for_table(table, 1):  # the new ones are in
                    busy = self._clear_leftovers(runtime, table, mapping, state) or busy
                continue
            if backfilling is None:
                backfilling = runtime.syncer.collections.backfill.active()
            if table not in backfilling and self.clock() >= self._due:
                busy = self._sweep(runtime, table, mapping, state) or busy
        return busy

    def _sweep(
        self, runtime: Runtime, table: str, mapping: TableMapping, state: ResyncState
    ) -> bool:
        """One table's sweep; a failure is retried later, without holding back the batches."""
        target = runtime.syncer.targets.get(table)
        collection = target.primary if target is not None else mapping.collection
        sweep = Sweep(runtime.db, runtime.changelog, runtime.sink)
        try:
            result = sweep.run(mapping, collection, self.stop, beat=self.beat)
        except CdcError as exc:
            delay = self._back_off()
            log.warning("sweep failed", table=table, error=str(exc), retry_in_s=round(delay, 2))
            return False
        if result is None:
            return False  # stopping: done again from the start after the restart
        self._failures = 0
        if Reconfiguration(runtime.db, runtime.names).leftovers(table):
            state.set_phase(table, CLEAR_LEFTOVERS)  # once the table's new documents are in
            self.owed[table] = CLEAR_LEFTOVERS
        else:
            self._done(table, state)
        log.info(
            "sweep finished",
            table=table,
            collection=collection,
            documents=result.documents,
            queued_for_deletion=result.queued,
            deleted=result.deleted,
        )
        return True

    def _clear_leftovers(
        self, runtime: Runtime, table: str, mapping: TableMapping, state: ResyncState
    ) -> bool:
        """The last step of a table's resync, once its log is drained (searches find the new
        documents first): the documents an earlier mapping of it left (its old id_prefix, its
        old collection; reconfigure.py). A failure is retried like a sweep. True when done."""
        reconfiguration = Reconfiguration(runtime.db, runtime.names)
        entries = reconfiguration.leftovers(table).get(table, [])
        cleaner = LeftoverCleaner(
            reconfiguration,
            runtime.sink,
            runtime.syncer.collections.owners,
            {m.collection for m in runtime.mappings.values()},
            self.stop,
            self.beat,
        )
        for entry in entries:
            if self.clock() < self._due:
                return False  # backing off after a failure
            try:
                cleared = cleaner.clear(mapping, entry)
            except CdcError as exc:
                delay = self._back_off()
                log.warning(
                    "clearing old documents failed",
                    table=table,
                    error=str(exc),
                    retry_in_s=round(delay, 2),
                )
                return False
            if cleared is None:
                return False  # stopping: done again after the restart
            self._failures = 0
            log.info(
                "old documents cleared",
                table=table,
                collection=entry["collection"],
                id_prefix=entry["id_prefix"],
                deleted=cleared.deleted,
                dropped=cleared.dropped,
                kept=cleared.kept,
            )
        self._done(table, state)
        return True

    def _done(self, table: str, state: ResyncState) -> None:
        state.set_phase(table, None)
        del self.owed[table]

    def _back_off(self) -> float:
        """A sweep or a clearing failed: the next one waits (the batches don't). The delay."""
        self._failures += 1
        delay = backoff_delay(self._failures)
        self._due = self.clock() + delay
        return delay
