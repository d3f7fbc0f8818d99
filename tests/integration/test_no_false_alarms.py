"""No false alarms (issue 13, item 8): once a newer change of a key succeeds, its older entries
waiting for a retry are done; a re-send of every row (backfill, schema change) leaves one entry
per key, not two. Real Typesense, the app as a separate stdlib-sqlite3 process, the CLI."""

from __future__ import annotations

import time

from support import Env, app_exec, app_write, db_scalar


def _setup(env: Env) -> None:
    app_exec(env.db, "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER, t TEXT)")
    env.write_config([{"table": "items", "fields": {"n": {"type": "int32"}}}],
                     sync={"max_attempts": 10})
    env.cli("install", check=True)
    app_write(env.db, [[("INSERT INTO items VALUES (?, ?, 'x')", [i, i]) for i in range(1, 11)]])
    # Text in an INTEGER column: Typesense rejects it for the int32 field.
    app_exec(env.db, "UPDATE items SET n = 'not a number' WHERE id = 3")
    assert env.cli("run", "--once", timeout=180).returncode in (0, 1)
    assert db_scalar(env.db, "SELECT COUNT(*) FROM change_log WHERE last_error IS NOT NULL") == 1
    # As after a few rejections: its next try is minutes away.
    app_exec(env.db, f"UPDATE change_log SET next_attempt_at = {time.time() + 250}")


def test_a_fixed_row_leaves_no_entry_behind(env: Env) -> None:
    _setup(env)
    app_exec(env.db, "UPDATE items SET n = 3 WHERE id = 3")  # the app fixes the row
    assert env.cli("run", "--once", timeout=180).returncode == 0
    status = env.status()
    assert status["backlog"] == 0 and status["oldest_age_seconds"] is None, status
    assert env.documents("items")["3"]["n"] == 3
    assert env.verify()["in_sync"] is True


def test_a_resend_of_every_row_keeps_one_entry_per_key(env: Env) -> None:
    _setup(env)
    result = env.cli("backfill", timeout=180)
    assert "Traceback" not in result.stderr, result.stderr
    # The re-sent key 3 was rejected again: one entry waits for its retry, not two.
    entries = db_scalar(env.db, "SELECT COUNT(*) FROM change_log WHERE pk = 3")
    assert entries == 1, entries
    assert db_scalar(env.db, "SELECT COUNT(*) FROM change_log") == 1
    # ... and it kept its attempts (the key's rejections are counted, not restarted).
    assert db_scalar(env.db, "SELECT attempts FROM change_log") == 2


def test_changes_to_a_table_not_configured_yet_are_not_dead_lettered(env: Env) -> None:
    """`install` with the new table in the config, the app writing to it, and the daemon still
    on the old config (the reload not done yet): nothing is dead-lettered; once the config names
    the table, every row of it is sent (found by walking the operator guide's "add a table")."""
    app_exec(env.db, "CREATE TABLE items (id INTEGER PRIMARY KEY, t TEXT)",
             "CREATE TABLE notes (id INTEGER PRIMARY KEY, t TEXT)")
    env.write_config([{"table": "items"}], sync={"max_attempts": 1})
    env.cli("install", check=True)
    app_write(env.db, [[("INSERT INTO items VALUES (1, 'x')", [])]])
    assert env.cli("run", "--once", timeout=180).returncode == 0
    env.write_config([{"table": "items"}, {"table": "notes"}], sync={"max_attempts": 1})
    env.cli("install", check=True)
    app_write(env.db, [[("INSERT INTO notes VALUES (?, 'n')", [i]) for i in range(1, 21)]
                       + [("DELETE FROM notes WHERE id > 15", [])]])
    env.write_config([{"table": "items"}], sync={"max_attempts": 1})  # the running config
    assert env.cli("run", "--once", timeout=180).returncode == 0
    status = env.status()
    assert status["dead_letters"] == 0 and status["backlog"] == 0, status
    env.write_config([{"table": "items"}, {"table": "notes"}], sync={"max_attempts": 1})
    assert env.cli("run", "--once", timeout=180).returncode == 0
    assert set(env.documents("notes")) == {str(i) for i in range(1, 16)}
    assert env.verify()["in_sync"] is True
