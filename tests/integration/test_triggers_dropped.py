"""Triggers dropped while the daemon runs (issue 13, item 3): an app migration that rebuilds its
table (the 12-step ALTER: create a new table, copy, drop the old one, rename) drops the table's
triggers, and later changes are never logged. The running daemon notices at the schema change,
logs an error naming the triggers (again once a minute while they stay missing), shows them in
`status`, and once they are back (the operator's `install`, or `sync.reinstall_triggers`) resyncs
the table, so what changed meanwhile reaches Typesense.

Real Typesense, the app as a separate stdlib-sqlite3 process, the daemon as `run`."""

from __future__ import annotations

import json
from typing import Any

from support import (
    Env,
    app_exec,
    app_write,
    collection_documents,
    db_rows,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

DDL = "CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT NOT NULL, n INTEGER NOT NULL)"
# The 12-step ALTER (https://sqlite.org/lang_altertable.html#otheralter), here adding a CHECK
# constraint: the columns (and so the collection's schema) stay the same, only the triggers go.
MIGRATION = [
    "CREATE TABLE items_new (id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
    " n INTEGER NOT NULL CHECK (n >= 0))",
    "INSERT INTO items_new (id, title, n) SELECT id, title, n FROM items",
    "DROP TABLE items",
    "ALTER TABLE items_new RENAME TO items",
]
MISSING = "triggers missing or outdated: changes to these tables are not logged"


def _expected(env: Env) -> dict[str, dict[str, Any]]:
    return {
        str(i): {"id": str(i), "title": title, "n": n}
        for i, title, n in db_rows(env.db, "SELECT id, title, n FROM items")
    }


def _documents(env: Env) -> dict[str, dict[str, Any]]:
    return collection_documents(env.http, env.collection("items"))


def _events(env: Env, event: str) -> list[dict[str, Any]]:
    lines = (json.loads(x) for x in read_daemon_log(env).splitlines() if x.startswith("{"))
    return [line for line in lines if line.get("event") == event]


def _start(env: Env, **sync: Any) -> Any:
    app_exec(env.db, "PRAGMA journal_mode=WAL", DDL)
    env.write_config([{"table": "items"}], sync=sync)
    env.cli("install", check=True)
    app_write(env.db, [[("INSERT INTO items VALUES (?, ?, ?)", [i, f"v1 {i}", i])
                        for i in range(1, 51)]])
    daemon = start_daemon_logged(env)
    wait_for(lambda: _documents(env) == _expected(env), 60, message="initial sync")
    return daemon


def _migrate_then_write(env: Env, together: bool = False) -> None:
    """The migration, then 20 updates, 10 inserts and 10 deletes: none of them logged.
    `together`: all in the migration's transaction (a daemon that reinstalls the triggers at
    once can't get in between: the writes are certainly missed)."""
    writes = [
        [("UPDATE items SET title = 'v2 ' || id WHERE id <= 20", [])],
        [("INSERT INTO items VALUES (?, ?, ?)", [i, f"new {i}", i]) for i in range(51, 61)],
        [("DELETE FROM items WHERE id > 40 AND id <= 50", [])],
    ]
    migration = [(sql, []) for sql in MIGRATION]
    if together:
        app_write(env.db, [migration + [w for transaction in writes for w in transaction]])
    else:
        app_write(env.db, [migration])
        app_write(env.db, writes)


def test_migration_drops_triggers_reported_until_install_then_resynced(env: Env) -> None:
    daemon = _start(env)
    try:
        _migrate_then_write(env)
        wait_for(lambda: _events(env, MISSING), 60, message="the missing triggers logged")
        problem = _events(env, MISSING)[0]
        assert problem["level"] == "error"
        assert "change_log:items:insert" in json.dumps(problem["problems"])
        assert "change_log:items:delete" in json.dumps(problem["problems"])

        status = env.status()
        entry = status["tables"]["items"]
        assert any("change_log:items:update" in p for p in entry["trigger_problems"]), status
        assert entry["triggers_missing_since"] is not None
        text = env.cli("status", check=True).stdout
        assert "triggers missing" in text and "cdc-daemon install" in text, text
        # Nothing reached Typesense: the changes were never logged.
        assert _documents(env) != _expected(env)
        assert env.verify()["in_sync"] is False

        env.cli("install", check=True)  # the operator's fix, while the daemon runs
        wait_for(lambda: _events(env, "triggers back; resyncing the tables"), 60,
                 message="the daemon noticed the triggers are back")
        wait_for(lambda: _documents(env) == _expected(env), 120,
                 message="the changes made while the triggers were missing synced")
        wait_for(lambda: "resync" not in env.status()["tables"]["items"], 120,
                 message="the resync finished")
        after = env.status()["tables"]["items"]
        assert "trigger_problems" not in after and "triggers_missing_since" not in after, after
        app_exec(env.db, "UPDATE items SET title = 'v3' WHERE id = 1")  # logged again
        wait_for(lambda: _documents(env)["1"]["title"] == "v3", 60, message="a later write")
        assert env.verify()["in_sync"] is True
    finally:
        assert stop_process(daemon) == 0
    assert "Traceback" not in read_daemon_log(env)


def test_reinstall_triggers_option_reinstalls_and_resyncs(env: Env) -> None:
    daemon = _start(env, reinstall_triggers=True)
    try:
        _migrate_then_write(env, together=True)
        wait_for(lambda: _events(env, "triggers reinstalled"), 60,
                 message="the daemon reinstalled the triggers")
        reinstalled = _events(env, "triggers reinstalled")[0]
        assert reinstalled["level"] == "warning"
        assert any("change_log:items:insert" in c for c in reinstalled["changes"]), reinstalled
        wait_for(lambda: _documents(env) == _expected(env), 120,
                 message="the changes made while the triggers were missing synced")
        app_exec(env.db, "UPDATE items SET title = 'v3' WHERE id = 1")
        wait_for(lambda: _documents(env)["1"]["title"] == "v3", 60, message="a later write")
        wait_for(lambda: "resync" not in env.status()["tables"]["items"], 120,
                 message="the resync finished")
        check = env.cli("check").stdout
        assert "is missing" not in check and "is outdated" not in check, check
        assert env.verify()["in_sync"] is True
    finally:
        assert stop_process(daemon) == 0
    assert "Traceback" not in read_daemon_log(env)
