"""What `status` (the command and the admin API) reports: log, dead letters, backfills, rebuilds,
resyncs, missing triggers and what a reload left to clear."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cdc_daemon.backfill import backfills_in_progress
from cdc_daemon.database import Database, ProcessorLock, TableInfo
from cdc_daemon.errors import CdcError
from cdc_daemon.evolution import rebuilds_in_progress
from cdc_daemon.log_schema import LAST_SYNCED, LogTables, StateStore
from cdc_daemon.log_status import LogStatus
from cdc_daemon.reconfigure import leftover_summary
from cdc_daemon.sweep import owed_resyncs
from cdc_daemon.trigger_watch import missing_since
from cdc_daemon.triggers import problems_by_table


def sync_status(
    db: Database,
    names: LogTables,
    tables: list[str],
    joined: Mapping[str, Sequence[str]] = MappingProxyType({}),
) -> dict[str, Any]:
    """`{"backlog", "oldest_age_seconds", "dead_letters", "tables": {...}}` (README, Commands)."""
    status = LogStatus(db, names).summary(tables)
    for table, logged in backfills_in_progress(db, names).items():
        status["tables"].setdefault(table, {})["backfill_logged_rows"] = logged
    for table, collection in rebuilds_in_progress(db, names).items():
        status["tables"].setdefault(table, {})["rebuilding_into"] = collection
    for table, phase in owed_resyncs(db, names).items():  # file replaced, reload, triggers back
        status["tables"].setdefault(table, {})["resync"] = phase
    for table, leftovers in leftover_summary(db, names).items():  # a reload's old documents
        status["tables"].setdefault(table, {})["leftovers"] = leftovers
    _add_trigger_problems(status, db, names, tables, joined)
    status.update(last_synced(db, names))
    return status


def last_synced(db: Database, names: LogTables) -> dict[str, float | None]:
    """When the processor last acknowledged synced changes (recorded with an ack, at most about
    once a second: changelog.py), and how long ago; None when never."""
    value = StateStore(db, names).get(LAST_SYNCED)
    if value is None:
        return {"last_synced_at": None, "last_synced_seconds_ago": None}
    at = float(value)
    return {"last_synced_at": at, "last_synced_seconds_ago": round(max(0.0, time.time() - at), 3)}


SYNCING_COMMANDS = ("run", "backfill", "verify")  # hold the processor lock to sync


def syncing_process(database: Path) -> dict[str, Any]:
    """Whether a daemon runs for this database: the process holding its processor lock (the
    daemon, or a `backfill` / `verify --repair` syncing without one), its pid and command.
    `lock_holder`: "cdc-daemon", "other" (the pid runs another program) or "unknown"."""
    lock = ProcessorLock(database)
    if not lock.busy():
        return {"daemon_running": False, "syncing_pid": None, "syncing_command": None,
                "lock_holder": None}
    holder = lock.holder()
    pid = int(holder) if holder.isdigit() else None
    command = _command_of(pid) if pid is not None else None
    return {
        # Unknown (no /proc to read): most likely the daemon. Another command (`uninstall`,
        # `backfill`) or another program holding it is no daemon.
        "daemon_running": command in ("run", None),
        "syncing_pid": pid,
        "syncing_command": command or None,
        "lock_holder": "unknown" if command is None else "cdc-daemon" if command else "other",
    }


def _command_of(pid: int) -> str | None:
    """The cdc-daemon command process `pid` runs, from /proc: "" when it runs another program
    (or no command), None where /proc is unreadable."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    # The first of these after the program's own name (`--config FILE` may come before).
    starts = [i for i, arg in enumerate(args) if Path(arg).name in ("cdc_daemon", "cdc-daemon")]
    if not starts:
        return ""
    rest = iter(args[starts[0] + 1 :])
    for arg in rest:
        if arg == "--config":
            next(rest, None)
        elif not arg.startswith("-"):
            return arg  # the command: `run`, or `backfill`, `uninstall`, ... (no daemon)
    return ""


def _add_trigger_problems(
    status: dict[str, Any],
    db: Database,
    names: LogTables,
    tables: list[str],
    joined: Mapping[str, Sequence[str]],
) -> None:
    """Per table: its missing or outdated triggers (read now) and since when the daemon has
    seen them missing; `trigger_problems` on top lists every line (the log's guard too). A
    table that can't be read is left to the caller (cli.py shows its problem)."""
    infos: list[TableInfo] = []
    for table in tables:
        try:
            info = db.table_info(table)
        except CdcError:
            continue
        if info.key:  # without a key there are no triggers to expect (status says why)
            infos.append(info)
    problems = problems_by_table(db, names, infos, joined)
    status["trigger_problems"] = [
        f"table {table!r}: {line}" for table, lines in problems.items() for line in lines
    ]
    for table, lines in problems.items():
        if table in tables or table in joined:
            status["tables"].setdefault(table, {})["trigger_problems"] = lines
    for table, since in missing_since(db, names).items():
        if table in tables or table in joined:
            status["tables"].setdefault(table, {})["triggers_missing_since"] = since
