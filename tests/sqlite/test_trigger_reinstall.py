"""TriggerWatch.look, the daemon's trigger check, on a real SQLite file (the app's writes
through stdlib sqlite3): it looks at the configured tables as the schema is now, puts dropped
triggers back only when sync.reinstall_triggers is on (with its one warning line), and hands
out the tables whose triggers are back for their resync."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from support import app_exec

from cdc_daemon.database import Database
from cdc_daemon.log_schema import LogTables
from cdc_daemon.trigger_watch import TriggerWatch, configured_tables
from cdc_daemon.triggers import install, trigger_problems

NAMES = LogTables("change_log")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """The app's file with one table, installed."""
    app_exec(tmp_path / "app.db", "CREATE TABLE items (id INTEGER PRIMARY KEY, t TEXT)")
    opened = Database(tmp_path / "app.db")
    install(opened, NAMES, [opened.table_info("items")])
    yield opened
    opened.close()


def test_configured_tables_are_those_that_exist_now(db: Database) -> None:
    assert [i.name for i in configured_tables(db, ["gone", "items"])] == ["items"]
    app_exec(db.path, "CREATE TABLE gone (id INTEGER PRIMARY KEY)")  # the app creates it later
    assert [i.name for i in configured_tables(db, ["gone", "items"])] == ["gone", "items"]


def test_dropped_triggers_are_put_back_only_when_asked(db: Database) -> None:
    tables = [db.table_info("items")]
    watch = TriggerWatch(wall_clock=lambda: 1.7e9)
    assert watch.look(db, NAMES, ["items", "gone"], reinstall=False) == []
    assert watch.problems == {}

    app_exec(db.path, 'DROP TRIGGER "change_log:items:delete"')  # a migration rebuilt the table
    with structlog.testing.capture_logs() as logs:
        assert watch.look(db, NAMES, ["items", "gone"], reinstall=False) == []
    assert logs == []  # nothing put back: reinstall_triggers is off
    assert watch.problems == {"items": ["trigger 'change_log:items:delete' is missing"]}
    assert trigger_problems(db, NAMES, tables) != []

    with structlog.testing.capture_logs() as logs:
        back = watch.look(db, NAMES, ["items", "gone"], reinstall=True)
    assert back == ["items"]  # back: owes its resync
    assert [(e["event"], e["tables"]) for e in logs] == [("triggers reinstalled", ["items"])]
    assert watch.problems == {}
    assert trigger_problems(db, NAMES, tables) == []
