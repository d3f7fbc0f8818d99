"""trigger_watch.py on a real SQLite file (the app's writes through stdlib sqlite3): a dropped
trigger is recorded and reported at once, then again only every interval (not on every
iteration), and a table whose triggers come back is handed out once for its resync."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import structlog

from cdc_daemon.database import Database
from cdc_daemon.log_schema import LogTables
from cdc_daemon.trigger_watch import MISSING_EVENT, TriggerWatch, missing_since
from cdc_daemon.triggers import install

NAMES = LogTables("change_log")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _app(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        conn.execute(statement)
    conn.close()


def _reports(watch: TriggerWatch) -> int:
    with structlog.testing.capture_logs() as logs:
        watch.report()
    return sum(1 for entry in logs if entry["event"] == MISSING_EVENT)


def test_missing_triggers_reported_at_a_bounded_rate_then_handed_out_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.db"
    _app(path, "CREATE TABLE items (id INTEGER PRIMARY KEY, t TEXT)")
    db = Database(path)
    try:
        tables = [db.table_info("items")]
        install(db, NAMES, tables)
        clock = Clock()
        watch = TriggerWatch(interval=60, clock=clock, wall_clock=lambda: 1.7e9)
        assert watch.check(db, NAMES, tables) == []
        assert _reports(watch) == 0

        _app(path, 'DROP TRIGGER "change_log:items:update"')
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
    finally:
        db.close()


def test_recorded_missing_survives_a_restart(tmp_path: Path) -> None:
    """Triggers dropped under one daemon and installed while it was stopped: the next daemon
    still owes the table its resync."""
    path = tmp_path / "app.db"
    _app(path, "CREATE TABLE items (id INTEGER PRIMARY KEY, t TEXT)")
    db = Database(path)
    try:
        tables = [db.table_info("items")]
        install(db, NAMES, tables)
        _app(path, 'DROP TRIGGER "change_log:items:insert"')
        TriggerWatch().check(db, NAMES, tables)  # the first daemon
        install(db, NAMES, tables)  # while no daemon runs
        assert TriggerWatch().check(db, NAMES, tables) == ["items"]  # the next one
    finally:
        db.close()
