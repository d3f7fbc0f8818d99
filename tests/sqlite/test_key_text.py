"""One key, one log text: the triggers, backfill and ChangeLog.enqueue_keys all have SQLite write
a key's log text with the same expression (keys.log_key_sql), so a key logged by the app and the
same key logged by the daemon are one value (one change when coalesced, one dead letter cleared
when it syncs), and the text parses back to exactly the key: TEXT holding a NUL included.

The app's SQLite (stdlib, 3.40 here) and the daemon's (APSW, 3.54) quote() REALs with different
digits: texts are compared within one SQLite, and across the two only for keys without REALs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.hypothesis_examples import examples

from cdc_daemon.backfill import Backfill, _resume_key, _resume_text
from cdc_daemon.changelog import ChangeLog
from cdc_daemon.database import InvalidText
from cdc_daemon.row_keys import Key, log_key_to_key, parse_quoted_key

from .helpers import World, same_key

# No declared types: every value keeps the type it was written with.
TABLE = "CREATE TABLE t (a, b, c, PRIMARY KEY (a, b, c))"

key_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.sampled_from([0.1 + 0.2, 1e-320, 5e-324, 1e300, 1 / 3, 2.2250738585072014e-308, 1e16]),
    st.text(max_size=30),
    st.text(alphabet="',\x00\n é🦄\"\\tX0", max_size=12),
    st.binary(max_size=20),
)
keys = st.tuples(key_values, key_values, key_values)


def stored(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """SQLite has no negative zero: it stores and quotes -0.0 as 0.0 (equal in SQL too)."""
    return tuple(0.0 if isinstance(v, float) and v == 0 else v for v in key)


class Texts:
    """The log text of one key as each writer logs it."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.db = world.open()
        self.changelog = ChangeLog(self.db, world.names, max_attempts=3)
        self.backfill = Backfill(self.db, world.names, page_size=10)
        self.mapping = world.mapping("t")

    def _last_logged(self) -> Any:
        return self.db.scalar("SELECT pk FROM change_log ORDER BY seq DESC LIMIT 1")

    def _reset(self) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM t")
            conn.execute("DELETE FROM change_log")

    def of(self, key: Key) -> dict[str, Any]:
        self._reset()
        texts = {}
        self.world.sql(("INSERT INTO t VALUES (?, ?, ?)", list(key)))  # the app's trigger
        texts["app trigger"] = self._last_logged()
        self.backfill.start("t")
        assert self.backfill.log_next_page(self.mapping) is not None
        texts["backfill"] = self._last_logged()
        assert self.backfill.log_next_page(self.mapping) is None  # one row: finished
        self.changelog.enqueue_keys("t", [key], "V")
        texts["enqueue_keys"] = self._last_logged()
        with self.db.write() as conn:  # the daemon's SQLite running the same trigger
            conn.execute("DELETE FROM t")
        texts["daemon trigger"] = self._last_logged()
        return texts


@pytest.fixture
def texts(make_world: Callable[..., World]) -> Texts:
    world = make_world(TABLE)
    world.install("t")
    return Texts(world)


