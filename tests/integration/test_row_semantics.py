"""How SQLite's trickier writes reach Typesense: evictions through UNIQUE indexes, primary-key
updates, delete-and-reinsert in one transaction, and how fast the daemon sees a commit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    Env,
    app_exec,
    app_write,
    db_rows,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

PEOPLE_DDL = """CREATE TABLE people (
  id INTEGER PRIMARY KEY,
  email TEXT NOT NULL UNIQUE,
  handle TEXT UNIQUE ON CONFLICT REPLACE,
  name TEXT,
  score INTEGER NOT NULL DEFAULT 0
)"""

ITEMS_DDL = """CREATE TABLE items (
  region TEXT NOT NULL,
  code TEXT NOT NULL,
  slug TEXT UNIQUE,
  qty INTEGER NOT NULL,
  note TEXT,
  PRIMARY KEY (region, code)
) WITHOUT ROWID"""


def composite_id(*values: Any) -> str:
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))


def expected_people(db: Path) -> dict[str, dict[str, Any]]:
    docs = {}
    for pid, email, handle, name, score in db_rows(
        db, "SELECT id, email, handle, name, score FROM people"
    ):
        doc = {"id": str(pid), "email": email, "handle": handle, "name": name, "score": score}
        docs[str(pid)] = {k: v for k, v in doc.items() if v is not None}
    return docs


def expected_items(db: Path) -> dict[str, dict[str, Any]]:
    docs = {}
    for region, code, slug, qty, note in db_rows(
        db, "SELECT region, code, slug, qty, note FROM items"
    ):
        doc_id = composite_id(region, code)
        doc = {"id": doc_id, "region": region, "code": code, "slug": slug, "qty": qty,
               "note": note}
        docs[doc_id] = {k: v for k, v in doc.items() if v is not None}
    return docs


def assert_converged(env: Env) -> None:
    report = env.verify()
    assert report["in_sync"] is True, report
    assert (report["missing"], report["extra"], report["stale"]) == (0, 0, 0)
    assert env.documents("people") == expected_people(env.db)
    assert env.documents("items") == expected_items(env.db)


@pytest.fixture
def tables_env(env: Env) -> Env:
    app_exec(env.db, "PRAGMA journal_mode=WAL", PEOPLE_DDL, ITEMS_DDL)
    env.write_config([{"table": "people"}, {"table": "items"}])
    env.cli("install", check=True)
    return env


def test_insert_or_replace_evicting_another_row_deletes_its_document(tables_env: Env) -> None:
    env = tables_env
    app_write(env.db, [[
        ("INSERT INTO people (id, email, handle, name) VALUES (1, 'a@x', 'ha', 'Ann')", []),
        ("INSERT INTO people (id, email, handle, name) VALUES (2, 'b@x', 'hb', 'Bob')", []),
        ("INSERT INTO people (id, email, handle, name) VALUES (3, 'c@x', 'hc', 'Cid')", []),
        ("INSERT INTO people (id, email, handle, name) VALUES (4, 'd@x', 'hd', 'Dan')", []),
        ("INSERT INTO items VALUES ('eu', 'a', 's1', 1, NULL)", []),
        ("INSERT INTO items VALUES ('eu', 'b', 's2', 2, 'two')", []),
    ]])
    env.cli("run", "--once", check=True)
    assert set(env.documents("people")) == {"1", "2", "3", "4"}

    # A new key takes row 1's email: SQLite deletes row 1 without firing a delete trigger.
    app_exec(env.db, "INSERT OR REPLACE INTO people (id, email, name) VALUES (10, 'a@x', 'New')")
    # UPDATE OR REPLACE moves row 3 onto row 2's email: row 2 is evicted.
    app_exec(env.db, "UPDATE OR REPLACE people SET email = 'b@x' WHERE id = 3")
    # A plain INSERT into a UNIQUE ON CONFLICT REPLACE column evicts row 4.
    app_exec(env.db, "INSERT INTO people (id, email, handle) VALUES (11, 'e@x', 'hd')")
    # Composite TEXT key: a different key takes slug s1.
    app_exec(env.db, "INSERT OR REPLACE INTO items VALUES ('us', 'a', 's1', 9, 'moved')")
    env.cli("run", "--once", check=True)

    people = env.documents("people")
    assert set(people) == {"3", "10", "11"}
    assert people["10"] == {"id": "10", "email": "a@x", "name": "New", "score": 0}
    assert people["3"]["email"] == "b@x"
    items = env.documents("items")
    assert set(items) == {composite_id("eu", "b"), composite_id("us", "a")}
    assert_converged(env)


def test_primary_key_update_moves_the_document(tables_env: Env) -> None:
    env = tables_env
    app_write(env.db, [[
        ("INSERT INTO people (id, email, name) VALUES (1, 'a@x', 'Ann')", []),
        ("INSERT INTO people (id, email, name) VALUES (2, 'b@x', 'Bob')", []),
        ("INSERT INTO items VALUES ('eu', 'a', 's1', 1, 'one')", []),
        ("INSERT INTO items VALUES ('eu', 'it''s', 's2', 2, NULL)", []),
    ]])
    env.cli("run", "--once", check=True)
    assert set(env.documents("people")) == {"1", "2"}

    app_exec(
        env.db,
        "UPDATE people SET id = 100, name = 'Ann moved' WHERE id = 1",
        "UPDATE items SET code = 'z, \"q\"' WHERE region = 'eu' AND code = 'a'",
        "UPDATE items SET region = 'us' WHERE code = 'it''s'",
        # UPDATE OR REPLACE onto an existing key evicts that row.
        "UPDATE OR REPLACE people SET id = 2 WHERE id = 100",
    )
    env.cli("run", "--once", check=True)
    people = env.documents("people")
    assert set(people) == {"2"}
    assert people["2"]["name"] == "Ann moved" and people["2"]["email"] == "a@x"
    items = env.documents("items")
    assert set(items) == {composite_id("eu", 'z, "q"'), composite_id("us", "it's")}
    assert items[composite_id("eu", 'z, "q"')]["code"] == 'z, "q"'
    assert_converged(env)


def test_primary_key_update_while_old_document_is_in_flight(tables_env: Env) -> None:
    """Insert and key update in one batch: the old key must never appear, the new must."""
    env = tables_env
    app_write(env.db, [
        [("INSERT INTO people (id, email, name) VALUES (5, 'e@x', 'Eve')", [])],
        [("UPDATE people SET id = 6 WHERE id = 5", [])],
        [("UPDATE people SET id = 5 WHERE id = 6", []),
         ("INSERT INTO people (id, email) VALUES (6, 'f@x')", [])],
    ])
    env.cli("run", "--once", check=True)
    people = env.documents("people")
    assert people == {"5": {"id": "5", "email": "e@x", "name": "Eve", "score": 0},
                      "6": {"id": "6", "email": "f@x", "score": 0}}
    assert_converged(env)


def test_delete_and_reinsert_in_one_transaction(tables_env: Env) -> None:
    env = tables_env
    app_write(env.db, [[
        ("INSERT INTO people (id, email, handle, name, score) VALUES (1, 'a@x', 'ha', 'Old', 5)",
         []),
        ("INSERT INTO items VALUES ('eu', 'a', 's1', 1, 'old note')", []),
    ]])
    env.cli("run", "--once", check=True)
    assert env.documents("people")["1"]["name"] == "Old"

    app_write(env.db, [[
        ("DELETE FROM people WHERE id = 1", []),
        ("INSERT INTO people (id, email, handle, score) VALUES (1, 'new@x', ?, 7)",
         ["line\u2028break\x85"]),
        ("DELETE FROM items WHERE region = 'eu' AND code = 'a'", []),
        ("INSERT INTO items (region, code, qty) VALUES ('eu', 'a', 42)", []),
    ]])
    env.cli("run", "--once", check=True)
    # The whole document is replaced: fields that are NULL now are gone, not merged.
    assert env.documents("people") == {
        "1": {"id": "1", "email": "new@x", "handle": "line\u2028break\x85", "score": 7}
    }
    assert env.documents("items") == {
        composite_id("eu", "a"): {"id": composite_id("eu", "a"), "region": "eu", "code": "a",
                                  "qty": 42}
    }
    # And the other way round, before the first state was ever synced: insert, delete, reinsert.
    app_write(env.db, [[
        ("INSERT INTO people (id, email, name) VALUES (2, 'b@x', 'first')", []),
        ("DELETE FROM people WHERE id = 2", []),
        ("INSERT INTO people (id, email, name) VALUES (2, 'b2@x', 'second')", []),
        ("INSERT INTO people (id, email) VALUES (3, 'c@x')", []),
        ("DELETE FROM people WHERE id = 3", []),
    ]])
    env.cli("run", "--once", check=True)
    people = env.documents("people")
    assert people["2"] == {"id": "2", "email": "b2@x", "name": "second", "score": 0}
    assert "3" not in people
    assert_converged(env)


def test_daemon_picks_up_a_commit_quickly(tables_env: Env) -> None:
    env = tables_env
    daemon = start_daemon_logged(env)
    try:
        wait_for(lambda: env.http.get(f"/collections/{env.collection('people')}").status_code
                 == 200 or daemon.poll() is not None, timeout=30, message="collection created")
        assert daemon.poll() is None, read_daemon_log(env)
        # Let the daemon finish its first (empty) iteration and go to sleep.
        wait_for(lambda: '"running"' in read_daemon_log(env), timeout=10, message="running")

        for i, statement in enumerate([
            "INSERT INTO people (id, email, name) VALUES (1, 'a@x', 'Ann')",
            "UPDATE people SET name = 'Ann 2' WHERE id = 1",
            "INSERT INTO items VALUES ('eu', 'a', NULL, 3, NULL)",
            "DELETE FROM people WHERE id = 1",
        ]):
            app_exec(env.db, statement)
            committed = time.monotonic()
            wait_for(lambda: env.documents("people") == expected_people(env.db)
                     and env.documents("items") == expected_items(env.db),
                     timeout=5, interval=0.02, message=f"change {i} in Typesense within 5 s")
            assert time.monotonic() - committed < 5
        assert daemon.poll() is None, read_daemon_log(env)
    finally:
        assert stop_process(daemon) == 0, read_daemon_log(env)
    assert_converged(env)
