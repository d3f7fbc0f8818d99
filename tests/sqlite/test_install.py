"""install / uninstall / trigger_problems, the log's own table, and the seed table's mapping."""

from __future__ import annotations

import time

import apsw
import pytest
from support import ELEMENTS_DDL, SERVICE_A_COLLECTION_SCHEMA

from cdc_daemon.changelog import ChangeLog, KeyFailure
from cdc_daemon.config import TableConfig
from cdc_daemon.database import Column, TableInfo
from cdc_daemon.errors import ConfigError, DatabaseError
from cdc_daemon.log_schema import LogTables
from cdc_daemon.triggers import (
    ensure_log_is_ours,
    expected_triggers,
    install,
    installed_triggers,
    trigger_problems,
    uninstall,
)
from cdc_daemon.wiring import mapping_from_config

from .helpers import AppError, World

TABLES = (
    "CREATE TABLE a (id INTEGER PRIMARY KEY, email TEXT UNIQUE, v TEXT)",
    "CREATE TABLE b (x TEXT, y INTEGER, PRIMARY KEY (x, y)) WITHOUT ROWID",
)


def schema_rows(world: World) -> list[tuple[object, ...]]:
    return world.open().query("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")


def schema_version(world: World) -> int:
    return int(world.open().scalar("PRAGMA schema_version"))


def test_seed_elements_table_maps_to_the_seed_collection_schema(world: World) -> None:
    world.sql(ELEMENTS_DDL)
    config = TableConfig(
        table="elements",
        collection="service_a_collection",
        fields={
            "element_id": {"type": "int32"},
            "sequence_number": {"type": "int32"},
            "version_number": {"type": "int32"},
            "created_at": {"facet": True},
            "updated_at": {"facet": True},
        },
        default_sorting_field="sequence_number",
    )
    mapping = mapping_from_config(world.info("elements"), config)
    assert mapping.collection_schema() == SERVICE_A_COLLECTION_SCHEMA


def test_table_info_reads_columns_keys_and_unique_indexes(world: World) -> None:
    world.sql(
        'CREATE TABLE "t x" (a TEXT NOT NULL, "b c" INTEGER, d, e BLOB UNIQUE,'
        ' PRIMARY KEY ("b c", a))',
        'CREATE UNIQUE INDEX "t x u" ON "t x" (d COLLATE NOCASE, a)',
        'CREATE UNIQUE INDEX "t x expr" ON "t x" (lower(a))',
    )
    info = world.info("t x")
    assert info.columns == (
        Column("a", "TEXT", True, 2),
        Column("b c", "INTEGER", False, 1),
        Column("d", "", False, 0),
        Column("e", "BLOB", False, 0),
    )
    assert info.key == ("b c", "a")
    assert sorted(zip(info.unique_indexes, info.unique_collations, strict=True)) == [
        (("d", "a"), ("NOCASE", "BINARY")),
        (("e",), ("BINARY",)),
    ]
    with pytest.raises(ConfigError, match="nope"):
        world.info("nope")


def test_install_creates_log_tables_and_triggers(world: World) -> None:
    world.sql(*TABLES)
    changes = world.install("a", "b")
    assert changes[0] == "created log table 'change_log'"
    names = set(installed_triggers(world.open(), world.names))
    assert names == {
        "change_log:change_log:guard",
        "change_log:a:insert",
        "change_log:a:update",
        "change_log:a:update_key",
        "change_log:a:delete",
        "change_log:a:unique1_insert",
        "change_log:a:unique1_update",
        "change_log:b:insert",
        "change_log:b:update",
        "change_log:b:update_key",
        "change_log:b:delete",
    }
    assert len(changes) == 3 + len(names)  # the log, its dead letters, its state
    tables = {r[1] for r in schema_rows(world) if r[0] == "table"}
    assert {"change_log", "change_log_dead", "change_log_state"} <= tables
    assert ensure_log_is_ours(world.open(), world.names)
    assert trigger_problems(world.open(), world.names, [world.info("a"), world.info("b")]) == []


def test_install_is_idempotent(world: World) -> None:
    world.sql(*TABLES)
    world.install("a", "b")
    world.sql("INSERT INTO a VALUES (1, 'e', 'v')")
    before, version = schema_rows(world), schema_version(world)
    assert world.install("a", "b") == []
    assert schema_rows(world) == before
    assert schema_version(world) == version  # not even a no-op DROP/CREATE
    assert len(world.log()) == 1  # the log survives a reinstall


def test_install_is_one_transaction(world: World) -> None:
    world.sql(*TABLES)
    db = world.open()
    before = schema_rows(world)
    ghost = TableInfo("ghost", (Column("id", "INTEGER", False, 1),), ("id",), ())
    with pytest.raises(DatabaseError, match="ghost"):
        install(db, world.names, [db.table_info("a"), db.table_info("b"), ghost])
    assert schema_rows(world) == before  # no log table, no trigger for a or b
    world.sql("INSERT INTO a VALUES (1, 'e', 'v')")  # the app still writes
    assert not db.table_exists("change_log")


