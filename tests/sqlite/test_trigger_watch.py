"""trigger_watch.py on a real SQLite file (the app's writes through stdlib sqlite3): a dropped
trigger is recorded and reported at once, then again only every interval (not on every
iteration), a table whose triggers come back is handed out once for its resync, and
TriggerWatch.look (the daemon's check) looks at the configured tables as the schema is now and
puts dropped triggers back only when sync.reinstall_triggers is on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from support import app_exec

from cdc_daemon.database import Database
from cdc_daemon.log_schema import LogTables
from cdc_daemon.trigger_watch import MISSING_EVENT, TriggerWatch, configured_tables, missing_since
from cdc_daemon.triggers import install, trigger_problems

NAMES = LogTables("change_log")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """The app's file with one table, installed."""
    app_exec(tmp_path / "app.db", "CREATE TABLE items (id INTEGER PRIMARY KEY, t TEXT)")
    opened = Database(tmp_path / "app.db")
    install(opened, NAMES, [opened.table_info("items")])
    yield opened
    opened.close()


def _reports(watch: TriggerWatch) -> int:
    with structlog.testing.capture_logs() as logs:
        watch.report()
    return sum(1 for entry in logs if entry["event"] == MISSING_EVENT)


def test_missing_triggers_reported_at_a_bounded_rate_then_handed_out_once(db: Database) -> None:
    tables = [db.table_info("items")]
    clock = Clock()
    watch = TriggerWatch(interval=60, clock=clock, wall_clock=lambda: 1.7e9)
    assert watch.check(db, NAMES, tables) == []
    assert _reports(watch) == 0

    app_exec(db.path, 'DROP TRIGGER "change_log:items:update"')
    assert watch.check(db, NAMES, tables) == []
    assert watch.problems == {"items": ["trigger 'change_log:items:update' is missing"]}
    assert missing_since(db, NAMES) == {"items": 1.7e9}
    assert _reports(watch) == 1  # at once
    clock.now += 1
    assert _reports(watch) == 0  # not on every iteration
    assert watch.check(db, NAMES, tables) == []  # looked again, nothing new: still quiet
    assert _reports(watch) == 0
    clock.now += 60
    assert _reports(watch) == 1  # a minute later, again
    assert _reports(watch) == 0

    install(db, NAMES, tables)  # the operator's `cdc-daemon install`
    assert watch.check(db, NAMES, tables) == ["items"]  # back: owes a resync
    watch.forget(db, NAMES, ["items"])
    assert watch.check(db, NAMES, tables) == []  # handed out once
    assert missing_since(db, NAMES) == {}
    assert _reports(watch) == 0


def test_recorded_missing_survives_a_restart(db: Database) -> None:
    """Triggers dropped under one daemon and installed while it was stopped: the next daemon
    still owes the table its resync."""
    tables = [db.table_info("items")]
    app_exec(db.path, 'DROP TRIGGER "change_log:items:insert"')
    TriggerWatch().check(db, NAMES, tables)  # the first daemon
    install(db, NAMES, tables)  # while no daemon runs
    assert TriggerWatch().check(db, NAMES, tables) == ["items"]  # the next one


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
