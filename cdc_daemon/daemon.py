"""The loop: runs sync_once between signals; rebuilds nothing itself.

The objects it runs come from wiring.py, in two halves: `Services` (the API key source and the
Typesense client, long-lived) and the `Runtime` (the tables half: database, mappings, change
log, collections, syncer). An app schema change or a replaced file asks the `Factory` for a new
Runtime on the same Services; a SIGHUP asks it for a `Reload` (new Services only when the
`typesense:` section changed). The loop and its rebuilds run on the main thread; the admin API
(other threads) reaches the daemon only through wiring.py (DaemonControls). What the collections
owe after a replaced file or a mapping change is resync.py's; missing triggers, trigger_watch.py's.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from cdc_daemon.database import ProcessorLock, file_identity
from cdc_daemon.dependencies import roots_reading
from cdc_daemon.errors import CdcError, DatabaseError
from cdc_daemon.logs import debug_enabled
from cdc_daemon.metrics import Metrics, error_kind
from cdc_daemon.notify import Notifier
from cdc_daemon.replaced_file import ReplacedFile
from cdc_daemon.resync import Resync, record_changes
from cdc_daemon.retry import backoff_delay, call_with_retry
from cdc_daemon.runtime import Runtime, Services
from cdc_daemon.sync import BatchReport
from cdc_daemon.trigger_watch import TriggerWatch
from cdc_daemon.triggers import require_installed
from cdc_daemon.wake import ChangeWaiter, Nudge

log = structlog.get_logger("cdc_daemon")

ONCE_MAX_FAILURES = 8  # `run --once` gives up after this many failed tries in a row (~1 minute)


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


def log_batch(report: BatchReport, quiet: bool = False) -> None:
    """`quiet` (a `databases:` daemon): "batch synced" at debug, as a thousand databases would
    write a thousand lines a second (journald's default rate limit drops lines past ~330/s,
    warnings among them); the metrics count every batch."""
    if not quiet or debug_enabled():
        fields = {
            "changes": report.entries,
            "keys": report.keys,
            "upserted": sum(report.upserted.values()),
            "deleted": sum(report.deleted.values()),
            "failed": report.failed,
            "seq_first": report.first_seq,
            "seq_last": report.last_seq,
            "duration_ms": round(report.duration * 1000, 1),
            "tables": sorted(set(report.upserted) | set(report.deleted)),
        }
        if quiet:
            log.debug("batch synced", **fields)
        else:
            log.info("batch synced", **fields)
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
        self.owed = False
        self._ready_sent = False
        self.paused = threading.Event()  # set by the admin API: the loop syncs nothing
        self._nudge: Nudge | None = None  # ends the loop's wait (run() alone: not in a fleet)
        self.last_beat = time.monotonic()  # the loop's last sign of life (admin /healthz)
        self.resync = Resync(self.stop, self._heartbeat)  # what the collections still owe
        self.replaced = ReplacedFile()  # the database file replaced under the loop
        self.triggers = TriggerWatch()  # missing triggers: looked at after each schema change
        self._triggers_due = True
        # Many databases in one process (fleet.py): a failed iteration returns at once (the
        # fleet schedules the retry) and the shared Services are the fleet's to close.
        self.in_fleet = False
        self.last_error = ""  # of the last failed iteration (a fleet's status shows it)

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
            self.busy = self.owed = False
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
            resync_busy = self.resync.step(runtime) if self.resync.owed else False
            report = runtime.syncer.sync_once()
        except CdcError as exc:
            self.busy = self.owed = False
            self.consecutive_failures += 1
            self.last_error = str(exc)
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
            if not self.in_fleet:
                self._sleep(delay)
            return None
        self.consecutive_failures = 0
        self.busy = collections_busy or resync_busy or bool(report.entries)
        # What is known to be waiting (a fleet member reads again only then: a batch that
        # emptied the log needs no second read, the app's next commit moves data_version).
        self.owed = collections_busy or resync_busy or report.full or report.failed > 0
        if self.metrics is not None:
            self.metrics.record_batch(report, runtime.db.path)
            self.metrics.record_success(runtime.sink.up or not report.entries)
        if report.entries:
            log_batch(report, quiet=self.in_fleet)
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
            self.apply_reload(self.factory.reload(self.runtime.services))
        except CdcError as exc:
            self.factory.keep_running_config()
            log.error("reload failed; keeping the previous config", error=str(exc))
        self.notifier.send("READY=1")

    def apply_reload(self, reload: Reload) -> None:
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
            never_used = self.runtime.services is not reload.services
            if reload.services is not None and never_used and not self.in_fleet:
                reload.services.close()  # never switched to (a fleet's are the fleet's)
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
            try:
                fresh.syncer.ensure_collections()
            except CdcError as exc:
                if not exc.retryable:
                    raise
                # Typesense down, or a shared collection not ready: the new runtime prepares its
                # collections before its first batch (retried with backoff like any batch).
                log.warning("collections not ready yet", error=str(exc))
            record_changes(fresh, self.runtime.mappings)
        except BaseException:
            fresh.close()
            raise
        old, self.runtime = self.runtime, fresh
        old.close()
        if old.services is not fresh.services and not self.in_fleet:
            old.services.close()
        if on_swap is not None:
            on_swap()
        self._schema_version = fresh.db.schema_version()
        self.resync.reread(fresh)
        self._triggers_due = True  # a schema change may have dropped triggers
        log.info(why, tables=list(fresh.mappings), **details)

    # -- a database file replaced (a backup restored with `mv`): replaced_file.py, resync.py --

    def _reopen_replaced(self) -> None:
        """The path names another file now: sync that one, from scratch (replaced_file.py)."""
        self.replaced.notice(self.runtime.db)
        self._replace_runtime(self._next_runtime, "database reopened", self._adopt_replacement)

    def _adopt_replacement(self, fresh: Runtime) -> None:
        """The new file must be installed (without the log there is nothing to sync from:
        raises, and the loop retries with backoff until `cdc-daemon install` ran). Then every
        collection owes it a resync, recorded before anything else is done with the new file."""
        self.replaced.report_triggers(fresh)
        require_installed(fresh.db, fresh.names)
        self.resync.begin(fresh, fresh.mappings, self.lock)

    # -- triggers a migration dropped (trigger_watch.py) ---------------------------------------

    def _check_triggers(self) -> None:
        """At start and at each schema change (before the runtime is rebuilt, which may fail):
        trigger_watch.py looks (and puts them back with sync.reinstall_triggers); the tables
        whose triggers are back are resynced (their changes meanwhile were never logged)."""
        runtime = self.runtime
        settings = runtime.settings
        back = self.triggers.look(
            runtime.db, runtime.names, settings.tables, settings.reinstall_triggers, settings.joined
        )
        if back:
            back = roots_reading(back, runtime.syncer.dependencies, settings.tables)
            self.resync.begin(runtime, back)
            self.triggers.forget(runtime.db, runtime.names, back)
            self.resync.reread(runtime)
            log.warning(
                "triggers back; resyncing the tables",
                tables=back,
                reason="changes made while they were missing were never logged",
            )
        self._triggers_due = False

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
            with contextlib.suppress(CdcError):
                Resync.at_stop(self.runtime, lock)
            lock.release()
            log.info("stopped")

    def start_steps(self) -> list[tuple[str, Callable[[], object]]]:
        """What is done once, in order, before the first batch (with the lock held)."""
        runtime = self.runtime
        lock = self.lock
        return [
            ("check the triggers", self._check_triggers),
            # A KMS key: retried with backoff while the KMS is unreachable.
            ("fetch the Typesense API key", runtime.services.api_keys.ready),
            ("check the database file", lambda: self.resync.on_start(runtime, lock)),
            ("compare the tables' mappings", lambda: self.resync.changes_at_start(runtime)),
            ("ensure collections", runtime.syncer.ensure_collections),
        ]

    def _loop(self, once: bool) -> int:
        runtime = self.runtime
        for what, step in self.start_steps():
            if not self._call_until_up(what, step, once):
                return 0
        version = runtime.sink.server_version()
        log.info(
            "running",
            database=str(runtime.db.path),
            tables=list(runtime.mappings),
            once=once,
            typesense=".".join(map(str, version)) if version != (0,) else "version unknown",
        )
        self._nudge = nudge = Nudge()
        try:
            waiter = self._waiter()
        except BaseException:
            nudge.close()
            raise
        try:
            while True:
                if self._reload_requested:
                    self._reload()
                    waiter.close()
                    waiter = self._waiter()  # sync.poll_interval may have changed
                    continue  # a SIGHUP during the reload set `stop` too: reload again
                if self.stop.is_set() and not self._reload_requested:  # SIGHUP wakes us too
                    # A clean stop: what Typesense has not acknowledged is sent on the next start.
                    log.info("stopping; unsent changes stay in the log for the next start")
                    return 0
                self._heartbeat()
                report = self.iteration()
                if report is None:
                    if self.log_gone():
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
            nudge.close()

    def wake(self) -> None:
        """End the loop's wait for a change at once (a resume: its backlog moves no file). Any
        thread; does nothing when the loop is not running."""
        nudge = self._nudge
        if nudge is not None:
            nudge()

    def log_gone(self) -> bool:
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
        if self.metrics is not None and not self.in_fleet:
            self.metrics.close()
        self.notifier.close()
        self.runtime.close()
        if not self.in_fleet:
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
            nudge=self._nudge,
        )
