"""The daemon's footprint in a real app database goes through log_schema: every op any writer
logs is an Op, and the state store's writes commit (or roll back) with the caller's transaction."""

from __future__ import annotations

import pytest

from cdc_daemon.backfill import Backfill
from cdc_daemon.changelog import ChangeLog
from cdc_daemon.dead_letters import DeadLetters
from cdc_daemon.dependencies import DependencyPath, Hop, expansion
from cdc_daemon.log_schema import BACKFILL_PREFIX, SWEEP_PREFIX, Op, StateStore
from cdc_daemon.log_status import LogStatus
from cdc_daemon.triggers import install

from .helpers import World


def test_every_op_any_writer_logs_is_an_op_and_every_op_is_logged(world: World) -> None:
    world.sql(
        "CREATE TABLE t (id TEXT COLLATE NOCASE PRIMARY KEY, email TEXT UNIQUE, n INTEGER)",
        "CREATE TABLE d (id INTEGER PRIMARY KEY, t_id TEXT)",  # read by t's documents
    )
    world.install("t")
    install(world.open(), world.names, [world.info("t")], {"d": ("t_id",)})
    world.sql(
        "INSERT INTO t VALUES ('a', 'a@x', 1), ('b', 'b@x', 2)",
        "UPDATE t SET n = 3 WHERE id = 'a'",
        "UPDATE t SET id = 'c' WHERE id = 'b'",  # a key change: the old key's D
        "INSERT OR REPLACE INTO t VALUES ('A', 'z@x', 4)",  # evicts 'a' through its NOCASE key
        "DELETE FROM t WHERE id = 'c'",
    )
    by_triggers = {op for _, _, op in world.raw_log()}
    assert by_triggers == {Op.INSERT, Op.UPDATE, Op.DELETE}
    world.sql("INSERT INTO d VALUES (1, 'A')")
    db = world.open()
    changelog = ChangeLog(db, world.names, max_attempts=3)
    path = DependencyPath("t", (Hop("t", ("id",), "d", ("t_id",)),))
    joined = expansion(path, ("id",), ("t_id",), [("A",)], world.names)
    changelog.commit([], [], [], 0, [joined])  # the sync acknowledging the J entry
    backfill = Backfill(db, world.names)
    backfill.start("t")
    assert backfill.log_next_page(world.mapping("t")) is not None
    changelog.enqueue("t", ["'A'"], Op.RESEND)
    changelog.enqueue_keys("t", [("A",)], Op.REPAIR)
    world.sql(
        "INSERT INTO change_log_dead (tbl, pk, error, attempts, first_seen, last_seen)"
        " VALUES ('t', '''A''', 'rejected', 3, 0, 0)"
    )
    assert DeadLetters(db, world.names).retry("t") == 1
    logged = [op for _, _, op in world.raw_log()]
    assert set(logged) == {op.value for op in Op}
    assert all(type(op) is str for op in logged)  # stored as plain text, as ever


def test_the_state_store_writes_with_the_callers_transaction(world: World) -> None:
    world.install()
    db = world.open()
    state = StateStore(db, world.names)
    with db.write() as conn:
        state.set(BACKFILL_PREFIX + "t", "0", conn)
        state.set(SWEEP_PREFIX + "t", "backfill", conn)
        assert state.get(BACKFILL_PREFIX + "t", conn) == "0"  # seen inside, before the commit
        assert state.with_prefix(SWEEP_PREFIX, conn) == {"t": "backfill"}
    app_sees = world.sql("SELECT name, value FROM change_log_state ORDER BY name")
    assert app_sees == [("backfill:t", "0"), ("sweep:t", "backfill")]

    with pytest.raises(RuntimeError), db.write() as conn:
        state.delete(BACKFILL_PREFIX + "t", SWEEP_PREFIX + "t", conn=conn)
        state.set("mapping:t", "{}", conn)
        raise RuntimeError("the caller's transaction fails")
    assert state.with_prefix(BACKFILL_PREFIX) == {"t": "0"}  # rolled back together
    assert state.get("mapping:t") is None

    state.set_default(SWEEP_PREFIX + "t", "sweep")  # already set: stays
    state.delete(BACKFILL_PREFIX + "t", SWEEP_PREFIX + "t")
    assert world.sql("SELECT name FROM change_log_state") == []


def test_a_number_is_stored_as_sqlites_own_text(world: World) -> None:
    """trigger_watch records a unix time as a float, bound as one: the daemon's SQLite writes
    its own text of it (not Python's), as before."""
    world.install()
    db = world.open()
    state = StateStore(db, world.names)
    for since in (1733500000.123456789, 1e16):  # 1e16: "10000000000000000.0", Python "1e+16"
        name = f"triggers-missing:{since}"
        state.set_default(name, since)
        as_sqlite = db.scalar("SELECT CAST(? AS TEXT)", (since,))
        stored = world.sql(("SELECT value FROM change_log_state WHERE name = ?", [name]))
        assert stored == [(as_sqlite,)]
        assert state.get(name) == as_sqlite


def test_the_acknowledging_marker_is_never_committed(world: World) -> None:
    world.install()
    db = world.open()
    state = StateStore(db, world.names)
    with db.write() as conn, state.marker("acknowledging", conn):
        assert state.get("acknowledging", conn) == "1"
    assert world.sql("SELECT COUNT(*) FROM change_log_state") == [(0,)]


def test_status_is_read_without_max_attempts(world: World) -> None:
    world.sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    world.install("t")
    world.sql("INSERT INTO t VALUES (1), (2)")
    status = LogStatus(world.open(), world.names)
    summary = status.summary(["t", "u"])
    assert summary["backlog"] == 2 and summary["dead_letters"] == 0
    assert summary["tables"]["u"]["backlog"] == 0
    assert status.unsynced_for_table("t", 10) == 2 and status.unsynced_through(1) == 1
