"""Which keys the triggers log, written by the app's own (older) SQLite, in both journal modes.

Every logged key must parse back to exactly the key of the row (type and value), and the
daemon's lookup with that key must find the row: a key that no longer finds its row is a lost
update.
"""

from __future__ import annotations

import math
import time

import pytest

from cdc_daemon.changelog import ChangeLog
from cdc_daemon.triggers import installed_triggers
from cdc_daemon.verify import Difference, TableDiff, Verifier

from .helpers import App, World, same_keys

TEXT_KEYS = [
    "plain",
    "it's",
    "''",
    "a,b",
    "',',",
    " spaced out ",
    "trailing ",
    "new\nline",
    "cr\r\nlf",
    "tab\t",
    "emoji 🦄🏳️‍🌈",
    "é中文",
    "NULL",
    "X'00'",
    "1,2",
    "",
    'double "quote"',
]


def test_the_app_sqlite_is_the_old_one(app: App) -> None:
    # The point of these tests: the triggers run inside the app's SQLite, not APSW's.
    import apsw

    app_version = tuple(int(p) for p in app.sqlite_version().split("."))
    assert app_version >= (3, 31, 0)
    assert app_version != tuple(int(p) for p in apsw.sqlite_lib_version().split("."))


def test_integer_keys(world: World) -> None:
    world.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    world.install("t")
    ids = [1, 0, -1, 2**31, 2**63 - 1, -(2**63)]
    world.sql(*[("INSERT INTO t VALUES (?, 'x')", [i]) for i in ids])
    world.sql("UPDATE t SET v = 'y' WHERE id = 1")
    world.sql("DELETE FROM t WHERE id = 0")
    assert world.ops("t") == [((i,), "I") for i in ids] + [((1,), "U"), ((0,), "D")]
    assert all(type(e.key[0]) is int for e in world.log())
    assert set(world.rows_found("t", [(i,) for i in ids])) == {(i,) for i in ids if i != 0}


