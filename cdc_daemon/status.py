"""What `status` (the command and the admin API) reports: log, dead letters, backfills, rebuilds."""

from __future__ import annotations

from typing import Any

from cdc_daemon.backfill import backfills_in_progress
from cdc_daemon.changelog import ChangeLog
from cdc_daemon.database import Database
from cdc_daemon.evolution import rebuilds_in_progress
from cdc_daemon.sweep import owed_resyncs
from cdc_daemon.triggers import LogTables


def sync_status(db: Database, names: LogTables, tables: list[str]) -> dict[str, Any]:
    """`{"backlog", "oldest_age_seconds", "dead_letters", "tables": {...}}` (interface.md)."""
    status = ChangeLog(db, names, max_attempts=1).status(tables)
    for table, logged in backfills_in_progress(db, names).items():
        status["tables"].setdefault(table, {})["backfill_logged_rows"] = logged
    for table, collection in rebuilds_in_progress(db, names).items():
        status["tables"].setdefault(table, {})["rebuilding_into"] = collection
    for table, phase in owed_resyncs(db, names).items():  # after a database file was replaced
        status["tables"].setdefault(table, {})["resync"] = phase
    return status
