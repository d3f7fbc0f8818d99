"""The metrics of a `databases:` daemon (metrics.FleetLogCollector): the one-database series
summed over the databases, and a `database` label only on databases in trouble. Real SQLite
files (installed with the triggers), no server."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from cdc_daemon.database import Database
from cdc_daemon.log_schema import LogTables
from cdc_daemon.metrics import DatabaseState, FleetLogCollector
from cdc_daemon.triggers import install

NAMES = LogTables("change_log")


def make_database(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT)")
    db = Database(path)
    try:
        install(db, NAMES, [db.table_info("books")])
    finally:
        db.close()
    return path


def write(path: Path, *titles: str, age: float = 0.0) -> None:
    """App writes (the triggers log them), the log entries then made `age` seconds old."""
    with sqlite3.connect(path) as conn:
        conn.executemany("INSERT INTO books (title) VALUES (?)", [(t,) for t in titles])
        conn.execute("UPDATE change_log SET ts = ?", (time.time() - age,))


def scrape(states: list[DatabaseState]) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(FleetLogCollector(lambda: states, NAMES, ["books"]))
    lines = generate_latest(registry).decode().splitlines()
    return {
        name: float(value)
        for line in lines
        if not line.startswith("#")
        for name, _, value in [line.rpartition(" ")]
    }


def test_sums_over_databases_and_labels_only_trouble(tmp_path: Path) -> None:
    a, b, c = (make_database(tmp_path / f"{n}.db") for n in "abc")
    write(a, "one", "two", age=5)
    write(b, "three", age=90)  # lagging past a minute: named
    states = [
        DatabaseState("a", a, "syncing", True),
        DatabaseState("b", b, "syncing", True, frozenset({"books"})),
        DatabaseState("c", c, "locked", True),
    ]
    metrics = scrape(states)
    assert metrics["cdc_backlog_changes"] == 3
    assert metrics['cdc_table_backlog_changes{table="books"}'] == 3
    assert 89 < metrics["cdc_lag_seconds"] < 100  # the oldest of all
    assert 89 < metrics['cdc_database_lag_seconds{database="b"}'] < 100
    assert not any('cdc_database_lag_seconds{database="a"}' in k for k in metrics)
    assert metrics['cdc_database_problem{database="c",state="locked"}'] == 1
    assert not any("cdc_database_problem" in k and '"a"' in k for k in metrics)
    assert metrics['cdc_databases{state="syncing"}'] == 2
    assert metrics['cdc_databases{state="locked"}'] == 1
    assert metrics['cdc_triggers_installed{table="books"}'] == 0  # b lacks them
    assert metrics["cdc_database_up"] == 1


def test_an_unreadable_database_is_named_and_up_is_zero(tmp_path: Path) -> None:
    good = make_database(tmp_path / "good.db")
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 500)
    metrics = scrape(
        [DatabaseState("good", good, "syncing", True), DatabaseState("bad", bad, "syncing", True)]
    )
    assert metrics["cdc_database_up"] == 0
    assert metrics['cdc_database_problem{database="bad",state="unreadable"}'] == 1
    assert metrics['cdc_triggers_installed{table="books"}'] == 1


def test_a_quiet_database_is_read_again_once_written(tmp_path: Path) -> None:
    path = make_database(tmp_path / "a.db")
    state = DatabaseState("a", path, "syncing", True)
    registry = CollectorRegistry()
    registry.register(FleetLogCollector(lambda: [state], NAMES, ["books"]))

    def backlog() -> str:
        text = generate_latest(registry).decode()
        return next(line for line in text.splitlines() if line.startswith("cdc_backlog_changes"))

    assert backlog().endswith(" 0.0")
    write(path, "new")
    state.changed = False  # no event seen: an empty, unchanged log is not read again
    assert backlog().endswith(" 0.0")
    state.changed = True  # the fleet saw the file written
    assert backlog().endswith(" 1.0")
    state.changed = False  # a log with entries is read at every scrape
    write(path, "another")
    assert backlog().endswith(" 2.0")


def test_a_table_skipped_only_by_a_removed_database_is_skipped_no_more() -> None:
    """cdc_table_skipped{table} is 1 while any database skips the table; a database that is gone
    (fleet_member.Member.stop) skips nothing any more, or the alert would fire for ever."""
    from cdc_daemon.metrics import Metrics
    from cdc_daemon.sync import BatchReport

    metrics = Metrics(None, NAMES, lambda: [], log_collector=FleetLogCollector(
        lambda: [], NAMES, ["books"]), table_names=["books"])
    a, b = Path("/t/a.db"), Path("/t/b.db")

    def skipped() -> float | None:
        return metrics.registry.get_sample_value("cdc_table_skipped", {"table": "books"})

    metrics.record_batch(BatchReport(skipped={"books": "dropped"}), a)
    metrics.record_batch(BatchReport(), b)
    assert skipped() == 1
    metrics.forget_database(b)
    assert skipped() == 1  # a still skips it
    metrics.forget_database(a)
    assert skipped() == 0