@settings(
    max_examples=examples(150), deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(keys)
@example((1, 0.1 + 0.2, "a\x00b"))  # quote() alone would log 'a'
@example(("\x00", "", "x\x00"))
@example(("it's, a\nkey", -(2**63), b"\x00'"))
@example((float("inf"), float("-inf"), 1e-320))
@example(("tX'00'", "NULL", "é\x00🦄"))
@example((-0.0, 2**63 - 1, b""))
def test_property_every_writer_logs_the_same_text_and_it_parses_back(
    texts: Texts, key: tuple[Any, ...]
) -> None:
    logged = texts.of(key)
    for writer, text in logged.items():
        assert isinstance(text, str), (writer, text)
        assert same_key(parse_quoted_key(text), stored(key)), (writer, text)
        assert same_key(log_key_to_key(text, 3), stored(key)), (writer, text)
    daemon = {logged["backfill"], logged["enqueue_keys"], logged["daemon trigger"]}
    assert len(daemon) == 1, logged
    if not any(isinstance(v, float) for v in key):  # the two SQLites differ only in REAL digits
        assert logged["app trigger"] == logged["enqueue_keys"], logged


def test_text_without_a_nul_keeps_the_quote_format(texts: Texts) -> None:
    # Logs written by earlier triggers must still parse, and unchanged keys keep their text.
    logged = texts.of((1, "it's", b"\x01"))
    assert set(logged.values()) == {"1,'it''s',X'01'"}
    logged = texts.of((2, "a\x00b", "c"))
    assert set(logged.values()) == {"2,tX'610062','c'"}


def test_a_composite_key_with_a_nul_finds_its_row(world: World) -> None:
    world.sql("CREATE TABLE c (a INTEGER, b TEXT, v TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID")
    world.install("c")
    keys = [(1, "a\x00b"), (1, "a"), (1, "a\x00c"), (2, "\x00")]
    world.sql(*[("INSERT INTO c VALUES (?, ?, 'x')", list(k)) for k in keys])
    world.sql("DELETE FROM c WHERE a = 2")
    # Before, (1, 'a\x00b') and (1, 'a\x00c') were both logged as (1, 'a'): another row's key.
    assert world.ops("c") == [(k, "I") for k in keys] + [((2, "\x00"), "D")]
    assert set(world.rows_found("c", keys)) == set(keys[:3])


resume_values = st.one_of(
    key_values,
    st.binary(min_size=1, max_size=8).filter(lambda raw: not _is_utf8(raw)).map(InvalidText),
)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(resume_values, min_size=1, max_size=4).map(tuple))
@example((InvalidText(b"\xff\x00"), "a\x00b", 0.1 + 0.2, float("inf")))
@example((-0.0, 2**63 - 1, b"", "é🦄"))
def test_property_the_backfill_resume_point_round_trips_exactly(key: tuple[Any, ...]) -> None:
    text = _resume_text(key)
    assert text.isascii()
    back = _resume_key(text)
    assert same_key(back, key)
    for ours, theirs in zip(back, key, strict=True):
        assert isinstance(ours, InvalidText) == isinstance(theirs, InvalidText)
        if isinstance(theirs, InvalidText):
            assert isinstance(ours, InvalidText) and ours.raw == theirs.raw


def test_a_resume_point_saved_by_an_earlier_version_still_reads() -> None:
    assert same_key(
        _resume_key("42,'it''s',X'00ff',0.30000000000000004"), (42, "it's", b"\x00\xff", 0.1 + 0.2)
    )
    assert _resume_key("'plain'") == ("plain",)


def test_backfill_pages_of_one_row_resume_after_every_kind_of_key(
    make_world: Callable[..., World],
) -> None:
    world = make_world("CREATE TABLE r (a, b, v, PRIMARY KEY (a, b))")
    world.install("r")
    world.sql(
        *[
            ("INSERT INTO r VALUES (?, ?, 0)", list(key))
            for key in [
                (1, "a\x00b"),
                (1, "a"),
                (1, "a\x00c"),
                (0.1 + 0.2, 1e-320),
                (float("inf"), b"\x00"),
                ("x", ""),
                ("x", "it's, a key"),
            ]
        ],
        "INSERT INTO r VALUES (CAST(X'ff00' AS TEXT), CAST(X'6bff' AS TEXT), 0)",
        "INSERT INTO r VALUES ('y', CAST(X'ff' AS TEXT), 0)",
    )
    db = world.open()
    with db.write() as conn:  # the daemon's SQLite logs each row's key through the trigger
        conn.execute("DELETE FROM change_log")
        conn.execute("UPDATE r SET v = 1")
    backfill = Backfill(db, world.names, page_size=1)
    backfill.start("r")
    for _ in range(20):
        if backfill.log_next_page(world.mapping("r")) is None:
            break
    else:
        raise AssertionError("the backfill did not finish")
    by_op = "SELECT hex(pk) FROM change_log WHERE op = ? ORDER BY hex(pk)"
    assert db.query(by_op, ("B",)) == db.query(by_op, ("U",))
    assert len(db.query(by_op, ("B",))) == 9
