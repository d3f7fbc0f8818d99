"""REPLACE, upsert and key updates: every row whose document must change has its key logged.

With recursive_triggers off (the default, and the app's choice), SQLite fires no DELETE trigger
for rows that REPLACE evicts; the BEFORE INSERT / BEFORE UPDATE OF triggers must log them.
"""

from __future__ import annotations

import pytest

from .helpers import World, same_keys

USERS = "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT)"


def users(world: World) -> World:
    world.sql(USERS)
    world.install("users")
    world.sql(
        "INSERT INTO users VALUES (1, 'a@x', 'ann')",
        "INSERT INTO users VALUES (2, 'b@x', 'bob')",
        "INSERT INTO users VALUES (3, 'c@x', 'cid')",
    )
    world.clear_log()
    return world


def rows(world: World, table: str = "users") -> list[tuple[object, ...]]:
    return world.sql(f"SELECT * FROM {table} ORDER BY 1")


def test_insert_or_replace_on_the_same_key(world: World) -> None:
    users(world)
    world.sql("INSERT OR REPLACE INTO users VALUES (1, 'a@x', 'ann 2')")
    world.sql("REPLACE INTO users VALUES (2, 'b2@x', 'bob 2')")
    assert set(world.keys()) == {(1,), (2,)}
    assert ((1,), "I") in world.ops() and ((2,), "I") in world.ops()


def test_insert_or_replace_evicting_another_row_through_a_unique_index(world: World) -> None:
    users(world)
    world.sql("INSERT OR REPLACE INTO users VALUES (9, 'a@x', 'new ann')")
    assert rows(world) == [(2, "b@x", "bob"), (3, "c@x", "cid"), (9, "a@x", "new ann")]
    assert set(world.keys()) == {(1,), (9,)}  # 1 is gone: its document must go too
    assert ((1,), "D") in world.ops()


def test_insert_or_replace_evicting_two_rows_at_once(world: World) -> None:
    users(world)
    world.sql("INSERT OR REPLACE INTO users VALUES (1, 'b@x', 'takes over')")
    assert rows(world) == [(1, "b@x", "takes over"), (3, "c@x", "cid")]
    assert set(world.keys()) == {(1,), (2,)}


def test_update_or_replace_evicting_another_row_through_a_unique_index(world: World) -> None:
    users(world)
    world.sql("UPDATE OR REPLACE users SET email = 'c@x' WHERE id = 1")
    assert rows(world) == [(1, "c@x", "ann"), (2, "b@x", "bob")]
    assert set(world.keys()) == {(1,), (3,)}
    assert ((3,), "D") in world.ops()


def test_update_or_replace_evicting_through_the_primary_key(world: World) -> None:
    users(world)
    world.sql("UPDATE OR REPLACE users SET id = 3 WHERE id = 1")
    assert rows(world) == [(2, "b@x", "bob"), (3, "a@x", "ann")]
    assert set(world.keys()) == {(1,), (3,)}


def test_unique_on_conflict_replace_column_with_a_plain_insert(world: World) -> None:
    world.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, code TEXT UNIQUE ON CONFLICT REPLACE)")
    world.install("t")
    world.sql("INSERT INTO t VALUES (1, 'x')", "INSERT INTO t VALUES (2, 'y')")
    world.clear_log()
    world.sql("INSERT INTO t VALUES (3, 'x')")
    assert rows(world, "t") == [(2, "y"), (3, "x")]
    assert set(world.keys()) == {(1,), (3,)}


def test_multi_column_unique_constraint(world: World) -> None:
    world.sql("CREATE TABLE t (k TEXT PRIMARY KEY, a INTEGER, b TEXT, UNIQUE (a, b)) WITHOUT ROWID")
    world.install("t")
    world.sql("INSERT INTO t VALUES ('one', 1, 'x')", "INSERT INTO t VALUES ('two', 1, 'y')")
    world.clear_log()
    world.sql("INSERT OR REPLACE INTO t VALUES ('three', 1, 'y')")  # evicts 'two'
    world.sql("UPDATE OR REPLACE t SET b = 'y' WHERE k = 'one'")  # evicts 'three'
    assert rows(world, "t") == [("one", 1, "y")]
    assert set(world.keys()) == {("two",), ("three",), ("one",)}
    assert (("two",), "D") in world.ops() and (("three",), "D") in world.ops()


