"""One table's trouble stops only that table (issue 13, item 4): a configured table dropped, or
whose `where` stops compiling after an ALTER, while the daemon runs is reported (log, `status`)
and skipped; the other tables keep syncing, its log entries wait, and it syncs once it is back."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support import (
    ELEMENTS_DDL,
    Env,
    app_exec,
    app_write,
    db_scalar,
    insert_elements,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.config import load_config
from cdc_daemon.localserver import free_port
from cdc_daemon.runtime import Runtime
from cdc_daemon.wiring import build_runtime

NOTES_DDL = "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"
DEADLINE = 90  # generous: the machine is shared, and a failed iteration backs off up to 30 s


def insert_notes(env: Env, ids: range, body: str = "note") -> None:
    app_write(env.db, [[
        ("INSERT INTO notes (id, body) VALUES (?, ?)", [i, f"{body} {i}"]) for i in ids
    ]])


def log_events(env: Env) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_daemon_log(env).splitlines() if line.startswith("{")]


def comments(env: Env) -> set[str]:
    return {d.get("comment", "") for d in env.documents("elements").values()}


def notes_backlog(env: Env) -> int:
    return int(db_scalar(env.db, "SELECT COUNT(*) FROM change_log WHERE tbl = 'notes'"))


Running = tuple[Env, subprocess.Popen[str], int]


def skipped_gauge(port: int) -> str:
    """The `cdc_table_skipped` lines of a metrics scrape."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return "\n".join(line for line in text.splitlines() if line.startswith("cdc_table_skipped{"))


@pytest.fixture
def running(env: Env) -> Iterator[Running]:
    """elements (10 rows) and notes (5 rows), both synced by a running daemon; its metrics
    port."""
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL, NOTES_DDL)
    port = free_port()
    env.write_config([{"table": "elements"}, {"table": "notes", "where": "body IS NOT NULL"}],
                     metrics={"listen": f"127.0.0.1:{port}"})
    env.cli("install", check=True)
    insert_elements(env.db, range(1, 11))
    insert_notes(env, range(1, 6))
    daemon = start_daemon_logged(env)
    try:
        wait_for(lambda: len(env.documents("elements")) == 10 and len(env.documents("notes")) == 5,
                 timeout=DEADLINE, message="the first sync")
        yield env, daemon, port
    finally:
        stop_process(daemon, timeout=30)


def test_a_dropped_table_stops_only_itself(running: Running) -> None:
    env, daemon, port = running
    # Changes to notes are logged, then the table is dropped (no trigger sees a DROP TABLE).
    app_write(env.db, [[
        *[("INSERT INTO notes (id, body) VALUES (?, ?)", [i, f"late {i}"]) for i in range(6, 9)],
        ("DROP TABLE notes", []),
    ]])
    app_exec(env.db, "UPDATE elements SET comment = 'changed'")
    wait_for(lambda: comments(env) == {"changed"}, timeout=DEADLINE,
             message="the untouched table to keep syncing")

    # Reported: in the log (naming the table and its config entry) and by `status`, which
    # does not fail because of it.
    wait_for(lambda: any(e.get("level") == "error" and "tables[1].table" in json.dumps(e)
                         for e in log_events(env)), timeout=DEADLINE, message="an error logged")
    status = env.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    notes = json.loads(status.stdout)["tables"]["notes"]
    assert "tables[1].table" in notes["problem"] and "does not exist" in notes["problem"], notes
    assert notes["backlog"] == 3  # its entries wait in the log: nothing lost
    text = env.cli("status")
    assert text.returncode == 0 and "notes" in text.stdout and "does not exist" in text.stdout
    assert notes_backlog(env) == 3
    assert skipped_gauge(port) == 'cdc_table_skipped{table="notes"} 1.0'

    # Back again (a migration recreated it, rows included): its waiting entries sync.
    app_write(env.db, [[
        (NOTES_DDL, []),
        *[("INSERT INTO notes (id, body) VALUES (?, ?)", [i, f"back {i}"]) for i in range(1, 9)],
    ]])
    wait_for(lambda: notes_backlog(env) == 0, timeout=DEADLINE, message="notes' entries synced")
    documents = env.documents("notes")
    assert {documents[str(i)]["body"] for i in range(6, 9)} == {"back 6", "back 7", "back 8"}
    assert daemon.poll() is None
    assert "problem" not in env.status()["tables"]["notes"]
    wait_for(lambda: skipped_gauge(port) == 'cdc_table_skipped{table="notes"} 0.0',
             timeout=DEADLINE, message="the gauge back to 0")


