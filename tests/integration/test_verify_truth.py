"""verify never says "in sync" when the mirror is not (issue 12, item 7): changes stuck in the log,
failing or dead-lettered are differences with their reason; documents whose ids no row can produce
are extra (and removed by --repair), never a traceback. Real Typesense, the app as a separate
stdlib-sqlite3 process, the CLI as a subprocess."""

from __future__ import annotations

import json
import signal
from typing import Any

import httpx
from support import (
    Env,
    app_exec,
    app_write,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.verify import GRACE


def _items(env: Env, *, max_attempts: int = 3, ddl: str = "") -> None:
    app_exec(env.db, ddl or "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER, t TEXT)")
    env.write_config([{"table": "items", "fields": {"n": {"type": "int32"}}}],
                     sync={"max_attempts": max_attempts})
    env.cli("install", check=True)


def _insert(env: Env, ids: range) -> None:
    app_write(env.db, [[("INSERT INTO items VALUES (?, ?, 'x')", [i, i]) for i in ids]])


def _run_once(env: Env) -> None:
    result = env.cli("run", "--once", timeout=180)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


def _verify(env: Env, *args: str) -> tuple[int, dict[str, Any]]:
    result = env.cli("verify", "--json", *args, timeout=180)
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout)


def _reasons(summary: dict[str, Any]) -> dict[str, str]:
    return summary["tables"]["items"]["reasons"]


def test_a_backlog_older_than_the_grace_is_not_in_sync(env: Env) -> None:
    _items(env)
    _insert(env, range(1, 21))
    _run_once(env)
    assert _verify(env)[0] == 0
    # The daemon stops (crashed, or never restarted); the app goes on writing.
    _insert(env, range(21, 31))
    app_exec(env.db, "DELETE FROM items WHERE id <= 5")
    young_code, young = _verify(env)  # just written, but no daemon will deliver them
    assert young_code == 1 and young["in_flight"] == 0, young
    assert set(_reasons(young).values()) == {"not synced: no cdc-daemon is running"}, young
    # The same changes, GRACE seconds later (their log entries aged by hand instead of waiting).
    app_exec(env.db, f"UPDATE change_log SET ts = ts - {GRACE + 5}")
    code, summary = _verify(env)
    assert code == 1 and summary["in_sync"] is False
    assert (summary["missing"], summary["extra"], summary["backlog"]) == (10, 5, 15)
    assert all("waiting in the log" in r for r in _reasons(summary).values()), summary
    text = env.cli("verify").stdout
    assert "NOT in sync" in text and "15 changes waiting" in text, text


def test_young_changes_are_in_flight_only_while_a_daemon_runs(env: Env) -> None:
    _items(env)
    _insert(env, range(1, 6))
    daemon = start_daemon_logged(env)
    try:
        wait_for(lambda: _verify(env)[0] == 0, 90, "the daemon to sync 5 rows")
        daemon.send_signal(signal.SIGSTOP)  # running, holding the lock, not delivering yet
        try:
            app_exec(env.db, "UPDATE items SET n = 100 WHERE id = 1")
            code, summary = _verify(env)
            assert code == 0 and summary["in_flight"] == 1, summary  # on its way
        finally:
            daemon.send_signal(signal.SIGCONT)
        wait_for(lambda: _verify(env)[1]["in_flight"] == 0, 90, "the change delivered")
    finally:
        assert stop_process(daemon, timeout=60) == 0, read_daemon_log(env)
    # Stopped by SIGTERM: a change made now waits for nobody, however young it is.
    app_exec(env.db, "UPDATE items SET n = 200 WHERE id = 2")
    code, summary = _verify(env)
    assert code == 1 and summary["in_flight"] == 0 and summary["stale"] == 1, summary
    assert list(_reasons(summary).values()) == ["not synced: no cdc-daemon is running"], summary
    text = env.cli("verify").stdout
    assert "NOT in sync" in text and "no cdc-daemon is running" in text, text


