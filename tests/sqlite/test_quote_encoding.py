"""The composite log key is SQLite's literal text of each part (row_keys.log_key_sql): it must
parse back exactly, whichever SQLite wrote it (the app's 3.40 writes `Inf`, the daemon's 3.54
`9.0e+999`; the 3.40 quote() of some REALs has 15 digits that only its own parser reads back),
and the daemon's own encoding (backfill, repair) must read the same."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import apsw
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support.hypothesis_examples import examples

from cdc_daemon.row_keys import log_key_sql, parse_quoted_key

from .helpers import same_key

key_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.sampled_from([0.1 + 0.2, 1e-320, 5e-324, 1 / 3, 2.2250738585072014e-308]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
    st.text(alphabet="',\n\r X01é🦄\"\\ "),
    st.binary(max_size=40),
)
keys = st.lists(key_values, min_size=2, max_size=4).map(tuple)


def quote_sql(width: int) -> str:
    # exactly the expression the triggers use, on bound values
    return "SELECT " + log_key_sql([f"?{i}" for i in range(1, width + 1)])


@pytest.fixture(scope="module")
def old_sqlite() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def new_sqlite() -> Iterator[apsw.Connection]:
    conn = apsw.Connection(":memory:")
    yield conn
    conn.close()


def stored(key: tuple[object, ...]) -> tuple[object, ...]:
    """SQLite has no negative zero: it stores and quotes -0.0 as 0.0 (equal in SQL too)."""
    return tuple(0.0 if isinstance(v, float) and v == 0 else v for v in key)


@settings(max_examples=examples(200), deadline=None)
@given(keys)
@example((1, 0.1 + 0.2))
@example((float("inf"), float("-inf")))
@example((-0.0, "x"))
@example((1e-320, b"\x00'"))
@example(("it's, a\nkey", -(2**63)))
# 3.40's quote() gives 4.35680493355571e-308 and 4.73380916229069e-296 (found by this test)
@example((0, 4.3568049335557104e-308))
@example((4.7338091622906903e-296, 1e-30))
def test_property_the_key_text_of_both_sqlites_round_trips(
    old_sqlite: sqlite3.Connection, new_sqlite: apsw.Connection, key: tuple[object, ...]
) -> None:
    sql = quote_sql(len(key))
    from_old = old_sqlite.execute(sql, key).fetchone()[0]
    from_new = new_sqlite.execute(sql, key).fetchone()[0]
    assert same_key(parse_quoted_key(from_old), stored(key)), from_old
    assert same_key(parse_quoted_key(from_new), stored(key)), from_new


