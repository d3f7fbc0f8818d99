"""One database of a `databases:` daemon: its life, step by step (fleet.py schedules the steps).

A `Member` opens its database (installing it first when `databases.install` says so and every
configured table is there), takes its processor lock, runs the Daemon's start steps, and then,
each time it is woken, looks at its file (`PRAGMA data_version`, the file's identity) and runs
one Daemon iteration when something changed or is owed. A step returns the seconds until the
member is due again; a failing database is not opened or iterated again before its backoff ends.
Every step of one member runs on the worker thread that holds it (fleet.py: one at a time).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from cdc_daemon.backfill import Backfill
from cdc_daemon.daemon import Daemon, Factory, Reload
from cdc_daemon.database import (
    DATABASE_SIDE_FILES,
    ProcessorLock,
    file_identity,
    forget_database_file,
    quote_ident,
)
from cdc_daemon.errors import CdcError
from cdc_daemon.metrics import Metrics
from cdc_daemon.notify import Notifier
from cdc_daemon.resync import Resync
from cdc_daemon.retry import backoff_delay
from cdc_daemon.runtime import Runtime, Services
from cdc_daemon.triggers import install_plan, install_problem

log = structlog.get_logger("cdc_daemon")

IDLE_LOOK = 30.0  # seconds between an idle database's own looks at its data_version
# After an event, look again after these delays: a commit's last write comes before SQLite
# shows it to readers (an fsync in between with synchronous=FULL). Each look is a step, and each
# commit's event is followed by the acknowledgement's own: two looks, not wake.py's six. (Events
# of a member's own write can't be told apart: the -wal's size and mtime, to the kernel's clock
# tick, can be the same after an app's write just after it; skipping them lost wakes.)
SETTLE_DELAYS = (0.003, 0.025)
NOT_INSTALLED_LOOK = 30.0  # an uninstalled file: opened again only if it changed since
RETRY_AFTER_CHANGE = 1.0  # a file not synced that changes is tried again at most this often
START_BACKOFF_CAP = 60.0
MEMBER_CACHE_KIB = 512  # each database connection's page cache (SQLite's default: 2 MiB)
# Prepared statements kept per connection (APSW's default 100; ~3.5 KB each): a visit uses ~15
# (measured: 16 re-prepared some at every visit, a quarter more CPU; 100 cost ~27 MB more RSS
# than 24 for 1,000 databases).
MEMBER_STATEMENTS = 24

# A member's runtime and factory, built from the config narrowed to its file (wiring.py).
Build = Callable[[Path, Services, threading.Event], tuple[Runtime, Factory]]


@dataclass
class FleetReload:
    """A re-read `databases:` config, checked (wiring.py); each member applies it itself."""

    build: Build  # members from the new config
    services: Services | None  # new shared Services (the `typesense:` section changed)
    changed: list[str]
    apply: Callable[[], None]  # the log format, the admin API's keys


@dataclass
class Shared:
    """What every member uses; a reload replaces `build` and `services` (fleet.py)."""

    build: Build
    services: Services
    stop: threading.Event
    install: bool = False  # databases.install
    metrics: Metrics | None = None
    paused: threading.Event = field(default_factory=threading.Event)


@dataclass
class Member:
    """One database of the fleet. Its fields are written by the worker running it (one at a
    time); `state` and `problem` are read by status and metrics from other threads."""

    name: str
    path: Path
    state: str = "starting"  # starting, syncing, failing, not_installed, locked, stopped
    problem: str | None = None
    daemon: Daemon | None = None
    steps_done: int = 0  # of the Daemon's start steps
    started: bool = False  # every start step done: syncing
    failures: int = 0  # start failures in a row
    version: int | None = None  # data_version at the last look
    identity: tuple[int, int] | None = None  # file identity at the last look (mv over it)
    settle: int = 0  # looks left after an event
    force: bool = True  # its next step runs an iteration whatever the file's data_version
    active: bool = True  # changed since the metrics last read it
    tried_at: float = 0.0  # monotonic time of the last start attempt
    signature: object = None  # the file's signature() at that attempt
    reported: set[str] = field(default_factory=set)  # problems logged once
    reload: FleetReload | None = None  # a SIGHUP's config, applied by its next step
    # scheduling (fleet.py, under its lock): queued or running on a worker; woken meanwhile
    scheduled: bool = False
    again: bool = False
    generation: int = 0  # bumped on each schedule: older timer entries are ignored

    # -- one step ---------------------------------------------------------------------------------

    def heavy(self) -> bool:
        """Its next step starts it, or reads a full batch (fleet.py: HEAVY_WORKERS)."""
        daemon = self.daemon
        return daemon is None or not self.started or self.force or daemon.owed

    def step(self, shared: Shared) -> float | None:
        """Do what is due; the seconds until the member is due again (0: at once)."""
        if shared.stop.is_set():
            return None
        reload, self.reload = self.reload, None
        if reload is not None:
            self._apply_reload(shared, reload)
        if self.daemon is None or not self.started:
            return self._start(shared)
        daemon = self.daemon
        if shared.paused.is_set():
            return IDLE_LOOK  # Fleet.resume() wakes every member
        db = daemon.runtime.db
        force, self.force = self.force, False
        # The looks events asked for before this step; an event during it asks for its own.
        looks, self.settle = self.settle, 0
        identity = file_identity(self.path)
        if not (force or daemon.owed or daemon.consecutive_failures):
            # Woken by an event or a timer: sync only when the file changed, or changes wait.
            # A file replaced (mv) or gone is never read through the old connection (SQLite
            # would take the new file's -journal for its own hot journal and delete it under
            # the app's commit): the iteration reopens it, as wake.py looks at identity first.
            # A read that fails (locked, corrupted) is the iteration's to report and back off.
            version = self.version
            if identity == self.identity:
                try:
                    version = db.data_version()
                except CdcError:
                    version = None
            changed = version is None or version != self.version or identity != self.identity
            self.version, self.identity = version, identity or self.identity  # gone: kept
            if not changed and not _log_waiting(daemon):
                return self._settle_look(looks) or IDLE_LOOK
        if identity is None:
            return IDLE_LOOK  # the file is gone: the folder's listing retires the member
        if shared.install and db.replaced():
            self._install_replacement(shared)
        report = daemon.iteration()
        if report is None:
            self.state, self.problem = "failing", daemon.last_error
            if daemon.log_gone():
                self.stop("change log dropped")
                self.state = "not_installed"
                return NOT_INSTALLED_LOOK
            return backoff_delay(daemon.consecutive_failures)
        self.state, self.problem = "syncing", None
        if daemon.owed:
            return 0
        # Caught up: a batch that emptied the log is not read again (the app's next commit
        # wakes the member; what this iteration logged itself, the next look's _log_waiting
        # sees). Woken by an event but nothing to read yet: the commit it announced may show
        # only in a moment (data_version had moved for an earlier commit already synced).
        if not report.entries and (settle := self._settle_look(looks)) is not None:
            return settle
        return daemon.runtime.settings.poll_interval if _log_waiting(daemon) else IDLE_LOOK

    def _settle_look(self, looks: int) -> float | None:
        """The wait until the next of the `looks` an event asked for (SETTLE_DELAYS), if any."""
        if looks <= 0:
            return None
        self.settle = max(self.settle, looks - 1)
        return SETTLE_DELAYS[len(SETTLE_DELAYS) - looks]

    def stop(self, why: str | None) -> None:
        """Write its last acknowledgement, rotate its file token (when it had started), release
        its lock. `why` None: a failed start, opened again from scratch later."""
        daemon, started = self.daemon, self.started
        self.daemon, self.steps_done, self.started = None, 0, False
        if why is not None:
            self.state = "stopped"
        if daemon is None:
            return
        opened = daemon.runtime.db.identity
        try:
            if started:
                with contextlib.suppress(CdcError):
                    Resync.at_stop(daemon.runtime, daemon.lock)
            daemon.close()
        finally:
            daemon.lock.release()
        if why == "database removed":
            forget_database_file(opened)
            if daemon.metrics is not None:
                daemon.metrics.forget_database(daemon.runtime.db.path)
        if why is not None:
            log.info("database stopped", database=self.name, reason=why)

    # -- starting ---------------------------------------------------------------------------------

    def _start(self, shared: Shared) -> float | None:
        """Open the runtime, take the lock and run the Daemon's start steps; on a failure, the
        seconds until it is tried again (its state says why)."""
        now = signature(self.path)
        if self.state == "not_installed" and now == self.signature:
            return NOT_INSTALLED_LOOK  # unchanged since it was found so: not opened again
        self.tried_at, self.signature = time.monotonic(), now
        try:
            if self.daemon is None:
                self.daemon = self._open(shared)
            daemon = self.daemon
            steps = daemon.start_steps()
            while self.steps_done < len(steps):
                steps[self.steps_done][1]()
                self.steps_done += 1
        except _NotInstalled as exc:
            self._report("not_installed", str(exc))
            return NOT_INSTALLED_LOOK
        except _Locked as exc:
            self._report("locked", str(exc))
            self.failures += 1
            return backoff_delay(self.failures, cap=START_BACKOFF_CAP)
        except CdcError as exc:
            self._report("failing", str(exc))
            self.failures += 1
            if self.daemon is not None and self.steps_done == 0:
                self.stop(None)  # opened again from scratch
            return backoff_delay(self.failures, cap=START_BACKOFF_CAP)
        self.failures = 0
        self.started = True
        self.force = True  # backfills, rebuilds and resyncs are driven by iterations
        self.state, self.problem = "syncing", None
        self.reported.clear()
        self.version = daemon.runtime.db.data_version()
        self.identity = file_identity(self.path)
        log.info("database syncing", database=self.name, tables=list(daemon.runtime.mappings))
        return 0  # its first iteration at once

    def _open(self, shared: Shared) -> Daemon:
        self.reload = None  # opened from the current config
        runtime, factory = shared.build(self.path, shared.services, shared.stop)
        lock = ProcessorLock(runtime.db.path)
        try:
            if install_problem(runtime.db, runtime.names) is not None:
                self._install(shared, runtime)
            runtime.db.require_writable()
            if not lock.acquire():
                raise _Locked(f"another cdc-daemon (pid {lock.holder()}) is syncing it")
        except BaseException:
            runtime.close()
            raise
        daemon = Daemon(runtime, factory, Notifier({}), shared.metrics)
        daemon.in_fleet = True
        daemon.lock = lock
        return daemon

    def _install(self, shared: Shared, runtime: Runtime) -> None:
        """A database without the change log: installed with a backfill of every table when
        `databases.install` is on and every configured table is there (never into a file that
        is not yet the app's database: one being copied, or created but not yet migrated);
        else _NotInstalled, looked at again when the file changes."""
        names = runtime.names
        if not shared.install or runtime.db.table_exists(names.log):
            raise _NotInstalled(
                f"no change log ({names.log}): run `cdc-daemon install --database {self.name}`"
                f" then `cdc-daemon backfill --database {self.name}`, or set"
                " databases.install: true"
            )
        waiting = runtime.syncer.broken
        if waiting:
            raise _NotInstalled(
                "not installed until every configured table is there: "
                + "; ".join(waiting.values())
            )
        _install_and_backfill(runtime)
        log.info("database installed; backfilling", database=self.name)

    def _install_replacement(self, shared: Shared) -> None:
        """A file moved over the database that has no change log (`databases.install`): it is
        installed, so that the iteration adopts it as any replaced file (daemon.py: every
        collection is resynced from it, documents only the old file had swept)."""
        try:
            runtime, _factory = shared.build(self.path, shared.services, shared.stop)
        except CdcError:
            return  # the iteration reports what is wrong with the file
        try:
            if install_problem(runtime.db, runtime.names) is not None:
                self._install(shared, runtime)
        except CdcError as exc:
            log.warning("replaced database not installed", database=self.name, problem=str(exc))
        finally:
            runtime.close()

    def _report(self, state: str, problem: str) -> None:
        """Log a problem once (again when it changes); status shows it meanwhile."""
        self.state, self.problem = state, problem
        if problem not in self.reported:
            self.reported = {problem}
            log.warning("database not synced", database=self.name, state=state, problem=problem)

    # -- SIGHUP -----------------------------------------------------------------------------------

    def _apply_reload(self, shared: Shared, reload: FleetReload) -> None:
        daemon = self.daemon
        if daemon is None or not self.started:
            return  # opened from the new config when it starts
        factories: list[Factory] = []

        def build(services: Services) -> Runtime:
            runtime, factory = reload.build(self.path, services, shared.stop)
            factories.append(factory)
            return runtime

        def swapped() -> None:
            daemon.factory = factories[-1]

        try:
            daemon.apply_reload(Reload(build, reload.services, reload.changed, swapped))
        except CdcError as exc:
            log.error(
                "reload failed for this database; it keeps its previous config",
                database=self.name,
                error=str(exc),
            )


class _NotInstalled(CdcError):
    pass


class _Locked(CdcError):
    pass


def _log_waiting(daemon: Daemon) -> bool:
    """Changes in the log not synced by the last iteration (backoff, a skipped table), or
    missing triggers to report: look again at poll_interval, not IDLE_LOOK."""
    runtime = daemon.runtime
    if daemon.triggers.problems or runtime.syncer.broken:
        return True
    try:
        first = runtime.db.scalar(f"SELECT 1 FROM {quote_ident(runtime.names.log)} LIMIT 1")
    except CdcError:  # locked, corrupted: the iteration reports it and backs off
        return True
    return first is not None


def _install_and_backfill(runtime: Runtime) -> None:
    """`databases.install`: the log, the triggers and a backfill of every table, in one
    transaction (a crash leaves the file as it was, or installed with its backfills due)."""
    db, names = runtime.db, runtime.names
    backfill = Backfill(db, names)
    with db.write() as conn:
        statements, _changes = install_plan(db, names, runtime.tables, runtime.settings.joined)
        for sql in statements:
            conn.execute(sql)
        for table in runtime.mappings:
            backfill.start(table, conn)


def lighten(runtime: Runtime) -> None:
    """A member among a thousand: no batch read ahead and held between its turns (5,000
    documents each), a small page cache, and in WAL mode no fsync per acknowledgement (safe in
    WAL mode: a power cut can only lose the last acknowledgements, whose changes are sent
    again; the app's own connections keep their setting)."""
    runtime.syncer.read_ahead = False
    # Batches of the bound from the start: a member's backlog is read in a few of its turns
    # (the bound is reached after a few full batches otherwise); caught up, it shrinks again.
    runtime.syncer.sizes.current = runtime.syncer.sizes.ceiling
    db = runtime.db
    try:
        db.query(f"PRAGMA cache_size = -{MEMBER_CACHE_KIB}")
        if str(db.scalar("PRAGMA journal_mode")).lower() == "wal":
            db.query("PRAGMA synchronous = NORMAL")
    except CdcError:  # locked or corrupted now: the defaults then; the loop reports it
        pass


def signature(path: Path) -> object:
    """What changes when the app writes the database (in rollback or WAL mode)."""
    found: list[tuple[int, int, int] | None] = []
    for file in (path, path.with_name(path.name + "-wal")):
        try:
            st = file.stat()
        except OSError:
            found.append(None)
            continue
        found.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(found)


def database_file(name: str) -> str:
    """The database a file of the folder belongs to: `a.db-wal` → `a.db`."""
    for suffix in DATABASE_SIDE_FILES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