def test_a_where_broken_by_an_alter_stops_only_its_table(running: Running) -> None:
    env, daemon, _port = running
    app_exec(env.db, "ALTER TABLE notes RENAME COLUMN body TO text")  # `body IS NOT NULL` breaks
    app_exec(env.db, "UPDATE notes SET text = 'renamed' WHERE id <= 2")
    app_exec(env.db, "UPDATE elements SET comment = 'changed'")
    wait_for(lambda: comments(env) == {"changed"}, timeout=DEADLINE,
             message="the other table to keep syncing")
    wait_for(lambda: any(e.get("level") == "error" and "tables[1].where" in json.dumps(e)
                         for e in log_events(env)), timeout=DEADLINE, message="an error logged")
    notes = env.status()["tables"]["notes"]
    assert "tables[1].where" in notes["problem"] and "body" in notes["problem"], notes
    assert notes_backlog(env) == 2

    app_exec(env.db, "ALTER TABLE notes RENAME COLUMN text TO body")  # fixed
    wait_for(lambda: notes_backlog(env) == 0, timeout=DEADLINE, message="notes' entries synced")
    assert {env.documents("notes")[str(i)]["body"] for i in (1, 2)} == {"renamed"}
    insert_elements(env.db, range(11, 13))
    wait_for(lambda: len(env.documents("elements")) == 12, timeout=DEADLINE,
             message="elements still syncing")
    assert daemon.poll() is None


def test_a_missing_table_is_still_bad_config_at_start(env: Env) -> None:
    """Before start there is nothing to keep running: `check` and `run` refuse it (exit 2, the
    key named, one line); `status` shows it and succeeds."""
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL, NOTES_DDL)
    env.write_config([{"table": "elements"}, {"table": "notes"}])
    env.cli("install", check=True)
    insert_notes(env, range(1, 3))
    app_exec(env.db, "DROP TABLE notes")
    for command in (["check"], ["run", "--once"]):
        result = env.cli(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert "tables[1].table" in result.stderr
    status = env.status()
    assert status["tables"]["notes"]["backlog"] == 2
    assert "tables[1].table" in status["tables"]["notes"]["problem"]


def _two_tables(env: Env, tables: list[dict[str, Any]]) -> Runtime:
    """elements (5 rows) and notes (3 rows), installed with `tables` as configured; a runtime
    built on them, as the daemon's is."""
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL, NOTES_DDL)
    env.write_config(tables)
    env.cli("install", check=True)
    insert_elements(env.db, range(1, 6))
    insert_notes(env, range(1, 4))
    return build_runtime(load_config(env.config_path))


def test_the_sync_step_skips_a_table_it_cannot_read(env: Env) -> None:
    """In the sync step itself (a table dropped after the runtime was built, before the loop
    noticed the schema change): the unreadable table's entries stay in the log, untouched and
    not read again for a while; the other table's are sent and acknowledged."""
    runtime = _two_tables(env, [{"table": "elements"}, {"table": "notes"}])
    try:
        runtime.syncer.ensure_collections()
        app_exec(env.db, "DROP TABLE notes")
        report = runtime.syncer.sync_once()
        assert report.upserted == {"elements": 5} and report.failed == 0, report
        assert "no such table" in runtime.syncer.broken["notes"]
        assert notes_backlog(env) == 3
        assert db_scalar(env.db, "SELECT MAX(attempts) FROM change_log") == 0  # not counted
        assert runtime.syncer.sync_once().entries == 0  # notes' entries are not read again
        assert len(env.documents("elements")) == 5
    finally:
        runtime.close()


NOT_JSON_WHERE = "json_extract(body, '$.x') IS NULL"  # fails on a body that is not JSON


