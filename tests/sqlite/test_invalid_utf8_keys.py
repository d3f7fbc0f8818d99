"""TEXT keys that are not valid UTF-8 (`CAST(X'ff41' AS TEXT)`, other languages' drivers): every
keyset cursor (backfill, verify) reads them keeping their bytes and binds them back as the same
TEXT value, so it moves past them; backfill logs them as the very value the triggers log (then
they are dead-lettered like any such key) and goes on with the other rows."""

from __future__ import annotations

from itertools import islice
from typing import Any

import pytest

from cdc_daemon import verify
from cdc_daemon.backfill import Backfill
from cdc_daemon.changelog import ChangeLog
from cdc_daemon.database import InvalidText, select_rows
from cdc_daemon.row_keys import log_key_to_key
from cdc_daemon.verify import Verifier

from .helpers import World

# In key order (bytes): 'a' 61, 'k\xff' 6bff, 'z' 7a, '\xffA' ff41.
SINGLE = [
    "INSERT INTO s VALUES ('a', 1)",
    "INSERT INTO s VALUES (CAST(X'6bff' AS TEXT), 2)",
    "INSERT INTO s VALUES ('z', 3)",
    "INSERT INTO s VALUES (CAST(X'ff41' AS TEXT), 4)",
]
SINGLE_HEX = ["61", "6BFF", "7A", "FF41"]
COMPOSITE = [
    "INSERT INTO c VALUES (1, 'a', 1)",
    "INSERT INTO c VALUES (1, CAST(X'ff41' AS TEXT), 2)",
    "INSERT INTO c VALUES (2, CAST(X'ff00' AS TEXT), 3)",  # not UTF-8 and a NUL
    "INSERT INTO c VALUES (2, 'b', 4)",
]


def tables(world: World) -> World:
    world.sql(
        "CREATE TABLE s (k TEXT PRIMARY KEY, v INTEGER)",
        "CREATE TABLE c (a INTEGER, b TEXT, v INTEGER, PRIMARY KEY (a, b)) WITHOUT ROWID",
    )
    world.sql(*SINGLE, *COMPOSITE)  # before install: only a backfill logs them
    world.install("s", "c")
    return world


def logged(world: World, op: str) -> list[tuple[str, str, str]]:
    """(table, hex of the logged key, its type) of each entry with this op, in log order."""
    return [
        tuple(row)
        for row in world.open().query(
            "SELECT tbl, hex(pk), typeof(pk) FROM change_log WHERE op = ? ORDER BY seq", (op,)
        )
    ]


def backfill_all(world: World, table: str, page_size: int) -> int:
    """Run a backfill of `table` to its end, one page at a time; returns the number of pages."""
    backfill = Backfill(world.open(), world.names, page_size=page_size)
    backfill.start(table)
    mapping = world.mapping(table)
    for pages in range(20):  # a cursor that does not move on fails here instead of hanging
        if backfill.log_next_page(mapping) is None:
            return pages
    raise AssertionError(f"backfill of {table!r} did not finish")


@pytest.mark.parametrize("page_size", [1, 2, 1000])
def test_backfill_logs_every_key_as_the_triggers_do(world: World, page_size: int) -> None:
    tables(world)
    pages = backfill_all(world, "s", page_size) + backfill_all(world, "c", page_size)
    assert pages == 2 * -(-4 // page_size)
    backfilled = logged(world, "B")
    assert [h for t, h, _ in backfilled if t == "s"] == SINGLE_HEX
    # What the app's triggers log for the same rows: the same values, byte for byte and type.
    world.sql("UPDATE s SET v = v + 1", "UPDATE c SET v = v + 1")
    assert sorted(backfilled) == sorted(logged(world, "U"))


def test_such_keys_are_unreadable_by_the_daemon_and_the_others_are_not(world: World) -> None:
    tables(world)
    backfill_all(world, "c", 2)
    with world.open().read() as conn:
        entries = select_rows(conn, ("pk",), "FROM change_log WHERE op = 'B' ORDER BY seq")
    keys = []
    for (log_key,) in entries:
        try:
            keys.append(log_key_to_key(log_key, 2))
        except ValueError as exc:  # dead-lettered with this reason
            assert str(exc) == "the key is text that is not valid UTF-8"
            keys.append(None)
    assert keys == [(1, "a"), None, (2, "b"), None]


def test_a_backfill_resumes_after_such_a_key(world: World) -> None:
    tables(world)
    backfill = Backfill(world.open(), world.names, page_size=2)
    backfill.start("s")
    backfill.log_next_page(world.mapping("s"))  # the page ends with 'k\xff'
    resume = backfill._resume_point("s")
    assert resume is not None and resume[1] == 2
    last = resume[0]
    assert last is not None and isinstance(last[0], InvalidText) and last[0].raw == b"k\xff"
    page = backfill.log_next_page(world.mapping("s"))
    assert page is not None and page[1] == 2
    assert backfill.log_next_page(world.mapping("s")) is None
    assert [h for _, h, _ in logged(world, "B")] == SINGLE_HEX


@pytest.mark.parametrize("page_size", [1, 2, 3])
def test_verify_pages_move_past_such_keys(
    world: World, page_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    tables(world)
    monkeypatch.setattr(verify, "PAGE_SIZE", page_size)
    db = world.open()
    verifier = Verifier(db, ChangeLog(db, world.names, max_attempts=3), sink=None)  # type: ignore[arg-type]
    for table, hexes in [("s", SINGLE_HEX), ("c", None)]:
        # Bounded: before, the page after a key ending a page began with that key again.
        rows = list(islice(verifier._rows(world.mapping(table)), 50))
        assert len(rows) == 4, rows
        if hexes:
            assert [_hex(r[0]) for r in rows] == hexes


def test_enqueue_logs_such_a_key_again_as_itself(world: World) -> None:
    tables(world)
    backfill_all(world, "s", 10)
    db = world.open()
    with db.read() as conn:
        entries = select_rows(conn, ("pk",), "FROM change_log WHERE op = 'B' ORDER BY seq")
    changelog = ChangeLog(db, world.names, max_attempts=3)
    changelog.enqueue("s", [log_key for (log_key,) in entries], "T")  # a re-send after a timeout
    changelog.enqueue_keys("s", [(log_key,) for (log_key,) in entries], "V")  # a repair
    assert logged(world, "T") == logged(world, "B") == logged(world, "V")


def _hex(value: Any) -> str:
    raw = value.raw if isinstance(value, InvalidText) else str(value).encode()
    return raw.hex().upper()