def test_install_refuses_a_change_log_that_is_not_ours(world: World) -> None:
    world.sql(*TABLES, "CREATE TABLE change_log (id INTEGER PRIMARY KEY, message TEXT)")
    world.sql("INSERT INTO change_log VALUES (1, 'the app''s own data')")
    before = schema_rows(world)
    with pytest.raises(ConfigError, match="log_table"):
        world.install("a")
    assert schema_rows(world) == before
    assert world.sql("SELECT * FROM change_log") == [(1, "the app's own data")]
    with pytest.raises(ConfigError, match="log_table"):
        uninstall(world.open(), world.names, drop_log=True)
    assert world.sql("SELECT * FROM change_log") == [(1, "the app's own data")]
    # Another log_table name works next to it.
    other = LogTables("cdc log ✓")
    db = world.open()
    install(db, other, [db.table_info("a")])
    world.sql("INSERT INTO a VALUES (5, 'e', 'v')")
    assert db.query('SELECT tbl, pk, op FROM "cdc log ✓"') == [("a", 5, "I")]


def test_reinstall_updates_only_what_changed(world: World) -> None:
    world.sql(*TABLES)
    world.install("a", "b")
    world.sql("CREATE UNIQUE INDEX b_y ON b (y)")  # the app's schema moved on
    problems = trigger_problems(world.open(), world.names, [world.info("a"), world.info("b")])
    assert sorted(problems) == [
        "table 'b': trigger 'change_log:b:unique1_insert' is missing",
        "table 'b': trigger 'change_log:b:unique1_update' is missing",
    ]
    assert sorted(world.install("a", "b")) == [
        "installed trigger 'change_log:b:unique1_insert'",
        "installed trigger 'change_log:b:unique1_update'",
    ]
    # Dropping a table from the configuration removes its triggers.
    changes = world.install("a")
    assert len(changes) == 6 and all("table 'b' not configured" in c for c in changes)
    world.sql("INSERT INTO b VALUES ('x', 1)")
    assert world.log() == []


def test_trigger_problems_reports_missing_and_outdated(world: World) -> None:
    world.sql(*TABLES)
    db = world.open()
    infos = [world.info("a"), world.info("b")]
    fresh = trigger_problems(db, world.names, infos)
    assert fresh[0] == "log table 'change_log' is missing: run `cdc-daemon install`"
    assert len(fresh) == 1 + 1 + 10  # the log, its guard trigger, the tables' triggers
    world.install("a", "b")
    assert trigger_problems(db, world.names, infos) == []

    world.sql('DROP TRIGGER "change_log:a:delete"', 'DROP TRIGGER "change_log:change_log:guard"')
    sql = expected_triggers(world.names, infos[1])["change_log:b:insert"]
    world.sql('DROP TRIGGER "change_log:b:insert"', sql.replace("'I'", "'X'"))
    assert sorted(trigger_problems(db, world.names, infos)) == [
        "table 'a': trigger 'change_log:a:delete' is missing",
        "table 'b': trigger 'change_log:b:insert' is outdated",
        "table 'change_log': trigger 'change_log:change_log:guard' is missing",
    ]
    world.install("a", "b")
    assert trigger_problems(db, world.names, infos) == []
    world.sql("INSERT INTO b VALUES ('k', 1)", "DELETE FROM a")
    assert world.ops("b") == [(("k", 1), "I")]


def test_renamed_table_is_noticed(world: World) -> None:
    world.sql(*TABLES)
    world.install("a")
    world.sql("ALTER TABLE a RENAME TO a2")
    problems = trigger_problems(world.open(), world.names, [world.info("a2")])
    assert "table 'a2': trigger 'change_log:a2:insert' is missing" in problems


def test_uninstall_removes_only_our_triggers(world: World) -> None:
    world.sql(
        *TABLES,
        "CREATE TABLE audit (n INTEGER)",
        "CREATE TRIGGER app_audit AFTER INSERT ON a BEGIN INSERT INTO audit VALUES (NEW.id); END",
    )
    world.install("a", "b")
    world.sql("INSERT INTO a VALUES (1, 'e', 'v')")
    changes = uninstall(world.open(), world.names, drop_log=False)
    assert len(changes) == 11 and all(c.startswith("removed trigger") for c in changes)
    assert set(installed_triggers(world.open(), world.names)) == set()
    names = {r[1] for r in schema_rows(world)}
    assert "app_audit" in names
    assert {"change_log", "change_log_dead", "change_log_state"} <= names
    world.sql("INSERT INTO a VALUES (2, 'f', 'v')", "DELETE FROM b")
    assert world.keys() == {(1,): 1}  # the log is kept, and nothing more is logged
    assert world.sql("SELECT n FROM audit ORDER BY n") == [(1,), (2,)]
    assert uninstall(world.open(), world.names, drop_log=False) == []


