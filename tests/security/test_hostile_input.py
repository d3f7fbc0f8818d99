"""Hostile input, end to end: odd identifiers, values SQLite allows but Typesense can't take,
names that are not tables, and broken files. Each gives a mirrored document (by a documented
conversion), a dead letter with a clear reason, or a one-line error with the right exit code —
never a traceback, and never a blocked row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import ELEMENTS_DDL, Env, app_exec, app_write, collection_documents, db_scalar

from cdc_daemon.localserver import LocalTypesense

TABLE = "wéird \"table\" 'name'; x"
T = '"' + TABLE.replace('"', '""') + '"'
COLUMNS = {
    "key": "key col ü",
    "text": "naïve \"quoted\" 'col'",
    "n": "n",
    "small": "small",
    "r": "r",
    "big": "big text",
}
DDL = (
    f'CREATE TABLE {T} ("key col ü" TEXT PRIMARY KEY, "naïve ""quoted"" \'col\'" TEXT,'
    ' n INTEGER, small INTEGER, r REAL, "big text" TEXT)'
)
INSERT = f"INSERT INTO {T} VALUES (?, ?, ?, ?, ?, ?)"
ODD_IDS = [".", "..", "*", "search", "x/y", "+1", "%2E"]  # ids that are paths, routes, filters
BIG = ("é🦄 \"quote' ;\n" * 80_000)[: 1 << 20]  # 1 MiB of text


def no_traceback(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line; fails on a traceback or a multi-line message."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cdc-daemon: error: "), lines[0]
    return lines[0]


def test_hostile_corpus_end_to_end(env: Env) -> None:
    collection = env.collection("x") + " \"odd\" cöllection; 'x'"
    app_exec(env.db, "PRAGMA journal_mode=WAL", DDL)
    env.write_config(
        [{"table": TABLE, "collection": collection, "fields": {"small": {"type": "int32"}}}],
        sync={"batch_size": 200, "poll_interval": 0.2, "max_attempts": 1},
    )
    env.cli("install", check=True)
    app_write(env.db, [[
        (INSERT, ["plain", "hello", 1, 2, 1.5, "x"]),
        (INSERT, ["it's \"ü\" ; --", "quote", 2, 3, 2.5, None]),
        (INSERT, ["text-in-int", "a", "not a number", 1, 1.0, None]),
        (f"INSERT INTO {T} VALUES ('bad-utf8', CAST(X'61FF62' AS TEXT), 3, 1, 0.5, NULL)", []),
        (INSERT, ["inf", "a", 4, 1, 1e999, None]),
        (INSERT, ["-inf", "a", 5, 1, -1e999, None]),
        (INSERT, ["nan", "a", 6, 1, float("nan"), None]),  # SQLite stores NaN as NULL
        (INSERT, ["int32-overflow", "a", 7, 2**40, 1.0, None]),
        (INSERT, ["real-beyond-int64", "a", 1e300, 1, 1.0, None]),
        (INSERT, ["big", "a", 8, 1, 1.0, BIG]),
        (f"INSERT INTO {T} VALUES (CAST(X'6BFF' AS TEXT), 'key not utf-8', 9, 1, 1.0, NULL)", []),
        *[(INSERT, [key, "odd id", 11, 1, 1.0, None]) for key in ODD_IDS],
    ]])
    result = env.cli("run", "--once", timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]  # rejected documents are said: exit 1
    assert '"event": "documents rejected"' in result.stderr

    docs = collection_documents(env.http, collection)
    assert set(docs) == {"plain", "it's \"ü\" ; --", "bad-utf8", "nan", "big", *ODD_IDS}
    assert docs["plain"] == {"id": "plain", "key col ü": "plain", COLUMNS["text"]: "hello",
                             "n": 1, "small": 2, "r": 1.5, "big text": "x"}
    assert docs["bad-utf8"][COLUMNS["text"]] == "a\ufffdb"  # invalid bytes → U+FFFD
    assert "r" not in docs["nan"]
    big = docs["big"]["big text"]
    # compared by hand: pytest's diff of two 1 MiB strings takes many minutes
    if big != BIG:
        at = next((i for i, (a, b) in enumerate(zip(big, BIG, strict=False)) if a != b), None)
        raise AssertionError(f"1 MiB text differs: lengths {len(big)}/{len(BIG)}, first at {at}")

    dead = {
        letter["key"]: letter["error"]
        for letter in map(json.loads, env.cli("dead-letters", "list", "--json",
                                              check=True).stdout.splitlines())
    }
    assert "int64" in dead["text-in-int"]  # Typesense's reason, kept
    assert "not finite" in dead["inf"] and "not finite" in dead["-inf"]
    assert "out of range for int32" in dead["int32-overflow"]
    assert "out of range for int64" in dead["real-beyond-int64"]
    assert "UTF-8" in dead["k\ufffd"]
    assert len(dead) == 6
    status = env.status()
    assert status["backlog"] == 0 and status["dead_letters"] == 6

    # The app fixes a row: it syncs, and its dead letter goes away. Nothing else was held up. The
    # odd ids are deleted: each deletes exactly its document (`..` once deleted the collection).
    app_write(env.db, [[(f"UPDATE {T} SET n = 10 WHERE \"key col ü\" = 'text-in-int'", [])]
                       + [(f'DELETE FROM {T} WHERE "key col ü" = ?', [key]) for key in ODD_IDS]])
    assert env.cli("run", "--once", timeout=120).returncode == 0
    docs = collection_documents(env.http, collection)
    assert docs["text-in-int"]["n"] == 10
    assert set(docs) == {"plain", "it's \"ü\" ; --", "bad-utf8", "nan", "big", "text-in-int"}
    assert env.status()["dead_letters"] == 5

    verify = env.verify()
    # Rows that can't become documents are not in search: verify says so, with the reason.
    assert not verify["in_sync"] and verify["extra"] == 0 and verify["stale"] == 0, verify
    assert verify["missing"] == 5 and verify["dead_letters"] == 5, json.dumps(verify)


def test_a_table_name_that_is_not_a_table_is_refused_before_any_sql(env: Env) -> None:
    app_exec(env.db, ELEMENTS_DDL)
    env.write_config([{"table": "elements; DROP TABLE elements"}])
    for command in ("install", "check", "run"):
        result = env.cli(command, timeout=60)
        assert result.returncode == 2, (command, result.stderr)
        line = no_traceback(result)
        assert "tables[0].table" in line and "does not exist" in line
    assert db_scalar(env.db, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'elements'") == 1
    logs = "SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'change_log%'"
    assert db_scalar(env.db, logs) == 0


@pytest.mark.parametrize("content", [
    b"database: app.db\ntypesense:\n  nodes: [\"http://127.0.0.1:1\"\n",  # truncated mid-list
    b"database: app.db\ntypesense: {nodes: [x]}\ntables:\n  - table: ",  # truncated value
    b"\x00\x01\x02\xff\xfe garbage",
    b"\xff\xfe\xfd not utf-8",
    b"- just\n- a list\n",
    b"",
    b"database: [unclosed\n  : :\n\t tab",
])
def test_corrupt_config(env: Env, content: bytes) -> None:
    env.config_path.write_bytes(content)
    result = env.cli("status", timeout=30)
    assert result.returncode == 2, result.stderr
    assert str(env.config_path) in no_traceback(result) or "config" in result.stderr


def test_unreadable_key_files(env: Env) -> None:
    app_exec(env.db, ELEMENTS_DDL)
    (env.tmp / "keydir").mkdir()
    (env.tmp / "binary.key").write_bytes(b"\xff\xfe\x00")
    (env.tmp / "empty.key").write_text("  \n")
    for name in ("keydir", "binary.key", "empty.key", "missing.key"):
        env.write_config([{"table": "elements"}],
                         typesense={"nodes": ["http://127.0.0.1:1"], "api_key": None,
                                    "api_key_file": name})
        result = env.cli("check", timeout=30)
        assert result.returncode == 2, (name, result.stderr)
        assert "typesense.api_key_file" in no_traceback(result)
    # A KMS token file that can't be read: `check` names it, exit 1 (operational).
    env.write_config([{"table": "elements"}],
                     typesense={"nodes": ["http://127.0.0.1:1"], "api_key": None,
                                "kms": {"url": "http://127.0.0.1:1", "key_name": "k",
                                        "token_file": "keydir"}})
    env.cli("install", check=True)
    result = env.cli("check", timeout=30)
    assert result.returncode == 1
    assert "typesense.kms.token_file: cannot read" in result.stdout
    assert "Traceback" not in result.stderr


def test_database_not_sqlite_or_a_folder(env: Env) -> None:
    env.db.write_bytes(b"this is not a database at all" * 200)
    env.write_config([{"table": "elements"}])
    for command in ("status", "check", "install", "run"):
        result = env.cli(command, timeout=30)
        assert result.returncode == 1, (command, result.stderr)
        assert "not a SQLite database" in no_traceback(result)
    env.db.unlink()
    env.db.mkdir()
    result = env.cli("status", timeout=30)
    assert result.returncode == 1
    assert str(env.db) in no_traceback(result)


def test_locked_database(env: Env) -> None:
    """An app holding an exclusive lock (rollback journal): a clear error after busy_timeout."""
    app_exec(env.db, ELEMENTS_DDL)
    env.write_config([{"table": "elements"}])
    env.cli("install", check=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sqlite3, sys\n"
            f"c = sqlite3.connect({str(env.db)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "c.execute(\"INSERT INTO elements (id, element_type, element_id, sequence_number,"
            " version_number) VALUES (1, 'x', 1, 1, 1)\")\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n"
        )],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = env.cli("status", timeout=60)
        assert result.returncode == 1, result.stderr
        assert "database is locked" in no_traceback(result)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)


def test_hostile_names_in_yaml_keys_round_trip(tmp_path: Path, typesense: LocalTypesense) -> None:
    """Column overrides, rename and exclude with odd names work through the YAML config."""
    env = Env(tmp_path, typesense, "ren")
    try:
        app_exec(env.db, DDL)
        env.write_config([{
            "table": TABLE,
            "rename": {COLUMNS["text"]: "text"},
            "exclude": [COLUMNS["big"]],
            "fields": {"key col ü": {"facet": True}},
        }])
        assert yaml.safe_load(env.config_path.read_text())["tables"][0]["table"] == TABLE
        env.cli("install", check=True)
        app_write(env.db, [[(INSERT, ["k", "v", 1, 1, 1.0, "dropped"])]])
        assert env.cli("run", "--once", timeout=60).returncode == 0
        docs = collection_documents(env.http, env.collection(TABLE))
        assert docs == {"k": {"id": "k", "key col ü": "k", "text": "v", "n": 1, "small": 1,
                              "r": 1.0}}
    finally:
        env.http.close()
