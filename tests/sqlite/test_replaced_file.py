"""replaced_file.py on real SQLite files (the app's writes from its own process): reopening a
replaced file is retried until it works, yet its warning and the new file's trigger problems are
logged once per replacement, and a second replacement is told again."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import structlog
from support import app_exec

from cdc_daemon.database import Database
from cdc_daemon.log_schema import LogTables
from cdc_daemon.replaced_file import ReplacedFile
from cdc_daemon.triggers import trigger_problems

NAMES = LogTables("change_log")


def _restore(path: Path, backup: Path) -> None:
    """A backup restored with `mv` over the app's file."""
    app_exec(backup, "CREATE TABLE items (id INTEGER PRIMARY KEY, t TEXT)")
    os.replace(backup, path)


def test_each_replacement_is_told_once(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    app_exec(path, "CREATE TABLE items (id INTEGER PRIMARY KEY, t TEXT)")
    old = Database(path)
    replaced = ReplacedFile()
    _restore(path, tmp_path / "backup.db")
    assert old.replaced()

    with structlog.testing.capture_logs() as logs:
        replaced.notice(old)
        replaced.notice(old)  # the reopening failed and is retried
        fresh = Database(path)
        runtime = SimpleNamespace(db=fresh, names=NAMES, tables=[fresh.table_info("items")])
        replaced.report_triggers(runtime)  # type: ignore[arg-type]
        replaced.report_triggers(runtime)  # type: ignore[arg-type]
    events = [e["event"] for e in logs]
    assert events.count("database file replaced; reopening") == 1
    problems = [e["problem"] for e in logs if e["event"] == "trigger problem"]
    expected = trigger_problems(fresh, NAMES, runtime.tables)
    assert expected and problems == expected  # the backup has no log nor triggers: said once

    _restore(path, tmp_path / "older-backup.db")  # and again
    with structlog.testing.capture_logs() as logs:
        replaced.notice(fresh)
    assert [e["event"] for e in logs] == ["database file replaced; reopening"]
    fresh.close()
    old.close()