def test_uninstall_drop_log_removes_the_tables(world: World) -> None:
    world.sql(*TABLES)
    world.install("a", "b")
    world.sql("INSERT INTO a VALUES (1, 'e', 'v')")
    changes = uninstall(world.open(), world.names, drop_log=True)
    assert changes[-3:] == [
        "dropped table 'change_log'",
        "dropped table 'change_log_dead'",
        "dropped table 'change_log_state'",
    ]
    names = {r[1] for r in schema_rows(world)}
    assert not names & {"change_log", "change_log_dead", "change_log_state"}
    assert not any(n.startswith("change_log:") for n in names)
    world.sql("INSERT INTO a VALUES (2, 'f', 'v')")  # the app still writes
    assert world.sql("SELECT id FROM a ORDER BY id") == [(1,), (2,)]
    # and a fresh install starts again
    world.install("a")
    world.sql("INSERT INTO a VALUES (3, 'g', 'v')")
    assert world.keys() == {(3,): 1}


def test_log_seq_has_no_autoincrement_and_only_others_deletes_are_counted(world: World) -> None:
    world.sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    world.install("t")
    log_sql = world.open().scalar("SELECT sql FROM sqlite_master WHERE name = 'change_log'")
    assert "AUTOINCREMENT" not in log_sql.upper()  # the app's commits pay ~20% less
    changelog = ChangeLog(world.open(), world.names, max_attempts=3)
    world.sql("INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)")
    with world.open().read() as conn:
        assert changelog.deleted_by_others(conn) == 0
    changelog.commit([(1, 1)], [], [], deleted_by_others=0)  # the daemon's own delete: not counted
    with world.open().read() as conn:
        assert changelog.deleted_by_others(conn) == 0
    world.sql("DELETE FROM change_log")  # someone else's, from the app's connection
    with world.open().read() as conn:
        assert changelog.deleted_by_others(conn) == 1
    # the counter, and when the daemon last acknowledged (what `status` shows): nothing else
    assert world.sql("SELECT name FROM change_log_state ORDER BY name") == [
        ("deleted-by-others",), ("last-synced",)]


def test_an_acknowledgement_never_deletes_a_reused_seq(world: World) -> None:
    """Without AUTOINCREMENT, emptying the log by hand lets new changes take the seqs of a batch
    the daemon is still sending. Its acknowledgement must not delete them: it is refused."""
    world.sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    world.install("t")
    world.sql("INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)", "INSERT INTO t VALUES (3)")
    changelog = ChangeLog(world.open(), world.names, max_attempts=3)
    with world.open().read() as conn:  # the daemon reads a batch...
        batch = changelog.read_batch(conn, 100, now=time.time())
        seen = changelog.deleted_by_others(conn)
    assert [e.seq for e in batch] == [1, 2, 3]
    world.sql("DELETE FROM change_log")  # ...someone empties the log, the app goes on...
    world.sql("UPDATE t SET id = id + 10 WHERE id = 1", "DELETE FROM t WHERE id = 2")
    assert [(e.seq, e.op) for e in world.log()] == [(1, "D"), (2, "U"), (3, "D")]
    failure = KeyFailure("t", 3, (batch[2],), "rejected", retryable=False)
    assert changelog.commit([(1, 2)], [("t", 1)], [failure], deleted_by_others=seen) == []
    assert [(e.seq, e.op) for e in world.log()] == [(1, "D"), (2, "U"), (3, "D")]
    assert world.sql("SELECT attempts FROM change_log WHERE seq = 3") == [(0,)]
    with world.open().read() as conn:  # read again, the same acknowledgement goes through
        seen = changelog.deleted_by_others(conn)
    changelog.commit([(1, 3)], [], [], deleted_by_others=seen)
    assert world.log() == []


def test_triggers_work_where_double_quoted_strings_are_disabled(world: World) -> None:
    # Builds like better-sqlite3 reject "text" literals: the schema must use single quotes only.
    world.sql(*TABLES)
    world.install("a", "b")
    conn = apsw.Connection(str(world.path))
    try:
        conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)
        conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
        conn.execute("INSERT INTO a VALUES (1, 'e', 'v')")
        conn.execute("INSERT OR REPLACE INTO a VALUES (2, 'e', 'w')")
        conn.execute("UPDATE a SET id = 3")
        conn.execute("INSERT INTO b VALUES ('x', 1)")
        conn.execute("DELETE FROM b")
    finally:
        conn.close()
    assert sorted(world.keys("a")) == [(1,), (2,), (3,)]
    assert world.keys("b") == {("x", 1): 2}


def test_app_without_cdc_tables_in_its_sqlite_keeps_working(world: World) -> None:
    # The whole schema, as written by APSW's newer SQLite, must load in the app's older one.
    world.sql(*TABLES)
    world.install("a", "b")
    world.app.close(world.path)  # a fresh connection parses the schema from scratch
    assert world.app.each(world.path, "PRAGMA quick_check") == [("ok",)]
    world.sql("INSERT INTO a VALUES (1, 'e', 'v')")
    with pytest.raises(AppError, match="UNIQUE"):
        world.sql("INSERT INTO a VALUES (2, 'e', 'v')")
    assert world.keys() == {(1,): 1}