def test_a_young_change_stuck_behind_an_old_one_is_not_in_sync(env: Env) -> None:
    _items(env)
    _insert(env, range(1, 6))
    app_exec(env.db, f"UPDATE change_log SET ts = ts - {GRACE + 5}")  # an old, stuck backlog
    _insert(env, range(6, 8))  # young, but queued behind it: the log is not moving
    code, summary = _verify(env)
    assert code == 1 and summary["missing"] == 7 and summary["in_flight"] == 0, summary


def test_rejected_then_dead_lettered_rows_are_differences_with_their_reason(env: Env) -> None:
    _items(env, max_attempts=2)
    _insert(env, range(1, 11))
    _run_once(env)
    assert _verify(env)[0] == 0
    # Text in an INTEGER column: Typesense rejects it for the int32 field.
    app_exec(env.db, "UPDATE items SET n = 'not a number' WHERE id = 3")
    _run_once(env)  # rejected once: retrying, the old document still there
    code, summary = _verify(env)
    assert code == 1 and summary["stale"] == 1
    assert _reasons(summary)["3"].startswith("retrying:"), summary
    # Dead-lettered: the old, outdated document leaves search (README: dead letters).
    app_exec(env.db, "UPDATE change_log SET next_attempt_at = 0")
    _run_once(env)
    assert env.status()["dead_letters"] == 1
    assert "3" not in env.documents("items")
    code, summary = _verify(env)
    assert code == 1 and summary["missing"] == 1 and summary["dead_letters"] == 1
    assert _reasons(summary)["3"].startswith("dead-lettered:"), summary
    # --repair can't index it either: it says so and exits 1, without failing.
    code, summary = _verify(env, "--repair")
    assert code == 1 and summary["missing"] == 1, summary
    # Once the app fixes the row, it syncs, the dead letter clears, verify is in sync.
    app_exec(env.db, "UPDATE items SET n = 3 WHERE id = 3")
    _run_once(env)
    code, summary = _verify(env)
    assert code == 0 and summary["dead_letters"] == 0, summary


def _put(env: Env, collection: str, document: dict[str, Any]) -> None:
    response = env.http.post(f"/collections/{collection}/documents/import?action=upsert",
                             content=json.dumps(document))
    assert response.json()["success"], response.text


def test_ids_no_row_can_produce_are_extra_and_repaired(env: Env) -> None:
    _items(env)
    _insert(env, range(1, 8))
    _run_once(env)
    collection = env.collection("items")
    # `007` is not key 7's id (that is `7`); `manual-1` is no integer at all.
    for doc_id in ("007", "manual-1", "7.0"):
        _put(env, collection, {"id": doc_id, "n": 1, "t": "stray"})
    code, summary = _verify(env)
    assert code == 1 and summary["extra"] == 3 and summary["missing"] == 0, summary
    assert set(summary["tables"]["items"]["examples"]["extra"]) == {"007", "manual-1", "7.0"}
    code, summary = _verify(env, "--repair")
    assert code == 0, summary
    assert set(env.documents("items")) == {str(i) for i in range(1, 8)}


def test_composite_key_collection_with_a_stray_document(env: Env) -> None:
    app_exec(env.db, "CREATE TABLE pairs (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b))")
    env.write_config([{"table": "pairs"}])
    env.cli("install", check=True)
    app_write(env.db, [[("INSERT INTO pairs VALUES (?, ?, 'v')", ["x", i]) for i in range(5)]])
    _run_once(env)
    collection = env.collection("pairs")
    for doc_id in ("manual-1", '["x",1,2]', "[1"):
        _put(env, collection, {"id": doc_id, "a": "x", "b": 1, "v": "stray"})
    result = env.cli("verify", "--json")
    assert "Traceback" not in result.stderr and result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["extra"] == 3
    assert env.cli("verify", "--repair").returncode == 0
    assert len(env.documents("pairs")) == 5
    with httpx.Client(base_url=env.typesense.url) as client:  # the server is still healthy
        assert client.get("/health").json()["ok"] is True
