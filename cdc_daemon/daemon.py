"""Wiring and the loop: builds every object from the config; runs sync_once under signals."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

import structlog

from cdc_daemon.changelog import ChangeLog
from cdc_daemon.config import Config, read_api_key
from cdc_daemon.database import Database, ProcessorLock, TableInfo
from cdc_daemon.errors import CdcError, ConfigError, DatabaseError
from cdc_daemon.logs import register_secret
from cdc_daemon.notify import Notifier
from cdc_daemon.retry import backoff_delay, call_with_retry
from cdc_daemon.schema import TableMapping, build_mapping
from cdc_daemon.sink import TypesenseSink
from cdc_daemon.sync import BatchReport, Syncer
from cdc_daemon.triggers import LogTables, ensure_log_is_ours, trigger_problems
from cdc_daemon.wake import ChangeWaiter

log = structlog.get_logger("cdc_daemon")

ONCE_MAX_FAILURES = 8  # `run --once` gives up after this many failed tries in a row (~1 minute)


@dataclass
class Runtime:
    """Everything a command needs, built from one Config. Close it when done."""

    config: Config
    db: Database
    names: LogTables
    tables: list[TableInfo]
    mappings: dict[str, TableMapping]
    changelog: ChangeLog
    sink: TypesenseSink
    syncer: Syncer
    stop: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        self.sink.close()
        self.db.close()


def open_tables(config: Config) -> tuple[Database, list[TableInfo], dict[str, TableMapping]]:
    """Open the database and check every configured table before any other SQL runs."""
    db = Database(config.database)
    try:
        infos = []
        for i, table in enumerate(config.tables):
            if not db.table_exists(table.table):
                raise ConfigError(
                    f"tables[{i}].table: table {table.table!r} does not exist in {config.database}"
                )
            infos.append(db.table_info(table.table))
        mappings = {
            t.table: build_mapping(info, t, where=f"tables[{i}]")
            for i, (t, info) in enumerate(zip(config.tables, infos, strict=True))
        }
        if config.log_table in mappings:
            raise ConfigError(f"log_table: {config.log_table!r} is also a configured table")
    except BaseException:
        db.close()
        raise
    return db, infos, mappings


def build_runtime(config: Config) -> Runtime:
    api_key = read_api_key(config.typesense)
    register_secret(api_key)
    db, infos, mappings = open_tables(config)
    names = LogTables(config.log_table)
    changelog = ChangeLog(db, names, config.sync.max_attempts)
    sink = TypesenseSink(config.typesense.nodes, lambda: api_key, config.typesense.timeout)
    syncer = Syncer(db, changelog, sink, mappings, config.sync.batch_size)
    return Runtime(config, db, names, infos, mappings, changelog, sink, syncer)


def require_installed(db: Database, names: LogTables) -> None:
    if not ensure_log_is_ours(db, names):
        raise DatabaseError(
            f"{db.path}: log table {names.log!r} is missing: run `cdc-daemon install`"
        )


def log_batch(report: BatchReport) -> None:
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
    log.info("batch synced", **fields)
    for error in report.errors:
        log.warning("document failed", error=error)
    if report.dead_lettered:
        log.warning("dead-lettered", count=report.dead_lettered)


class Daemon:
    """The long-running loop. Signal handlers only set flags; `iteration()` does the work."""

    def __init__(self, runtime: Runtime, notifier: Notifier | None = None) -> None:
        self.runtime = runtime
        self.notifier = notifier or Notifier()
        self.stop = runtime.stop
        self.consecutive_failures = 0
        self.last_success = 0.0
        self._ready_sent = False
        self._last_watchdog = 0.0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            log.warning("SIGHUP received: config reload is not implemented yet; ignored")
            return
        log.info("stopping", signal=signal.Signals(signum).name)
        self.notifier.send("STOPPING=1")
        self.stop.set()

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def iteration(self) -> BatchReport | None:
        """One loop step. None when it failed (the error is logged and backed off)."""
        try:
            report = self.runtime.syncer.sync_once()
        except CdcError as exc:
            self.consecutive_failures += 1
            delay = backoff_delay(self.consecutive_failures)
            log.warning(
                "sync failed",
                error=str(exc),
                kind=type(exc).__name__,
                retry_in_s=round(delay, 2),
                failures=self.consecutive_failures,
            )
            self.stop.wait(delay)
            return None
        self.consecutive_failures = 0
        self.last_success = time.time()
        if report.entries:
            log_batch(report)
        return report

    def _heartbeat(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is not None and time.monotonic() - self._last_watchdog >= interval:
            self.notifier.send("WATCHDOG=1")
            self._last_watchdog = time.monotonic()

    def run(self, once: bool = False) -> int:
        runtime = self.runtime
        require_installed(runtime.db, runtime.names)
        lock = ProcessorLock(runtime.db.path)
        if not lock.acquire():
            raise DatabaseError(
                f"{runtime.db.path}: another cdc-daemon (pid {lock.holder()}) is syncing it"
            )
        waiter: ChangeWaiter | None = None
        try:
            problems = trigger_problems(runtime.db, runtime.names, runtime.tables)
            for problem in problems:
                log.error("trigger problem", problem=problem)
            created = call_with_retry(
                "ensure collections", runtime.syncer.ensure_collections, self.stop
            )
            for name in created:
                log.info("collection created", collection=name)
            waiter = ChangeWaiter(
                runtime.db.path,
                runtime.db.data_version,
                runtime.config.sync.poll_interval,
                self.stop,
            )
            log.info(
                "running", database=str(runtime.db.path), tables=list(runtime.mappings), once=once
            )
            while not self.stop.is_set():
                self._heartbeat()
                report = self.iteration()
                if report is None:
                    if once and self.consecutive_failures >= ONCE_MAX_FAILURES:
                        log.error("giving up", failures=self.consecutive_failures)
                        return 1
                    continue
                if not self._ready_sent:
                    self.notifier.send("READY=1")
                    self._ready_sent = True
                if report.entries:
                    continue  # more may be waiting: read again before sleeping
                if once:
                    break
                waiter.wait()
        finally:
            if waiter is not None:
                waiter.close()
            lock.release()
        log.info("stopped")
        return 0