def test_a_where_failing_on_rows_stops_only_its_table(env: Env) -> None:
    """A `where` that compiles but fails on the rows (json_extract of text that is not JSON):
    `check` names `tables[0].where` with SQLite's message; `run --once` and the daemon skip that
    table (backfill page and changes alike), report it (log, admin status, gauge) and sync the
    other one; once the app fixes the rows it syncs. Before the fix: `check` said only
    `…/app.db: malformed JSON`, and every iteration failed with it for every table."""
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL, NOTES_DDL)
    metrics_port, admin_port = free_port(), free_port()
    env.write_config([{"table": "notes", "where": NOT_JSON_WHERE}, {"table": "elements"}],
                     metrics={"listen": f"127.0.0.1:{metrics_port}"},
                     admin={"listen": f"127.0.0.1:{admin_port}"})
    env.cli("install", check=True)
    insert_notes(env, range(1, 6))  # "note 1": not JSON
    insert_elements(env.db, range(1, 11))

    check = env.cli("check")
    assert check.returncode == 1, (check.stdout, check.stderr)
    assert "tables[0].where" in check.stdout and "malformed JSON" in check.stdout, check.stdout
    assert "Traceback" not in check.stderr

    once = env.cli("run", "--once", timeout=240)
    assert once.returncode == 1, once.stderr  # the other table synced; this one did not
    assert "gave up" not in once.stderr and "giving up" not in once.stderr, once.stderr
    assert "tables[0].where" in once.stderr and "Traceback" not in once.stderr, once.stderr
    assert len(env.documents("elements")) == 10

    daemon = start_daemon_logged(env)
    try:
        app_exec(env.db, "UPDATE elements SET comment = 'changed'")
        wait_for(lambda: comments(env) == {"changed"}, timeout=DEADLINE,
                 message="the other table to keep syncing")

        def skipped_logged() -> bool:
            return any(e.get("level") == "error" and e.get("table") == "notes"
                       and str(e.get("problem", "")).startswith("tables[0].where:")
                       and "malformed JSON" in e["problem"] for e in log_events(env))

        wait_for(skipped_logged, timeout=DEADLINE, message="the skipped table logged")
        status = httpx.get(f"http://127.0.0.1:{admin_port}/v1/status", timeout=10).json()
        problem = status["tables"]["notes"]["problem"]
        assert problem.startswith("tables[0].where:") and "malformed JSON" in problem, status
        assert skipped_gauge(metrics_port) == 'cdc_table_skipped{table="notes"} 1.0'
        assert notes_backlog(env) == 5  # its entries wait in the log
        assert not [e for e in log_events(env) if e.get("event") == "sync failed"]

        # The app fixes its rows: after the retry delay the table syncs (backfill included).
        app_exec(env.db, """UPDATE notes SET body = '{"x": null}'""")
        wait_for(lambda: len(env.documents("notes")) == 5 and notes_backlog(env) == 0,
                 timeout=DEADLINE + 60, message="notes synced once its rows are JSON")
        wait_for(lambda: skipped_gauge(metrics_port) == 'cdc_table_skipped{table="notes"} 0.0',
                 timeout=DEADLINE, message="the gauge back to 0")
        assert daemon.poll() is None
    finally:
        stop_process(daemon, timeout=30)
    assert "Traceback" not in read_daemon_log(env)


def test_the_sync_step_names_a_where_failing_on_rows(env: Env) -> None:
    """In the sync step (the read of changed rows, not the backfill): the table whose `where`
    fails on its rows is skipped naming `tables[0].where` and SQLite's message; the other
    table's changes are sent."""
    runtime = _two_tables(env, [{"table": "notes", "where": NOT_JSON_WHERE}, {"table": "elements"}])
    try:
        runtime.syncer.ensure_collections()
        report = runtime.syncer.sync_once()
        assert report.upserted == {"elements": 5} and report.failed == 0, report
        problem = runtime.syncer.broken["notes"]
        assert problem.startswith("tables[0].where:") and "malformed JSON" in problem, problem
        assert report.skipped == {"notes": problem}
        assert notes_backlog(env) == 3
        assert db_scalar(env.db, "SELECT MAX(attempts) FROM change_log") == 0  # not counted
    finally:
        runtime.close()
