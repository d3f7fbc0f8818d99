"""What `status` (the command and the admin API) reports: log, dead letters, backfills, rebuilds,
resyncs, missing triggers and what a reload left to clear."""

from __future__ import annotations

from typing import Any

from cdc_daemon.backfill import backfills_in_progress
from cdc_daemon.database import Database, TableInfo
from cdc_daemon.errors import CdcError
from cdc_daemon.evolution import rebuilds_in_progress
from cdc_daemon.log_schema import LogTables
from cdc_daemon.log_status import LogStatus
from cdc_daemon.reconfigure import leftover_summary
from cdc_daemon.sweep import owed_resyncs
from cdc_daemon.trigger_watch import missing_since, problems_by_table


def sync_status(db: Database, names: LogTables, tables: list[str]) -> dict[str, Any]:
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
    _add_trigger_problems(status, db, names, tables)
    return status


def _add_trigger_problems(
    status: dict[str, Any], db: Database, names: LogTables, tables: list[str]
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
    problems = problems_by_table(db, names, infos)
    status["trigger_problems"] = [
        f"table {table!r}: {line}" for table, lines in problems.items() for line in lines
    ]
    for table, lines in problems.items():
        if table in tables:
            status["tables"].setdefault(table, {})["trigger_problems"] = lines
    for table, since in missing_since(db, names).items():
        if table in tables:
            status["tables"].setdefault(table, {})["triggers_missing_since"] = since
