"""Keys at the edges, through run --once and verify (found by attacking issue 12's fixes): an
empty TEXT key, a stray id beyond SQLite's integers, and different non-UTF-8 keys that read as
the same text. Real Typesense, the app as a separate stdlib-sqlite3 process, the CLI."""

from __future__ import annotations

import json
from typing import Any

from support import Env, app_exec, app_write


def _table(env: Env, ddl: str, table: str = "t") -> None:
    app_exec(env.db, ddl)
    env.write_config([{"table": table}], sync={"max_attempts": 1})
    env.cli("install", check=True)


def _run_once(env: Env) -> None:
    result = env.cli("run", "--once", timeout=180)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def _verify(env: Env, *args: str) -> tuple[int, dict[str, Any]]:
    result = env.cli("verify", "--json", *args, timeout=180)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout)


def _dead_letters(env: Env) -> list[dict[str, Any]]:
    result = env.cli("dead-letters", "list", "--json", check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_an_empty_text_key_is_reported_not_a_traceback(env: Env) -> None:
    _table(env, "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
    app_write(env.db, [[("INSERT INTO t VALUES ('', 'empty')", []),
                        ("INSERT INTO t VALUES ('a', 'x')", [])]])
    _run_once(env)
    assert set(env.documents("t")) == {"a"}
    for args in ((), ("--repair",)):
        code, summary = _verify(env, *args)
        assert code == 1 and summary["missing"] == 1, summary
        assert "the document id is empty" in summary["tables"]["t"]["reasons"][""], summary


def test_a_stray_id_beyond_sqlite_integers_is_extra_and_repaired(env: Env) -> None:
    _table(env, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    app_write(env.db, [[("INSERT INTO t VALUES (1, 'x')", [])]])
    _run_once(env)
    stray = {"id": "9223372036854775808", "v": "stray"}
    response = env.http.post(f"/collections/{env.collection('t')}/documents", json=stray)
    assert response.status_code == 201, response.text
    code, summary = _verify(env)
    assert code == 1 and summary["extra"] == 1, summary
    code, summary = _verify(env, "--repair")
    assert code == 0, summary
    assert set(env.documents("t")) == {"1"}


def test_non_utf8_keys_that_read_alike_stay_apart(env: Env) -> None:
    _table(env, "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
    # Three keys whose invalid bytes all read as U+FFFD, and the valid text 'k\ufffd' itself.
    app_write(env.db, [[
        ("INSERT INTO t VALUES (CAST(X'6BFF' AS TEXT), 'a')", []),
        ("INSERT INTO t VALUES (CAST(X'6BFE' AS TEXT), 'b')", []),
        ("INSERT INTO t VALUES (CAST(X'6BC3' AS TEXT), 'c')", []),
        ("INSERT INTO t VALUES ('k\ufffd', 'valid')", []),
    ]])
    _run_once(env)
    assert env.documents("t")["k\ufffd"]["v"] == "valid"
    assert len(_dead_letters(env)) == 3  # one per key, none merged into another
    code, summary = _verify(env)
    assert code == 1 and summary["missing"] == 3 and summary["stale"] == 0, summary


def test_deletes_of_keys_that_can_have_no_document_are_done_not_dead_letters(env: Env) -> None:
    _table(env, "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
    unusable = ["", "é" * 5000]  # an empty id; an id of 10,000 bytes
    app_write(env.db, [[("INSERT INTO t VALUES (?, 'v')", [k]) for k in [*unusable, "ok"]]
                       + [("INSERT INTO t VALUES (CAST(X'6BFF' AS TEXT), 'v')", [])]])
    _run_once(env)
    assert len(_dead_letters(env)) == 3
    # The rows go: their deletes have nothing to delete (no request), succeed, and clear the
    # rows' dead letters.
    app_write(env.db, [[("DELETE FROM t WHERE k <> 'ok'", [])]])
    _run_once(env)
    assert env.status()["backlog"] == 0
    assert _dead_letters(env) == []
    assert _verify(env)[0] == 0


def test_repair_names_only_keys_it_can_repair(env: Env) -> None:
    # An empty key and one of 10,000 bytes can have no document: repair leaves them out of
    # `repaired` (as non-UTF-8 keys) instead of naming them repaired on every run.
    _table(env, "CREATE TABLE tkey (k TEXT PRIMARY KEY, v TEXT)", table="tkey")
    app_write(env.db, [[("INSERT INTO tkey VALUES (?, 'x')", [k]) for k in ["", "é" * 5000, "a"]]])
    _run_once(env)
    response = env.http.delete(f"/collections/{env.collection('tkey')}/documents/a")
    assert response.status_code == 200, response.text
    code, summary = _verify(env, "--repair", "--table", "tkey")
    assert code == 1 and summary["missing"] == 2, summary
    assert summary["tables"]["tkey"]["repaired"] == {"missing": ["a"], "stale": [], "extra": []}
    assert summary["repaired"] == 1  # the count too: before, 3 (the two that stay missing)
    assert set(env.documents("tkey")) == {"a"}
    text = env.cli("verify", "--repair", "--table", "tkey", timeout=180)
    assert "Traceback" not in text.stderr, text.stderr[-3000:]
    assert not [line for line in text.stdout.splitlines() if "  repaired " in line], text.stdout