def test_several_unique_indexes_composite_key(world: World) -> None:
    world.sql(
        "CREATE TABLE t (a INTEGER, b TEXT, email TEXT, phone TEXT, PRIMARY KEY (a, b))",
        "CREATE UNIQUE INDEX t_email ON t (email)",
        "CREATE UNIQUE INDEX t_phone ON t (phone)",
        "CREATE INDEX t_not_unique ON t (b)",
    )
    assert len(world.info("t").unique_indexes) == 2
    world.install("t")
    world.sql(
        "INSERT INTO t VALUES (1, 'x', 'e1', 'p1')",
        "INSERT INTO t VALUES (2, 'y', 'e2', 'p2')",
        "INSERT INTO t VALUES (3, 'z', 'e3', 'p3')",
    )
    world.clear_log()
    world.sql("INSERT OR REPLACE INTO t VALUES (4, 'w', 'e1', 'p2')")  # evicts two rows
    assert rows(world, "t") == [(3, "z", "e3", "p3"), (4, "w", "e1", "p2")]
    assert same_keys(set(world.keys()), {(1, "x"), (2, "y"), (4, "w")})


def test_unique_index_with_its_own_collation(world: World) -> None:
    world.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT)",
        "CREATE UNIQUE INDEX t_email ON t (email COLLATE NOCASE)",
    )
    world.install("t")
    world.sql("INSERT INTO t VALUES (1, 'ann@x')", "INSERT INTO t VALUES (2, 'bob@x')")
    world.clear_log()
    world.sql("INSERT OR REPLACE INTO t VALUES (3, 'ANN@X')")
    world.sql("UPDATE OR REPLACE t SET email = 'Bob@X' WHERE id = 3")
    assert rows(world, "t") == [(3, "Bob@X")]
    assert {(1,), (2,)} <= set(world.keys())


def test_partial_and_expression_unique_indexes_do_not_break_writes(world: World) -> None:
    world.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT, live INTEGER)",
        "CREATE UNIQUE INDEX t_live_email ON t (email) WHERE live",
        "CREATE UNIQUE INDEX t_lower ON t (lower(email))",
    )
    world.install("t")
    world.sql("INSERT INTO t VALUES (1, 'a', 1)", "INSERT INTO t VALUES (2, 'b', 0)")
    world.clear_log()
    world.sql("INSERT OR REPLACE INTO t VALUES (3, 'a', 1)")  # evicts 1 via the partial index
    assert rows(world, "t") == [(2, "b", 0), (3, "a", 1)]
    assert {(1,), (3,)} <= set(world.keys())


def test_upsert_do_update(world: World) -> None:
    users(world)
    world.sql(
        "INSERT INTO users VALUES (1, 'a@x', 'upserted') "
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name"
    )
    world.sql(
        "INSERT INTO users VALUES (7, 'b@x', 'by email') "
        "ON CONFLICT (email) DO UPDATE SET name = excluded.name"
    )
    world.sql(
        "INSERT INTO users VALUES (8, 'h@x', 'fresh') "
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name"
    )
    assert rows(world) == [
        (1, "a@x", "upserted"),
        (2, "b@x", "by email"),
        (3, "c@x", "cid"),
        (8, "h@x", "fresh"),
    ]
    assert set(world.keys()) == {(1,), (2,), (8,)}
    assert ((1,), "U") in world.ops() and ((2,), "U") in world.ops()
    assert ((8,), "I") in world.ops()


def test_upsert_do_nothing_and_insert_or_ignore(world: World) -> None:
    users(world)
    world.sql("INSERT INTO users VALUES (1, 'z@x', 'ignored') ON CONFLICT DO NOTHING")
    world.sql("INSERT OR IGNORE INTO users VALUES (5, 'a@x', 'ignored')")
    assert rows(world) == [(1, "a@x", "ann"), (2, "b@x", "bob"), (3, "c@x", "cid")]
    # Nothing changed; logging an unchanged key is allowed (it is re-read), inserting is not.
    assert set(world.keys()) <= {(1,)}
    assert all(op != "I" for _, op in world.ops())


