"""A primary key that compares other than byte for byte (COLLATE NOCASE, RTRIM): a REPLACE
through the key itself evicts a row whose key is another document id ('alice@x' replaces
'Alice@x'), and no delete trigger fires (recursive_triggers off). The key's own BEFORE triggers
log the evicted key; a BINARY key gets none (the app's write cost is unchanged)."""

from __future__ import annotations

from cdc_daemon.triggers import expected_triggers

from .helpers import World

USERS = "CREATE TABLE u (email TEXT PRIMARY KEY COLLATE NOCASE, name TEXT)"


def users(world: World, ddl: str = USERS) -> World:
    world.sql(ddl)
    world.install("u")
    world.sql(
        "INSERT INTO u VALUES ('Alice@Example.com', 'alice')",
        "INSERT INTO u VALUES ('bob@x', 'bob')",
    )
    world.clear_log()
    return world


def rows(world: World, table: str = "u") -> list[tuple[object, ...]]:
    return world.sql(f"SELECT * FROM {table} ORDER BY 1")


def kinds(world: World, table: str) -> set[str]:
    names = expected_triggers(world.names, world.info(table))
    return {name.rsplit(":", 1)[1] for name in names}


def test_the_key_collation_is_read_from_the_key_index(world: World) -> None:
    world.sql(
        USERS,
        "CREATE TABLE w (e TEXT COLLATE NOCASE, n INT, v TEXT, PRIMARY KEY (n, e)) WITHOUT ROWID",
        "CREATE TABLE r (e TEXT, n INT, PRIMARY KEY (n, e COLLATE RTRIM))",
        "CREATE TABLE i (id INTEGER PRIMARY KEY, e TEXT COLLATE NOCASE UNIQUE)",
        "CREATE TABLE b (k TEXT PRIMARY KEY, e TEXT UNIQUE) WITHOUT ROWID",
    )
    assert world.info("u").key_collations == ("NOCASE",)
    assert world.info("w").key_collations == ("BINARY", "NOCASE")
    assert world.info("r").key_collations == ("BINARY", "RTRIM")
    assert world.info("i").key_collations == ("BINARY",)  # the rowid: no index
    assert world.info("b").key_collations == ("BINARY",)
    assert world.info("i").unique_collations == (("NOCASE",),)
    # Only where needed: a BINARY key keeps the four triggers (plus its unique indexes' ones).
    assert {"key_collation_insert", "key_collation_update"} <= kinds(world, "u")
    assert {"key_collation_insert", "key_collation_update"} <= kinds(world, "w")
    assert {"key_collation_insert", "key_collation_update"} <= kinds(world, "r")
    assert kinds(world, "i") == {"insert", "update", "update_key", "delete"} | {
        "unique1_insert",
        "unique1_update",
    }
    assert "key_collation_insert" not in kinds(world, "b")


def test_insert_or_replace_through_a_nocase_key_logs_the_evicted_key(world: World) -> None:
    users(world)
    world.sql("INSERT OR REPLACE INTO u VALUES ('alice@example.com', 'alice 2')")
    assert rows(world) == [("alice@example.com", "alice 2"), ("bob@x", "bob")]
    assert sorted(world.ops()) == [
        (("Alice@Example.com",), "D"),
        (("alice@example.com",), "I"),
    ]


def test_update_or_replace_colliding_by_collation_logs_the_evicted_key(world: World) -> None:
    users(world)
    world.sql("UPDATE OR REPLACE u SET email = 'ALICE@example.com' WHERE email = 'bob@x'")
    assert rows(world) == [("ALICE@example.com", "bob")]
    assert sorted(world.ops()) == [
        (("ALICE@example.com",), "U"),
        (("Alice@Example.com",), "D"),
        (("bob@x",), "D"),
    ]


def test_a_replace_with_the_very_same_key_logs_nothing_more(world: World) -> None:
    users(world)
    world.sql("INSERT OR REPLACE INTO u VALUES ('bob@x', 'bob 2')")
    world.sql("INSERT INTO u VALUES ('new@x', 'new')")
    world.sql("UPDATE u SET email = email, name = 'same key' WHERE email = 'bob@x'")
    assert world.ops() == [(("bob@x",), "I"), (("new@x",), "I"), (("bob@x",), "U")]


def test_case_only_change_of_the_key_logs_old_and_new_once(world: World) -> None:
    users(world)
    world.sql("UPDATE u SET email = 'alice@example.com' WHERE email = 'Alice@Example.com'")
    assert sorted(world.ops()) == [(("Alice@Example.com",), "D"), (("alice@example.com",), "U")]


def test_composite_key_with_a_nocase_part_without_rowid(world: World) -> None:
    world.sql(
        "CREATE TABLE w (e TEXT COLLATE NOCASE, n INT, v TEXT, PRIMARY KEY (n, e)) WITHOUT ROWID"
    )
    world.install("w")
    world.sql("INSERT INTO w VALUES ('Ann', 1, 'a')", "INSERT INTO w VALUES ('bob', 1, 'b')")
    world.clear_log()
    world.sql("INSERT OR REPLACE INTO w VALUES ('ANN', 1, 'a 2')")  # evicts (1, 'Ann')
    world.sql("INSERT OR REPLACE INTO w VALUES ('ann', 2, 'other n')")  # evicts nothing
    world.sql("UPDATE OR REPLACE w SET e = 'BOB' WHERE n = 1 AND e = 'ann'")  # evicts (1, 'bob')
    assert rows(world, "w") == [("ann", 2, "other n"), ("BOB", 1, "a 2")]  # NOCASE order
    assert sorted(world.ops()) == [
        ((1, "ANN"), "D"),  # the key update's old key
        ((1, "ANN"), "I"),
        ((1, "Ann"), "D"),  # evicted by the INSERT OR REPLACE
        ((1, "BOB"), "U"),
        ((1, "bob"), "D"),  # evicted by the UPDATE OR REPLACE
        ((2, "ann"), "I"),
    ]


def test_rtrim_key(world: World) -> None:
    world.sql("CREATE TABLE r (e TEXT, n INT, PRIMARY KEY (n, e COLLATE RTRIM))")
    world.install("r")
    world.sql("INSERT INTO r VALUES ('x  ', 1)")
    world.clear_log()
    world.sql("INSERT OR REPLACE INTO r VALUES ('x', 1)")
    assert sorted(world.ops()) == [((1, "x"), "I"), ((1, "x  "), "D")]


def test_a_failed_plain_insert_logs_nothing(world: World) -> None:
    users(world)
    try:
        world.sql("INSERT INTO u VALUES ('BOB@X', 'dup')")
    except Exception as exc:  # the app's own error: the BEFORE trigger's entry is rolled back
        assert "UNIQUE" in str(exc)
    else:
        raise AssertionError("the insert should have failed")
    assert world.log() == []
