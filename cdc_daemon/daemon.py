"""The loop: runs sync_once between signals; rebuilds nothing itself.

The objects it runs come from wiring.py, in two halves: `Services` (the API key source and the
Typesense client, long-lived) and the `Runtime` (the tables half: database, mappings, change
log, collections, syncer). An app schema change or a replaced file asks the `Factory` for a new
Runtime on the same Services; a SIGHUP asks it for a `Reload` (new Services only when the
`typesense:` section changed). The loop and its rebuilds run on the main thread; the admin API
(other threads) reaches the daemon only through wiring.py (DaemonControls).
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from cdc_daemon.changelog import ChangeLog
from cdc_daemon.database import Database, ProcessorLock, TableInfo, file_identity
from cdc_daemon.errors import CdcError, DatabaseError
from cdc_daemon.kms import ApiKeys
from cdc_daemon.log_schema import LogTables
from cdc_daemon.log_status import LogStatus
from cdc_daemon.metrics import Metrics, error_kind
from cdc_daemon.notify import Notifier
from cdc_daemon.reconfigure import LeftoverCleaner, Reconfiguration
from cdc_daemon.retry import backoff_delay, call_with_retry
from cdc_daemon.schema import TableMapping
from cdc_daemon.sweep import AFTER_BACKFILL, START_BACKFILL, ResyncState, Sweep
from cdc_daemon.sync import BatchReport, Syncer
from cdc_daemon.trigger_watch import TriggerWatch
from cdc_daemon.triggers import ensure_log_is_ours, install, trigger_problems
from cdc_daemon.typesense import TypesenseSink
from cdc_daemon.wake import ChangeWaiter

log = structlog.get_logger("cdc_daemon")

CLEAR_LEFTOVERS = "leftovers"  # a resync's last phase: what an earlier mapping left (reconfigure)
ONCE_MAX_FAILURES = 8  # `run --once` gives up after this many failed tries in a row (~1 minute)


@dataclass
class Services:
    """The long-lived half: the Typesense API key source (kms.py) and the Typesense client
    (its node health and alias cache). Kept across schema changes and replaced files; a reload
    builds new ones only when the `typesense:` section changed. The client is used by the loop
    and by admin requests (threads): see cdc_daemon/typesense/cluster.py for what it allows."""

    api_keys: ApiKeys
    sink: TypesenseSink

    def close(self) -> None:
        self.sink.close()
        self.api_keys.close()


@dataclass(frozen=True)
class LoopSettings:
    """The config values the loop reads itself (wiring.py fills them in)."""

    tables: tuple[str, ...] = ()  # the configured table names, in config order
    poll_interval: float = 1.0
    reinstall_triggers: bool = False
    max_attempts: int = 10  # an admin request's change log counts failures like the loop's


@dataclass
class Runtime:
    """The tables half, built from one config on the schema as it is now. Close it when done:
    its Services too only when `owns_services` (a command's runtime; the daemon's share them)."""

    db: Database
    names: LogTables
    tables: list[TableInfo]
    mappings: dict[str, TableMapping]
    changelog: ChangeLog
    log_status: LogStatus
    syncer: Syncer
    services: Services
    settings: LoopSettings = field(default_factory=LoopSettings)
    stop: threading.Event = field(default_factory=threading.Event)
    owns_services: bool = False

    @property
    def sink(self) -> TypesenseSink:
        return self.services.sink

    @property
    def api_keys(self) -> ApiKeys:
        return self.services.api_keys

    def close(self) -> None:
        try:
            self.syncer.commit_pending()
        except CdcError as exc:  # harmless: those changes are sent again by the next run
            log.warning("last acknowledgement not written", error=str(exc))
        if self.owns_services:
            self.services.close()
        self.db.close()


@dataclass
class Reload:
    """A re-read config, checked and ready to build (wiring.py); nothing is applied yet."""

    build: Callable[[Services], Runtime]  # the new tables half; raises for a table problem
    services: Services | None  # new Services (the `typesense:` section changed), else None
    changed: list[str]  # the config keys that changed, for the log line
    apply: Callable[[], None]  # after the switch: the log format, the admin API's JWT keys


class Factory(Protocol):
    """What the loop asks for new objects (wiring.RuntimeFactory)."""

    def runtime(self, services: Services) -> Runtime:
        """The tables half from the running config on the schema as it is now; a table that
        can't be used is skipped (its changes wait in the log)."""
        ...

    def reload(self, services: Services) -> Reload:
        """Re-read the config; a CdcError naming the key when it can't be applied. `services`
        are the running ones (kept when the new config does not change them)."""
        ...

    def keep_running_config(self) -> None:
        """A reload failed: undo what reading the new config changed (the log format)."""
        ...