def test_autoincrement_and_rowid_alias_keys(world: World) -> None:
    world.sql("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
    world.install("t")
    world.sql("INSERT INTO t (v) VALUES ('a')", "INSERT INTO t (v) VALUES ('b')")
    world.sql("UPDATE t SET v = 'c' WHERE rowid = 2")
    assert world.ops("t") == [((1,), "I"), ((2,), "I"), ((2,), "U")]


def test_text_keys(world: World) -> None:
    world.sql("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT) ")
    world.install("t")
    world.sql(*[("INSERT INTO t VALUES (?, 'x')", [k]) for k in TEXT_KEYS])
    world.sql(*[("UPDATE t SET v = 'y' WHERE k = ?", [k]) for k in TEXT_KEYS])
    world.sql(*[("DELETE FROM t WHERE k = ?", [k]) for k in TEXT_KEYS[:3]])
    expected = (
        [((k,), "I") for k in TEXT_KEYS]
        + [((k,), "U") for k in TEXT_KEYS]
        + [((k,), "D") for k in TEXT_KEYS[:3]]
    )
    assert world.ops("t") == expected
    found = world.rows_found("t", [(k,) for k in TEXT_KEYS])
    assert set(found) == {(k,) for k in TEXT_KEYS[3:]}


def test_text_keys_in_without_rowid_table(world: World) -> None:
    world.sql("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID")
    world.install("t")
    world.sql(*[("INSERT INTO t VALUES (?, 'x')", [k]) for k in TEXT_KEYS])
    world.sql("DELETE FROM t WHERE k = 'it''s'")
    assert world.ops("t") == [((k,), "I") for k in TEXT_KEYS] + [(("it's",), "D")]
    assert len(world.rows_found("t", [(k,) for k in TEXT_KEYS])) == len(TEXT_KEYS) - 1


def test_real_and_blob_single_keys_keep_their_type(world: World) -> None:
    world.sql("CREATE TABLE r (k REAL PRIMARY KEY, v TEXT)", "CREATE TABLE b (k BLOB PRIMARY KEY)")
    world.install("r", "b")
    reals = [0.1 + 0.2, 1e-320, 1e300, -0.5, math.inf]
    blobs = [b"", b"\x00", b"\x00\xff'", bytes(range(256))]
    world.sql("INSERT INTO r VALUES (0.1 + 0.2, 'computed by the app')")
    world.sql(*[("INSERT INTO r VALUES (?, 'x')", [k]) for k in reals[1:]])
    world.sql(*[("INSERT INTO b VALUES (?)", [k]) for k in blobs])
    assert same_keys(list(world.keys("r")), [(k,) for k in reals])
    assert same_keys(list(world.keys("b")), [(k,) for k in blobs])
    assert len(world.rows_found("r", [(k,) for k in reals])) == len(reals)
    assert len(world.rows_found("b", [(k,) for k in blobs])) == len(blobs)


def test_composite_integer_text_key(world: World) -> None:
    world.sql("CREATE TABLE t (a INTEGER, b TEXT, v TEXT, PRIMARY KEY (a, b))")
    world.install("t")
    keys = [(1, k) for k in TEXT_KEYS] + [(-(2**63), "min"), (2**63 - 1, "max")]
    world.sql(*[("INSERT INTO t VALUES (?, ?, 'x')", list(k)) for k in keys])
    world.sql("UPDATE t SET v = 'y' WHERE a = 1 AND b = 'a,b'")
    world.sql("DELETE FROM t WHERE a = 1 AND b = 'NULL'")
    assert world.ops("t") == [(k, "I") for k in keys] + [((1, "a,b"), "U"), ((1, "NULL"), "D")]
    assert same_keys([e.key for e in world.log()], [*keys, (1, "a,b"), (1, "NULL")])
    assert set(world.rows_found("t", keys)) == set(keys) - {(1, "NULL")}


def test_composite_key_with_a_real_component_round_trips_exactly(world: World) -> None:
    world.sql("CREATE TABLE t (a INTEGER, r REAL, v TEXT, PRIMARY KEY (a, r))")
    world.install("t")
    world.sql("INSERT INTO t VALUES (1, 0.1 + 0.2, 'computed in SQL')")
    reals = [
        0.1 + 0.2,
        1e-320,
        5e-324,
        2.2250738585072014e-308,
        1.7976931348623157e308,
        123456789012345678.0,
        3.0,
        -0.5,
        math.inf,
        -math.inf,
        1 / 3,
    ]
    world.sql(*[("INSERT INTO t VALUES (2, ?, 'bound')", [r]) for r in reals])
    expected = [(1, 0.1 + 0.2)] + [(2, r) for r in reals]
    logged = [e.key for e in world.log()]
    assert same_keys(logged, expected)
    # bit for bit, not merely close: 0.30000000000000004 must not come back as 0.3
    assert logged[0][1] == 0.30000000000000004 and logged[0][1] != 0.3
    assert set(world.rows_found("t", logged)) == set(expected)


def test_composite_key_with_a_blob_component(world: World) -> None:
    world.sql("CREATE TABLE t (k BLOB, n INTEGER, v TEXT, PRIMARY KEY (k, n)) WITHOUT ROWID")
    world.install("t")
    keys = [(b"", 1), (b"\x00\xff", 2), (b"',", 3), (bytes(range(256)), 4)]
    world.sql(*[("INSERT INTO t VALUES (?, ?, 'x')", list(k)) for k in keys])
    world.sql(("DELETE FROM t WHERE k = ? AND n = 2", [b"\x00\xff"]))
    assert world.ops("t") == [(k, "I") for k in keys] + [((b"\x00\xff", 2), "D")]
    assert set(world.rows_found("t", keys)) == set(keys) - {(b"\x00\xff", 2)}


def test_three_column_key_of_mixed_types_without_rowid(world: World) -> None:
    world.sql(
        "CREATE TABLE t (a TEXT, b INTEGER, c REAL, v TEXT, PRIMARY KEY (c, a, b)) WITHOUT ROWID"
    )
    world.install("t")
    assert world.info("t").key == ("c", "a", "b")  # key order, not column order
    world.sql(("INSERT INTO t VALUES (?, ?, ?, 'x')", ["x,'y'\n", -3, 0.1 + 0.2]))
    assert same_keys([e.key for e in world.log()], [(0.1 + 0.2, "x,'y'\n", -3)])
    assert len(world.rows_found("t", [e.key for e in world.log()])) == 1


def test_names_with_spaces_quotes_and_non_ascii(world: World) -> None:
    table = 'my "odd" tab\'le ñ 表'
    world.sql(
        'CREATE TABLE "my ""odd"" tab\'le ñ 表" ("key col" TEXT, "it\'s ""k2""" INTEGER,'
        ' "välue 🦄" TEXT, PRIMARY KEY ("key col", "it\'s ""k2"""))'
    )
    world.sql('CREATE TABLE "single \'q\'" ("ключ" TEXT PRIMARY KEY, "x y" TEXT)')
    changes = world.install(table, "single 'q'")
    assert len(changes) == 3 + 1 + 2 * 4  # the log's 3 tables, its guard, 4 triggers a table
    names = set(installed_triggers(world.open(), world.names))
    assert f"change_log:{table}:insert" in names and "change_log:single 'q':delete" in names
    world.sql(
        ('INSERT INTO "my ""odd"" tab\'le ñ 表" VALUES (?, ?, ?)', ["a b", 1, "v"]),
        ('UPDATE "my ""odd"" tab\'le ñ 表" SET "it\'s ""k2""" = 2', []),
        ("INSERT INTO \"single 'q'\" VALUES (?, ?)", ["ключ'1", "v"]),
        ("DELETE FROM \"single 'q'\"", []),
    )
    log = world.log()
    assert {e.table for e in log} == {table, "single 'q'"}
    assert sorted((e.key, e.op) for e in log if e.table == table) == [
        (("a b", 1), "D"),
        (("a b", 1), "I"),
        (("a b", 2), "U"),
    ]
    assert [(e.key, e.op) for e in log if e.table == "single 'q'"] == [
        (("ключ'1",), "I"),
        (("ключ'1",), "D"),
    ]
    assert set(world.rows_found(table, [("a b", 2)])) == {("a b", 2)}


def test_nullable_keys_never_make_the_app_write_fail(world: World) -> None:
    # A non-INTEGER PRIMARY KEY in a rowid table accepts NULL (an old SQLite quirk).
    world.sql(
        "CREATE TABLE s (k TEXT PRIMARY KEY, v TEXT)",
        "CREATE TABLE c (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b))",
        "CREATE TABLE u (k TEXT PRIMARY KEY, e TEXT UNIQUE)",
    )
    world.install("s", "c", "u")
    world.sql(
        "INSERT INTO s VALUES (NULL, 'a')",
        "INSERT INTO s VALUES (NULL, 'b')",
        "UPDATE s SET v = 'c' WHERE k IS NULL",
        "UPDATE s SET k = 'now set' WHERE v = 'c' AND rowid = 1",
        "DELETE FROM s WHERE k IS NULL",
        "INSERT INTO c VALUES (NULL, NULL, 'x')",
        "INSERT INTO c VALUES ('a', NULL, 'x')",
        "UPDATE c SET v = 'y'",
        "DELETE FROM c",
        "INSERT INTO u VALUES (NULL, NULL)",
        "INSERT OR REPLACE INTO u VALUES (NULL, 'e')",
        "UPDATE OR REPLACE u SET e = NULL",
    )
    raw = world.raw_log()
    assert len([r for r in raw if r[0] == "s"]) == 7
    assert ("s", None, "I") in raw and ("s", "now set", "U") in raw
    assert ("c", "NULL,NULL", "I") in raw and ("c", "'a',NULL", "D") in raw
    assert [r for r in raw if r[0] == "u"] == [
        ("u", None, "I"),
        ("u", None, "I"),
        ("u", None, "U"),
        ("u", None, "U"),
    ]


def test_log_timestamps_are_unix_seconds_on_old_sqlite(world: World) -> None:
    world.sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    world.install("t")
    before = time.time()
    world.sql("INSERT INTO t VALUES (1)")
    after = time.time()
    rows = world.open().query("SELECT ts, attempts, next_attempt_at, last_error FROM change_log")
    assert len(rows) == 1
    ts, attempts, next_attempt_at, last_error = rows[0]
    assert isinstance(ts, float)
    assert before - 1 <= ts <= after + 1
    assert (attempts, next_attempt_at, last_error) == (0, 0, None)


def test_install_never_changes_the_journal_mode(world: World, journal_mode: str) -> None:
    world.sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    world.install("t")
    world.sql("INSERT INTO t VALUES (1)")
    world.clear_log()
    assert world.app.each(world.path, "PRAGMA journal_mode") == [(journal_mode,)]
    assert world.app.each(world.path, "PRAGMA integrity_check") == [("ok",)]


def test_only_configured_tables_are_logged(world: World) -> None:
    world.sql(
        "CREATE TABLE t (id INTEGER PRIMARY KEY)", "CREATE TABLE other (id INTEGER PRIMARY KEY)"
    )
    world.install("t")
    world.sql("INSERT INTO other VALUES (1)", "INSERT INTO t VALUES (2)")
    assert [(e.table, e.key) for e in world.log()] == [("t", (2,))]


@pytest.mark.parametrize("rows", [1, 500])
def test_one_log_row_per_changed_row(world: World, rows: int) -> None:
    world.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    world.install("t")
    world.sql(
        (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO t SELECT i, 0 FROM n",
            [rows],
        )
    )
    world.sql("UPDATE t SET v = v + 1")
    world.sql("UPDATE t SET v = v WHERE 0")  # touches nothing, logs nothing
    log = world.log()
    assert len(log) == 2 * rows
    assert [e.seq for e in log] == sorted(e.seq for e in log)
    assert world.keys("t") == {(i,): 2 for i in range(1, rows + 1)}


def test_null_keys_in_the_log_do_not_break_verify(world: World) -> None:
    # verify leaves out keys with changes in flight; a NULL key (nullable TEXT PRIMARY KEY) or a
    # composite key with a NULL names no document and must not make it crash.
    world.sql(
        "CREATE TABLE s (k TEXT PRIMARY KEY, v TEXT)",
        "CREATE TABLE c (a TEXT, b INTEGER, PRIMARY KEY (a, b))",
    )
    world.install("s", "c")
    world.sql(
        "INSERT INTO s VALUES (NULL, 'x')",
        "INSERT INTO s VALUES ('None', 'a real key')",
        "INSERT INTO c VALUES ('a', NULL)",
        "INSERT INTO c VALUES ('a', 1)",
    )
    db = world.open()
    verifier = Verifier(db, ChangeLog(db, world.names, max_attempts=3), sink=None)
    for table, in_flight, other in [("s", ("None",), ("zz",)), ("c", ("a", 1), ("b", 2))]:
        mapping = world.mapping(table)
        young, absent = (Difference(mapping.doc_id(k), k) for k in (in_flight, other))
        diff = TableDiff(missing=[young, absent], stale=[young], extra=[absent])
        verifier._classify(mapping, diff)
        assert (diff.missing, diff.stale, diff.extra) == ([absent], [], [absent])
        assert diff.in_flight == 2
