"""The running daemon's watch over its triggers: a migration that rebuilds a table (the 12-step
ALTER, `sqlite-utils transform`) drops them, and from then on the table's changes are never
logged.

Triggers only appear, disappear or change together with PRAGMA schema_version, so the daemon
looks at start and after every schema change (daemon.py), not on every iteration. While some are
missing or outdated, the error is logged at once and then again every REPORT_INTERVAL: an
iteration can take milliseconds under load, and one line a minute keeps the problem in view
without burying every other line (`status`, the admin API and `cdc_triggers_installed` show it
all the time). Each table found without its triggers is recorded in the state table
(`triggers-missing:<table>` = unix time first seen), so that when they come back (`install` by
the operator, by the daemon with `sync.reinstall_triggers`, while running or stopped) the table is
resynced: the changes made meanwhile were never logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType

import structlog

from cdc_daemon.database import Database, TableInfo
from cdc_daemon.log_schema import TRIGGERS_MISSING_PREFIX, LogTables, StateStore
from cdc_daemon.triggers import ensure_log_is_ours, install, problems_by_table

REPORT_INTERVAL = 60.0  # seconds between repeats of the error while triggers stay missing
MISSING_EVENT = "triggers missing or outdated: changes to these tables are not logged"
log = structlog.get_logger("cdc_daemon.triggers")


def missing_since(db: Database, names: LogTables) -> dict[str, float]:
    """Tables recorded without their triggers → unix time first seen (for `status`)."""
    recorded = StateStore(db, names).with_prefix(TRIGGERS_MISSING_PREFIX)
    return {table: float(since) for table, since in recorded.items()}


def configured_tables(db: Database, tables: Iterable[str]) -> list[TableInfo]:
    """Every configured table that exists and has a key, as the schema is now: also one
    the runtime skips for a problem of its own (a `where` that no longer compiles), whose
    triggers still log its changes (and `install` would remove them as not configured)."""
    infos = []
    for table in tables:
        if db.table_exists(table):
            info = db.table_info(table)
            if info.key:
                infos.append(info)
    return infos


class TriggerWatch:
    """What the daemon knows of its triggers since it last looked; `report()` each iteration."""

    def __init__(
        self,
        interval: float = REPORT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.wall_clock = wall_clock
        self.problems: dict[str, list[str]] = {}
        self._next_report = 0.0

    def check(
        self,
        db: Database,
        names: LogTables,
        tables: list[TableInfo],
        joined: Mapping[str, Sequence[str]] = MappingProxyType({}),
    ) -> list[str]:
        """Look at the triggers again (at start, after a schema change) of the configured
        `tables` and the dependency tables (`joined`). Records the tables found without them;
        returns the recorded ones whose triggers are current again (to be resynced; their
        records are removed by `forget` once that resync is recorded)."""
        problems = problems_by_table(db, names, tables, joined)
        if not ensure_log_is_ours(db, names):  # nothing can be recorded without the log
            problems.setdefault(names.log, []).insert(0, f"log table {names.log!r} is missing")
            self._set(problems)
            return []
        configured = {info.name for info in tables} | set(joined)
        recorded = missing_since(db, names)
        new = [t for t in problems if t in configured and t not in recorded]
        if new:
            now = self.wall_clock()
            state = StateStore(db, names)
            with db.write() as conn:
                for table in new:
                    state.set_default(TRIGGERS_MISSING_PREFIX + table, now, conn)
        self._set(problems)
        return [t for t in recorded if t in configured and t not in problems]

    def look(
        self,
        db: Database,
        names: LogTables,
        tables: Iterable[str],
        reinstall: bool,
        joined: Mapping[str, Sequence[str]] = MappingProxyType({}),
    ) -> list[str]:
        """The daemon's check (at start, after a schema change): `check` on the configured
        `tables` as the schema is now (not the runtime's infos: a rebuild may fail), putting the
        triggers back first when `reinstall` (sync.reinstall_triggers). The tables to resync
        (a dependency table among them: the tables whose documents read it)."""
        infos = configured_tables(db, tables)
        back = self.check(db, names, infos, joined)
        if self.problems and reinstall:
            self._reinstall(db, names, infos, joined)
            back = self.check(db, names, infos, joined)
        return back

    def _reinstall(
        self,
        db: Database,
        names: LogTables,
        infos: list[TableInfo],
        joined: Mapping[str, Sequence[str]],
    ) -> None:
        """What `cdc-daemon install` does (one transaction, idempotent), with the clear line."""
        missing = sorted(self.problems)
        changes = install(db, names, infos, joined)
        log.warning(
            "triggers reinstalled",
            tables=missing,
            changes=changes,
            reason="a migration dropped or changed them; sync.reinstall_triggers is on",
        )

    def forget(self, db: Database, names: LogTables, tables: list[str]) -> None:
        """The resync of these tables is recorded: they are no longer owed anything here."""
        StateStore(db, names).delete(*(TRIGGERS_MISSING_PREFIX + t for t in tables))

    def _set(self, problems: dict[str, list[str]]) -> None:
        if problems != self.problems:
            self._next_report = self.clock()  # something changed: say so at once
        self.problems = problems

    def report(self) -> None:
        """Log the problems when due: at once after a change, then every `interval`."""
        if not self.problems or self.clock() < self._next_report:
            return
        self._next_report = self.clock() + self.interval
        log.error(
            MISSING_EVENT,
            tables=sorted(self.problems),
            problems={t: lines for t, lines in sorted(self.problems.items())},
            fix="run `cdc-daemon install` (or set sync.reinstall_triggers: true); the daemon then"
            " resyncs these tables",
            repeats_every_s=self.interval,
        )