def require_installed(db: Database, names: LogTables) -> None:
    if not ensure_log_is_ours(db, names):
        raise DatabaseError(
            f"{db.path}: log table {names.log!r} is missing: run `cdc-daemon install`"
        )


def log_batch(report: BatchReport) -> None:
    log.info(
        "batch synced",
        changes=report.entries,
        keys=report.keys,
        upserted=sum(report.upserted.values()),
        deleted=sum(report.deleted.values()),
        failed=report.failed,
        seq_first=report.first_seq,
        seq_last=report.last_seq,
        duration_ms=round(report.duration * 1000, 1),
        tables=sorted(set(report.upserted) | set(report.deleted)),
    )
    for error in report.errors:
        log.warning("document failed", error=error)
    for table, count in report.dead_by_table.items():
        log.warning("dead-lettered", table=table, count=count)


class Daemon:
    """The long-running loop. Signal handlers only set flags; `iteration()` does the work."""

    def __init__(
        self,
        runtime: Runtime,
        factory: Factory,
        notifier: Notifier,
        metrics: Metrics | None = None,
    ) -> None:
        self.runtime = runtime
        self.factory = factory
        self.notifier = notifier
        self.metrics = metrics
        self.stop = runtime.stop
        self.consecutive_failures = 0
        self._reload_requested = False
        self._stopping = False
        self._schema_version = runtime.db.schema_version()
        self.busy = False
        self._ready_sent = False
        self.paused = threading.Event()  # set by the admin API: the loop syncs nothing
        self.last_beat = time.monotonic()  # the loop's last sign of life (admin /healthz)
        # After the database file was replaced (sweep.py): table → what its collection still owes.
        self._resync: dict[str, str] = {}
        self._noticed_file: str | None = None  # the replacing file, once its warning is logged
        self._reported_file: str | None = None  # ... once its trigger problems are logged
        self._sweep_failures = 0
        self._sweep_due = 0.0  # monotonic: no sweep before (backoff after a failed one)
        self.triggers = TriggerWatch()  # missing triggers: looked at after each schema change
        self._triggers_due = True

    def request_stop(self, _signum: int) -> None:
        """SIGTERM, SIGINT (signals.py): stop after the batch in hand, acknowledging nothing
        unsynced."""
        self.notifier.send("STOPPING=1")
        self._stopping = True
        self.stop.set()

    def request_reload(self) -> None:
        """SIGHUP: the loop reloads before its next iteration."""
        self._reload_requested = True
        self.stop.set()  # wake the loop; cleared again by the loop for a reload

    def _sleep(self, seconds: float) -> None:
        """Wait, still pinging the watchdog: a backoff is not a hang."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            self._heartbeat()
            self.stop.wait(min(remaining, self.notifier.watchdog_interval or remaining))

    def iteration(self) -> BatchReport | None:
        """One loop step. None when it failed (the error is logged, counted and backed off).

        `self.busy` says whether to go on without sleeping (a batch was read, or a backfill page
        was logged, or a rebuild finished)."""
        runtime = self.runtime
        self.last_beat = time.monotonic()
        if self.paused.is_set():
            self.busy = False
            return BatchReport()
        try:
            if runtime.db.replaced():  # one stat: a backup restored with `mv` over the file
                self._reopen_replaced()
                runtime = self.runtime
            if runtime.db.schema_version() != self._schema_version:
                self._check_triggers()  # first: a migration may have dropped them
                self._replace_runtime(self._next_runtime, "schema changed")
                runtime = self.runtime
            if self._triggers_due:
                self._check_triggers()
            self.triggers.report()  # at once after a change, then once a minute while missing
            runtime.sink.probe_idle_nodes()  # standby nodes' health, and recovered nodes
            collections_busy = runtime.syncer.step_collections()
            resync_busy = self._resync_step() if self._resync else False
            report = runtime.syncer.sync_once()
        except CdcError as exc:
            self.busy = False
            self.consecutive_failures += 1
            delay = backoff_delay(self.consecutive_failures)
            log.warning(
                "sync failed",
                error=str(exc),
                kind=type(exc).__name__,
                retry_in_s=round(delay, 2),
                failures=self.consecutive_failures,
            )
            if self.metrics is not None:
                self.metrics.record_failure(error_kind(exc), runtime.sink.up)
            self._sleep(delay)
            return None
        self.consecutive_failures = 0
        self.busy = collections_busy or resync_busy or bool(report.entries)
        if self.metrics is not None:
            self.metrics.record_batch(report)
            self.metrics.record_success(runtime.sink.up or not report.entries)
        if report.entries:
            log_batch(report)
        return report

    def _heartbeat(self) -> None:
        self.last_beat = time.monotonic()
        self.notifier.heartbeat()

    def _count_failure(self, exc: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.record_failure(error_kind(exc), self.runtime.sink.up)

    def _call_until_up(self, what: str, fn: Callable[[], object], once: bool = False) -> bool:
        """Retry `fn` with backoff (watchdog fed, failures counted) until it succeeds: True.
        False when SIGTERM came first (a clean stop, exit 0); a SIGHUP is left to the loop.
        `once` (`run --once`): GaveUp after ONCE_MAX_FAILURES tries, the loop's own bound (a
        cron job's `run --once` must end when Typesense or the KMS stays unreachable)."""
        while True:
            try:
                call_with_retry(
                    what,
                    fn,
                    self.stop,
                    max_tries=ONCE_MAX_FAILURES if once else None,
                    on_retry=self._count_failure,
                    sleep=self._sleep,
                )
                return True
            except CdcError as exc:
                if self._stopping:
                    return False
                if not (self._reload_requested and exc.retryable):
                    raise
                self.stop.clear()  # woken by SIGHUP: keep trying; the loop reloads once up

    def _reload(self) -> None:
        """SIGHUP: re-read the config (and the key files it names) and apply every section, or
        refuse the whole reload with one error line naming the key and keep the running config.
        Applied: tables, typesense (nodes, timeout, key source), sync, logging, admin.jwt.
        Refused (config.RESTART_ONLY): database, log_table, admin.listen, metrics.listen."""
        self._reload_requested = False
        if self._stopping:
            return
        self.stop.clear()
        self.notifier.send("RELOADING=1")
        try:
            self._apply_reload(self.factory.reload(self.runtime.services))
        except CdcError as exc:
            self.factory.keep_running_config()
            log.error("reload failed; keeping the previous config", error=str(exc))
        self.notifier.send("READY=1")

    def _apply_reload(self, reload: Reload) -> None:
        """Everything that can fail is done before anything changes: the factory checked the
        restart-only keys and read the admin API's new JWT keys; here the new runtime (tables,
        collections, and Services when the `typesense:` section changed) is built."""
        services = reload.services or self.runtime.services
        try:
            # An operator's config error (a `where` that doesn't compile, a table that doesn't
            # exist) refuses the reload, as `check` and start refuse it: no skipping here.
            self._replace_runtime(
                lambda: reload.build(services),
                "config reloaded",
                on_swap=reload.apply,
                changed=reload.changed,
            )
        except BaseException:
            if reload.services is not None and self.runtime.services is not reload.services:
                reload.services.close()  # never switched to
            raise

    def _next_runtime(self) -> Runtime:
        """The tables half again, on the running Services (no new key, same node health)."""
        return self.factory.runtime(self.runtime.services)

    def _replace_runtime(
        self,
        build: Callable[[], Runtime],
        why: str,
        prepare: Callable[[Runtime], None] | None = None,
        on_swap: Callable[[], None] | None = None,
        **details: object,
    ) -> None:
        """Rebuild tables, mappings and collections with `build` on the current schema.

        On SIGHUP, when the app altered its schema (PRAGMA schema_version moved) and when the
        database file was replaced (`prepare` then checks the new runtime first). Raises,
        leaving the running objects untouched, when the new ones can't be built. What the new
        mappings owe the collections (a resync, a re-send, old documents to clear) is recorded
        just before the switch (reconfigure.py); `on_swap` runs just after it. The factory's
        runtime skips a table the app dropped or altered (its changes wait); a reload's makes
        any table problem a ConfigError naming the key."""
        fresh = build()
        try:
            if prepare is not None:
                prepare(fresh)
        except BaseException:
            fresh.close()
            raise
        try:
            fresh.syncer.ensure_collections()
        except CdcError as exc:
            if not exc.retryable:
                fresh.close()
                raise
            # Typesense down, or a shared collection not ready: the new runtime prepares its
            # collections before its first batch (retried with backoff like any batch).
            log.warning("collections not ready yet", error=str(exc))
        except BaseException:
            fresh.close()
            raise
        try:
            self._record_changes(fresh, self.runtime.mappings)
        except BaseException:
            fresh.close()
            raise
        old, self.runtime = self.runtime, fresh
        old.close()
        if old.services is not fresh.services:
            old.services.close()
        if on_swap is not None:
            on_swap()
        self._schema_version = fresh.db.schema_version()
        self._resync = ResyncState(fresh.db, fresh.names).owed()  # log_table may have changed
        self._triggers_due = True  # a schema change may have dropped triggers
        log.info(why, tables=list(fresh.mappings), **details)

    def _record_changes(
        self, runtime: Runtime, previous: dict[str, TableMapping] | None
    ) -> None:
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

    # -- a database file replaced (a backup restored with `mv`): sweep.py ---------------------

    def _reopen_replaced(self) -> None:
        """The path names another file now: sync that one, from scratch. The old connection
        first lets go of the -wal both files share by name (Database.release_replaced), once:
        after that the -wal is the new file's. The warning comes after it, so an operator may
        start the app once it is logged."""
        old = self.runtime.db
        noticed = repr(file_identity(old.path))
        if noticed != self._noticed_file:
            problem = old.release_replaced()  # DatabaseBusy: old file still in use; retried
            self._noticed_file = noticed
            log.warning("database file replaced; reopening", database=str(old.path))
            if problem is not None:
                log.error("restored file opened too early", problem=problem)
        self._replace_runtime(self._next_runtime, "database reopened", self._adopt_replacement)

    def _adopt_replacement(self, fresh: Runtime) -> None:
        """The new file must be installed (without the log there is nothing to sync from:
        raises, and the loop retries with backoff until `cdc-daemon install` ran). Then every
        collection owes it a resync, recorded before anything else is done with the new file."""
        if self._reported_file != self._noticed_file:
            self._reported_file = self._noticed_file
            for problem in trigger_problems(fresh.db, fresh.names, fresh.tables):
                log.error("trigger problem", problem=problem, database=str(fresh.db.path))
        require_installed(fresh.db, fresh.names)
        ResyncState(fresh.db, fresh.names, self.lock).begin(fresh.mappings)

    def _resync_on_start(self) -> None:
        """A file replaced while the daemon was stopped owes the same resync as one replaced
        under it (and a resync a kill -9 interrupted is continued)."""
        runtime = self.runtime
        state = ResyncState(runtime.db, runtime.names, self.lock)
        if state.file_changed():
            log.warning(
                "database file is not the one last synced (a backup restored?); resyncing",
                database=str(runtime.db.path),
            )
            state.begin(runtime.mappings)
        else:
            state.rotate()  # a backup taken before now carries an older token
        self._resync = state.owed()

    def _changes_at_start(self) -> None:
        """A config changed while the daemon was stopped owes what a reload would."""
        self._record_changes(self.runtime, None)
        self._resync = ResyncState(self.runtime.db, self.runtime.names).owed()

    def _resync_step(self) -> bool:
        """Between batches: start each owing table's backfill, then sweep its collection.

        The sweep waits until the backfill has logged every row. Either order would be correct:
        both only log keys, and the sync path decides each key from its row in one snapshot (a
        row: upsert; none: delete); a document the sweep does not see was made from this file's
        log, whose triggers log that row's later changes. After, so that searches get every
        current row first, and a late write of the replaced file's last batch (a timed-out
        import applied late) has landed before the sweep looks. True when it did some work."""
        runtime = self.runtime
        state = ResyncState(runtime.db, runtime.names)
        backfilling: dict[str, int] | None = None
        busy = False
        for table, phase in list(self._resync.items()):
            mapping = runtime.mappings.get(table)
            if mapping is None:
                continue  # not configured (any more): still owed if it is again
            if phase == START_BACKFILL:
                runtime.syncer.collections.backfill.start(table)
                state.set_phase(table, AFTER_BACKFILL)
                self._resync[table] = AFTER_BACKFILL
                busy = True
                continue
            if phase == CLEAR_LEFTOVERS:
                if not runtime.log_status.unsynced_for_table(table, 1):  # the new ones are in
                    busy = self._clear_leftovers(table, mapping, state) or busy
                continue
            if backfilling is None:
                backfilling = runtime.syncer.collections.backfill.active()
            if table not in backfilling and time.monotonic() >= self._sweep_due:
                busy = self._sweep(table, mapping, state) or busy
        return busy

    def _sweep(self, table: str, mapping: TableMapping, state: ResyncState) -> bool:
        """One table's sweep; a failure is retried later, without holding back the batches."""
        runtime = self.runtime
        target = runtime.syncer.targets.get(table)
        collection = target.primary if target is not None else mapping.collection
        sweep = Sweep(runtime.db, runtime.changelog, runtime.sink)
        try:
            result = sweep.run(mapping, collection, self.stop, beat=self._heartbeat)
        except CdcError as exc:
            self._sweep_failures += 1
            delay = backoff_delay(self._sweep_failures)
            self._sweep_due = time.monotonic() + delay
            log.warning("sweep failed", table=table, error=str(exc), retry_in_s=round(delay, 2))
            return False
        if result is None:
            return False  # stopping: done again from the start after the restart
        self._sweep_failures = 0
        if Reconfiguration(runtime.db, runtime.names).leftovers(table):
            state.set_phase(table, CLEAR_LEFTOVERS)  # once the table's new documents are in
            self._resync[table] = CLEAR_LEFTOVERS
        else:
            state.set_phase(table, None)
            del self._resync[table]
        log.info(
            "sweep finished",
            table=table,
            collection=collection,
            documents=result.documents,
            queued_for_deletion=result.queued,
            deleted=result.deleted,
        )
        return True

    def _clear_leftovers(self, table: str, mapping: TableMapping, state: ResyncState) -> bool:
        """The last step of a table's resync, once its log is drained (searches find the new
        documents first): the documents an earlier mapping of it left (its old id_prefix, its
        old collection; reconfigure.py). A failure is retried like a sweep. True when done."""
        runtime = self.runtime
        reconfiguration = Reconfiguration(runtime.db, runtime.names)
        entries = reconfiguration.leftovers(table).get(table, [])
        cleaner = LeftoverCleaner(
            reconfiguration,
            runtime.sink,
            runtime.syncer.collections.owners,
            {m.collection for m in runtime.mappings.values()},
            self.stop,
            self._heartbeat,
        )
        for entry in entries:
            if time.monotonic() < self._sweep_due:
                return False  # backing off after a failure
            try:
                cleared = cleaner.clear(mapping, entry)
            except CdcError as exc:
                self._sweep_failures += 1
                delay = backoff_delay(self._sweep_failures)
                self._sweep_due = time.monotonic() + delay
                log.warning(
                    "clearing old documents failed",
                    table=table,
                    error=str(exc),
                    retry_in_s=round(delay, 2),
                )
                return False
            if cleared is None:
                return False  # stopping: done again after the restart
            self._sweep_failures = 0
            log.info(
                "old documents cleared",
                table=table,
                collection=entry["collection"],
                id_prefix=entry["id_prefix"],
                deleted=cleared.deleted,
                dropped=cleared.dropped,
                kept=cleared.kept,
            )
        state.set_phase(table, None)
        del self._resync[table]
        return True

    # -- triggers a migration dropped (trigger_watch.py) ---------------------------------------

    def _check_triggers(self) -> None:
        """At start and at each schema change (before the runtime is rebuilt, which may fail):
        record and report missing triggers, put them back when sync.reinstall_triggers is on,
        and resync the tables whose triggers are back (their changes meanwhile were never
        logged). Read from the schema as it is now, not from the runtime's table infos."""
        runtime = self.runtime
        infos = self._configured_tables()
        back = self.triggers.check(runtime.db, runtime.names, infos)
        if self.triggers.problems and runtime.settings.reinstall_triggers:
            self._reinstall_triggers(infos)
            back = self.triggers.check(runtime.db, runtime.names, infos)
        if back:
            state = ResyncState(runtime.db, runtime.names)
            state.begin(back)
            self.triggers.forget(runtime.db, runtime.names, back)
            self._resync = state.owed()
            log.warning(
                "triggers back; resyncing the tables",
                tables=back,
                reason="changes made while they were missing were never logged",
            )
        self._triggers_due = False

    def _configured_tables(self) -> list[TableInfo]:
        """Every configured table that exists and has a key, as the schema is now: also one
        the runtime skips for a problem of its own (a `where` that no longer compiles), whose
        triggers still log its changes (and `install` would remove them as not configured)."""
        db = self.runtime.db
        infos = []
        for table in self.runtime.settings.tables:
            if db.table_exists(table):
                info = db.table_info(table)
                if info.key:
                    infos.append(info)
        return infos

    def _reinstall_triggers(self, infos: list[TableInfo]) -> None:
        """What `cdc-daemon install` does (one transaction, idempotent), with the clear line."""
        runtime = self.runtime
        missing = sorted(self.triggers.problems)
        changes = install(runtime.db, runtime.names, infos)
        log.warning(
            "triggers reinstalled",
            tables=missing,
            changes=changes,
            reason="a migration dropped or changed them; sync.reinstall_triggers is on",
        )

    def run(self, once: bool = False) -> int:
        require_installed(self.runtime.db, self.runtime.names)
        self.runtime.db.require_writable()  # e.g. run as root before: one line with the fix
        lock = self.lock = ProcessorLock(self.runtime.db.path)
        if not lock.acquire():
            raise DatabaseError(
                f"{self.runtime.db.path}: another cdc-daemon (pid {lock.holder()}) is syncing it"
            )
        # A batch allocates a few objects per document, all gone once it is acknowledged. With
        # the default thresholds the collector ran every 700 of them and walked them again and
        # again, and every object left from start-up (modules, clients): 2-3 us per document.
        # Start-up objects are frozen (never scanned again); young ones are collected rarely.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        try:
            return self._loop(once)
        finally:
            with contextlib.suppress(CdcError):  # a new token: a backup restored from now on,
                ResyncState(self.runtime.db, self.runtime.names, lock).rotate()  # even in place
            lock.release()
            log.info("stopped")

    def _loop(self, once: bool) -> int:
        runtime = self.runtime
        if not self._call_until_up("check the triggers", self._check_triggers, once):
            return 0
        if not self._call_until_up("fetch the Typesense API key", runtime.api_keys.ready, once):
            return 0  # a KMS key: retried with backoff while the KMS is unreachable
        if not self._call_until_up("check the database file", self._resync_on_start, once):
            return 0
        if not self._call_until_up("compare the tables' mappings", self._changes_at_start, once):
            return 0
        if not self._call_until_up(
            "ensure collections", runtime.syncer.ensure_collections, once
        ):
            return 0
        version = runtime.sink.server_version()
        log.info(
            "running",
            database=str(runtime.db.path),
            tables=list(runtime.mappings),
            once=once,
            typesense=".".join(map(str, version)) if version != (0,) else "version unknown",
        )
        waiter = self._waiter()
        try:
            while True:
                if self._reload_requested:
                    self._reload()
                    waiter.close()
                    waiter = self._waiter()  # sync.poll_interval may have changed
                    continue  # a SIGHUP during the reload set `stop` too: reload again
                if self.stop.is_set() and not self._reload_requested:  # SIGHUP wakes us too
                    log.info("stopping: nothing unsynced was acknowledged")
                    return 0
                self._heartbeat()
                report = self.iteration()
                if report is None:
                    if self._log_gone():
                        return 1  # systemd's Restart= shows it; a restart says "run install"
                    if once and self.consecutive_failures >= ONCE_MAX_FAILURES:
                        log.error("giving up", failures=self.consecutive_failures)
                        return 1
                    continue
                if not self._ready_sent:
                    self.notifier.send("READY=1")
                    self._ready_sent = True
                if self.busy:
                    continue  # more may be waiting: read again before sleeping
                if once:  # rejected documents or a skipped table: exit 1, each logged
                    rejected = self.runtime.syncer.rejections.log()
                    for table, why in self.runtime.syncer.broken.items():
                        log.error("table not synced", table=table, problem=why)
                    return 1 if rejected or self.runtime.syncer.broken else 0
                waiter.wait()
        finally:
            waiter.close()

    def _log_gone(self) -> bool:
        """After a failed iteration: True (the error logged) when the log tables were dropped
        under the daemon (by hand: `uninstall` refuses while a daemon runs). Retrying can't
        help, so the daemon stops instead of failing every iteration."""
        runtime = self.runtime
        names = runtime.names
        try:
            if runtime.db.replaced():
                return False  # the new file's log is awaited (_adopt_replacement)
            missing = [t for t in (names.log, names.state) if not runtime.db.table_exists(t)]
        except CdcError:
            return False  # can't tell: the failure is retried like any other
        if not missing:
            return False
        log.error(
            "change log dropped while running: stopping; run `cdc-daemon install` (then"
            " `cdc-daemon backfill`) and start the daemon again",
            database=str(runtime.db.path),
            missing=missing,
        )
        return True

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        self.notifier.close()
        self.runtime.close()
        self.runtime.services.close()

    def _poll_interval(self) -> float:
        """The longest idle wait: poll_interval, but never longer than a watchdog ping."""
        poll = self.runtime.settings.poll_interval
        return min(poll, self.notifier.watchdog_interval or poll)

    def _waiter(self) -> ChangeWaiter:
        runtime = self.runtime
        return ChangeWaiter(
            runtime.db.path,
            lambda: self.runtime.db.data_version(),  # the current runtime's, across reloads
            self._poll_interval(),
            self.stop,
            file_identity=lambda: file_identity(runtime.db.path),
        )