def test_update_of_the_primary_key_logs_old_and_new(world: World) -> None:
    users(world)
    world.sql("UPDATE users SET id = 10 WHERE id = 1")
    assert sorted(world.ops()) == [((1,), "D"), ((10,), "U")]
    world.clear_log()
    world.sql("UPDATE users SET id = id + 100")  # every key moves
    assert set(world.keys()) == {(2,), (3,), (10,), (102,), (103,), (110,)}
    world.clear_log()
    world.sql("UPDATE users SET id = id, name = 'same key'")  # key in SET, but unchanged
    assert sorted(world.ops()) == [((102,), "U"), ((103,), "U"), ((110,), "U")]


def test_update_of_one_component_of_a_composite_key(world: World) -> None:
    world.sql("CREATE TABLE t (a INTEGER, b TEXT, v TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID")
    world.install("t")
    world.sql("INSERT INTO t VALUES (1, 'eu', 'x')")
    world.clear_log()
    world.sql("UPDATE t SET b = 'us' WHERE a = 1")
    assert sorted(world.ops()) == [((1, "eu"), "D"), ((1, "us"), "U")]
    world.clear_log()
    world.sql("UPDATE t SET v = 'y'")
    assert world.ops() == [((1, "us"), "U")]


def test_case_only_change_of_a_nocase_key_logs_the_old_key(world: World) -> None:
    # 'Abc' and 'abc' are one key to SQLite but two document ids: the old one must go.
    world.sql("CREATE TABLE t (k TEXT PRIMARY KEY COLLATE NOCASE, v TEXT)")
    world.install("t")
    world.sql("INSERT INTO t VALUES ('Abc', 'x')")
    world.clear_log()
    world.sql("UPDATE t SET k = 'abc'")
    assert sorted(world.ops()) == [(("Abc",), "D"), (("abc",), "U")]
    assert list(world.rows_found("t", [("Abc",), ("abc",)])) == [("abc",)]


def test_delete_and_reinsert_in_one_transaction(world: World) -> None:
    users(world)
    world.sql(
        "DELETE FROM users WHERE id = 1",
        "INSERT INTO users VALUES (1, 'a@x', 'reborn')",
        "DELETE FROM users WHERE id = 2",
    )
    assert world.ops() == [((1,), "D"), ((1,), "I"), ((2,), "D")]
    assert list(world.rows_found("users", [(1,), (2,)])) == [(1,)]


def test_a_rolled_back_write_logs_nothing(world: World) -> None:
    users(world)
    with pytest.raises(Exception, match="UNIQUE"):
        world.sql(
            "UPDATE users SET name = 'x' WHERE id = 1", "INSERT INTO users VALUES (2, 'q', 'q')"
        )
    with pytest.raises(Exception, match="UNIQUE"):
        world.sql("INSERT INTO users VALUES (4, 'a@x', 'dup email')")
    assert world.log() == []
    assert rows(world) == [(1, "a@x", "ann"), (2, "b@x", "bob"), (3, "c@x", "cid")]


def test_recursive_triggers_on_still_logs_evicted_rows(world: World) -> None:
    users(world)
    world.app.each(world.path, "PRAGMA recursive_triggers = ON")  # the app connection's choice
    try:
        world.sql("INSERT OR REPLACE INTO users VALUES (9, 'a@x', 'new ann')")
    finally:
        world.app.each(world.path, "PRAGMA recursive_triggers = OFF")
    assert set(world.keys()) == {(1,), (9,)}


def test_foreign_key_cascade_is_logged_when_the_app_enables_foreign_keys(world: World) -> None:
    world.sql(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY)",
        "CREATE TABLE child (id INTEGER PRIMARY KEY,"
        " parent_id INTEGER REFERENCES parent (id) ON DELETE CASCADE)",
    )
    world.install("parent", "child")
    world.sql("INSERT INTO parent VALUES (1)", "INSERT INTO child VALUES (10, 1)")
    world.clear_log()
    world.app.each(world.path, "PRAGMA foreign_keys = ON")
    try:
        world.sql("DELETE FROM parent WHERE id = 1")
    finally:
        world.app.each(world.path, "PRAGMA foreign_keys = OFF")
    assert sorted((e.table, e.key, e.op) for e in world.log()) == [
        ("child", (10,), "D"),
        ("parent", (1,), "D"),
    ]
