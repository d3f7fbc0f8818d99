"""Many databases in one process (`databases:`): a Member per file, a few worker threads.

Each database the glob matches gets a `Member` (fleet_member.py: its own Daemon, processor lock
and SQLite connection) on Services shared by all (one Typesense client, one key source). This
module schedules them: a member is run by at most one worker at a time, so each database keeps
its per-key order, and a database that fails (locked, corrupted, its log dropped) waits for its
backoff on a timer, never holding a worker while it waits.

Idle databases cost nothing: one inotify watch on the folder wakes the member whose file (or its
`-wal`/`-journal`) changed; it then compares `PRAGMA data_version` (three more looks within
~30 ms: inotify reports the write a moment before the commit is visible). A member looks at its
file by itself only every IDLE_LOOK seconds (a missed event, a network file system), or every
`sync.poll_interval` while its log holds changes waiting for their backoff. Files created,
renamed or deleted in the folder are noticed from the same watch (and a listing every RESCAN
seconds); a removed file's member stops cleanly: it writes its last acknowledgement and releases
its lock. Its collections stay.

Threads: the main thread reads inotify and the timers and hands due members to the workers
(`databases.workers`); everything a member does runs on the worker that holds it. The admin API
and metrics read members through `Fleet.members()` (a copy of the list) and open connections
of their own.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
import queue
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from cdc_daemon import turns
from cdc_daemon.errors import CdcError, DatabaseError
from cdc_daemon.fleet_member import (
    RETRY_AFTER_CHANGE,
    SETTLE_DELAYS,
    START_BACKOFF_CAP,
    Build,
    FleetReload,
    Member,
    Shared,
    database_file,
    signature,
)
from cdc_daemon.metrics import DatabaseState, Metrics
from cdc_daemon.notify import Notifier
from cdc_daemon.runtime import Services
from cdc_daemon.wake import Nudge

try:
    import inotify_simple
except ImportError:  # not Linux: listings and looks on timers only
    inotify_simple = None

log = structlog.get_logger("cdc_daemon")

RESCAN = 30.0  # seconds between listings of the folder (events do it at once)
ALIAS_TTL = 30.0  # each database's collections are its own: only this process switches them
# Workers that may run a heavy step at once: a start, or a database catching up (a full batch
# read, or a backfill or rebuild under way). Small commits in many databases want many workers
# (each waits for its import; a shared collection's go together), but a hundred backlogs read
# sixteen at a time only crowd Typesense and memory (measured: 58% of the raw ceiling, 336 MB,
# against 81%, 239 MB with four).
HEAVY_WORKERS = 4


@dataclass(frozen=True)
class Folder:
    """The `databases:` section as plain values (wiring.py fills it in)."""

    glob: str  # for the log
    path: Path  # the folder watched
    files: Callable[[], tuple[dict[str, Path], list[str]]]  # database_files: by name, left out
    matches: Callable[[str], bool]  # whether a file name in the folder is a database
    workers: int  # databases.workers (its default is config.py's)
    install: bool = False


class Fleet:
    def __init__(
        self,
        folder: Folder,
        services: Services,
        build: Build,
        stop: threading.Event,
        notifier: Notifier,
        reload: Callable[[Services], FleetReload] | None = None,
    ) -> None:
        """`reload` (SIGHUP): the config read again, or a CdcError naming the key."""
        self.databases = folder
        self.shared = Shared(build, services, stop, folder.install)
        self.stop = stop
        self.notifier = notifier
        self._reloader = reload
        self._reload_requested = False
        self._retired: list[Services] = []  # replaced by a reload: closed at exit
        self.last_beat = time.monotonic()
        self._members: dict[str, Member] = {}
        self._lock = threading.Lock()
        self._timers: list[tuple[float, int, int, str]] = []  # (due, tiebreak, generation, name)
        self._tiebreak = itertools.count()
        self._work: queue.SimpleQueue[Member | None] = queue.SimpleQueue()
        # The main thread sleeps in poll() on inotify and this nudge: a worker's timer due
        # before `_waiting_until` (or a SIGHUP) nudges it.
        self._wake = Nudge()
        self._poll = select.poll()
        self._poll.register(self._wake.fileno(), select.POLLIN)
        self._waiting_until = 0.0
        self._next_rescan = 0.0
        self._inotify: inotify_simple.INotify | None = None
        self._watching = False  # the folder's watch is in place
        self._by_file: dict[str, Member] = {}  # file name → member (main thread only)
        self._left_out: set[str] = set()
        self._heavy = threading.Semaphore(min(HEAVY_WORKERS, folder.workers))

    @property
    def services(self) -> Services:
        return self.shared.services

    @property
    def paused(self) -> threading.Event:
        return self.shared.paused

    @property
    def metrics(self) -> Metrics | None:
        return self.shared.metrics

    @metrics.setter
    def metrics(self, metrics: Metrics | None) -> None:
        self.shared.metrics = metrics

    # -- what status, metrics and the admin API read ---------------------------------------------

    def members(self) -> list[Member]:
        with self._lock:
            return list(self._members.values())

    def database_states(self) -> list[DatabaseState]:
        """For the metrics (a scrape thread): each member's state, and whether its file was
        written since the last call."""
        states = []
        for member in self.members():
            daemon = member.daemon
            missing = frozenset(daemon.triggers.problems) if daemon is not None else frozenset()
            states.append(
                DatabaseState(member.name, member.path, member.state, member.active, missing)
            )
            member.active = False
        return states

    def wake(self, member: Member) -> None:
        """An admin request logged work for the member: its next step runs an iteration."""
        member.force = True
        self._submit(member)

    def resume(self) -> None:
        self.paused.clear()
        for member in self.members():
            member.force = True
            self._submit(member)

    # -- the main thread ------------------------------------------------------------------------

    def run(self) -> int:
        if inotify_simple is not None:
            inotify = self._inotify = inotify_simple.INotify()
            try:
                self._watch()
            except OSError as exc:
                folder = self.databases.path
                raise DatabaseError(
                    f"databases.glob: cannot watch {folder}: {exc.strerror}"
                ) from None
            self._poll.register(inotify.fileno(), select.POLLIN)
        self.services.sink.collections_api.aliases.ttl = ALIAS_TTL
        gc.collect()
        gc.freeze()  # as daemon.py: start-up objects are never scanned again
        gc.set_threshold(50_000, 20, 20)
        workers = [
            threading.Thread(target=self._worker, name=f"cdc-db-{i}", daemon=True)
            for i in range(self.databases.workers)
        ]
        for worker in workers:
            worker.start()
        log.info("running", databases=self.databases.glob, workers=len(workers))
        try:
            self._rescan()
            self.notifier.send("READY=1")  # once: each database then starts on its own
            while not self.stop.is_set():
                self.last_beat = time.monotonic()
                self.notifier.heartbeat()
                if self._reload_requested:
                    self._reload()
                if time.monotonic() >= self._next_rescan:
                    self._rescan()
                self._wait_and_dispatch()
        finally:
            for _ in workers:
                self._work.put(None)
            for worker in workers:
                worker.join()
            for member in self.members():
                member.stop("daemon stopping")
            if self._inotify is not None:
                self._inotify.close()
            self._wake.close()
            for services in self._retired:
                services.close()
            log.info("stopped")
        return 0

    def _watch(self) -> None:
        """Watch the folder (again: a folder deleted and made anew drops the watch)."""
        assert self._inotify is not None and inotify_simple is not None
        flags = inotify_simple.flags
        self._inotify.add_watch(
            str(self.databases.path),
            flags.MODIFY | flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE | flags.DELETE
            | flags.MOVED_FROM | flags.DELETE_SELF | flags.MOVE_SELF,
        )
        self._watching = True

    def _wait_and_dispatch(self) -> None:
        """Sleep until a file event, the first timer, or a worker's new earlier timer."""
        now = time.monotonic()
        with self._lock:
            first = self._timers[0][0] if self._timers else math.inf
            self._waiting_until = min(first, self._next_rescan, now + 1.0)
        wait = max(0.0, self._waiting_until - now)
        for fd, _ in self._poll.poll(math.ceil(wait * 1000)):
            if fd == self._wake.fileno():
                self._wake.taken()
            elif self._inotify is not None:
                self._on_events([(e.name, e.mask) for e in self._inotify.read(timeout=0)])
        self._dispatch_due()

    def _on_events(self, events: list[tuple[str, int]]) -> None:
        if not events:
            return
        assert inotify_simple is not None
        listing = inotify_simple.flags.CREATE | inotify_simple.flags.DELETE
        listing |= inotify_simple.flags.MOVED_TO | inotify_simple.flags.MOVED_FROM
        woken: set[str] = set()
        lost = inotify_simple.flags.IGNORED | inotify_simple.flags.DELETE_SELF
        lost |= inotify_simple.flags.MOVE_SELF
        for name, mask in events:
            if mask & lost:  # the folder itself went: watch it again once it is back
                self._watching = False
                self._next_rescan = 0.0
                continue
            base = database_file(name)
            if mask & listing and self.databases.matches(name):
                self._next_rescan = 0.0  # a database came or went: list the folder now
            # A file renamed over a database (a backup restored with mv) moves no data_version:
            # its member is woken too, and its step sees the new file identity (as wake.py).
            woken.add(base)
        if self._next_rescan == 0.0:
            self._rescan()
        for base in woken:
            member = self._by_file.get(base)
            if member is None:
                continue
            member.active = True
            daemon = member.daemon
            if member.started and member.state == "syncing":
                member.settle = len(SETTLE_DELAYS)
                self._submit(member)
            elif member.started and daemon is not None and daemon.runtime.db.replaced():
                self._submit(member)  # failing, but a file was moved over it: look now
            elif member.state == "not_installed" and signature(member.path) != member.signature:
                # e.g. `cdc-daemon install` ran. Not at once after its last try: the try's own
                # opening and closing of the file is an event too (it writes nothing).
                since = time.monotonic() - member.tried_at
                self._after(member, max(0.0, RETRY_AFTER_CHANGE - since))
            # Else (failing, locked): its backoff timer tries it again.

    def _dispatch_due(self) -> None:
        now = time.monotonic()
        due: list[Member] = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                _, _, generation, name = heapq.heappop(self._timers)
                member = self._members.get(name)
                if member is not None and member.generation == generation:
                    due.append(member)
        for member in due:
            self._submit(member)

    def _rescan(self) -> None:
        self._next_rescan = time.monotonic() + RESCAN
        if self._inotify is not None and not self._watching:
            try:
                self._watch()
                log.info("watching the folder again", folder=str(self.databases.path))
            except OSError:
                self._next_rescan = time.monotonic() + 1.0  # not back yet: look again soon
        try:
            found, left_out = self.databases.files()
        except CdcError as exc:
            if self.databases.path.is_dir():  # can't be listed now: its databases go on
                log.error("databases not listed", error=str(exc))
                return
            found, left_out = {}, []  # the folder is gone, and its databases with it
        for line in set(left_out) - self._left_out:
            log.warning("database left out", problem=line)
        self._left_out = set(left_out)
        with self._lock:
            known = dict(self._members)
        for name, member in known.items():
            if found.get(name) != member.path:
                with self._lock:
                    del self._members[name]
                self._retire(member)
        for name, path in found.items():
            if name not in known or known[name].path != path:
                member = Member(name, path)
                with self._lock:
                    self._members[name] = member
                log.info("database found", database=name, path=str(path))
                self._submit(member)
        with self._lock:
            self._by_file = {m.path.name: m for m in self._members.values()}

    def _retire(self, member: Member) -> None:
        """A file gone from the folder: its member stops once no worker holds it."""
        log.info("database removed", database=member.name, path=str(member.path))
        with self._lock:
            member.generation += 1  # no timer runs it again
            running = member.scheduled
            if running:
                member.state = "stopping"
        if not running:
            member.stop("database removed")

    # -- SIGHUP ---------------------------------------------------------------------------------

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake()

    def _reload(self) -> None:
        """Read the config again; each member then applies it on its worker, or keeps its
        previous config with an error line naming the key (daemon.py's reload, per database)."""
        self._reload_requested = False
        if self._reloader is None:
            return
        self.notifier.send("RELOADING=1")
        try:
            reload = self._reloader(self.services)
        except CdcError as exc:
            log.error("reload failed; keeping the previous config", error=str(exc))
            self.notifier.send("READY=1")
            return
        if reload.services is not None:
            self._retired.append(self.shared.services)
            self.shared.services = reload.services
        self.shared.build = reload.build
        reload.apply()
        with self._lock:
            for member in self._members.values():
                member.reload = reload
        for member in self.members():
            member.force = True
            self._submit(member)
        log.info("config reloaded", changed=reload.changed)
        self.notifier.send("READY=1")

    # -- scheduling -----------------------------------------------------------------------------

    def _submit(self, member: Member) -> None:
        """Run the member on a worker now (once: if it is queued or running, once more after)."""
        with self._lock:
            if member.scheduled:
                member.again = True
                return
            member.scheduled = True
            member.generation += 1
        self._work.put(member)

    def _after(self, member: Member, seconds: float) -> None:
        due = time.monotonic() + seconds
        with self._lock:
            member.generation += 1
            entry = (due, next(self._tiebreak), member.generation, member.name)
            heapq.heappush(self._timers, entry)
            earlier = due < self._waiting_until
            if earlier:
                self._waiting_until = due
        if earlier:  # the main thread sleeps past it: wake it to sleep less
            self._wake()

    def _worker(self) -> None:
        while True:
            member = self._work.get()
            if member is None:
                return
            # Every log line of the step names its database (bound for this thread until the
            # next step: cheaper than a context manager, at several thousand steps a second).
            structlog.contextvars.bind_contextvars(database=member.name)
            heavy = member.heavy()
            if heavy:
                self._heavy.acquire()
            try:
                with turns.turn():
                    delay = member.step(self.shared)
            except Exception as exc:  # a bug must not end the worker: the member is retried
                log.exception("database step failed", database=member.name, error=str(exc))
                delay = START_BACKOFF_CAP
            finally:
                if heavy:
                    self._heavy.release()
            with self._lock:
                gone = self._members.get(member.name) is not member
                again, member.again, member.scheduled = member.again, False, False
            if gone:
                member.stop("database removed")
            elif again or delay == 0:
                self._submit(member)
            elif delay is not None:
                self._after(member, delay)
