"""table_rows.py: keyset pages, rows by keys and the `where` clause, against a real SQLite file
the app writes (its own process), with key parts of every kind SQLite stores: NULL, INTEGER,
REAL, TEXT (also text that is not UTF-8), BLOB. The expected rows are worked out in Python, in
SQLite's order (NULL, numbers, text by its bytes, blobs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice, product
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import app_write
from support.hypothesis_examples import examples

from cdc_daemon import table_rows
from cdc_daemon.database import Database, InvalidText, quote_literal
from cdc_daemon.schema import FieldMap, TableMapping
from cdc_daemon.table_rows import (
    count_rows,
    every_row,
    has_row,
    page_after,
    row_query,
    rows_by_keys,
)

DDL = [
    "CREATE TABLE c (a, b, title TEXT, n INTEGER, PRIMARY KEY (a, b))",
    "CREATE TABLE s (id PRIMARY KEY, title TEXT, n INTEGER)",
]
BAD_K, BAD_K2, BAD = InvalidText(b"k\xff"), InvalidText(b"k\xfe"), InvalidText(b"\xff")
A_PARTS: list[Any] = [None, -3, 0, 2.5, 7, "", "k", "é", BAD_K, BAD_K2, b"", b"\x00\xff"]
B_PARTS: list[Any] = [None, 1, 1.5, "x", BAD, b"\x01"]
# Keys no row has: another type of the same value, other bytes that read alike, in between.
ABSENT: list[Any] = [(7.5, 1), ("7", 1), (7, "1"), ("k\ufffd", "x"), (b"k", None), (-4, "x")]
ABSENT_ONE: list[Any] = [(7.5,), ("7",), ("k\ufffd",), (b"k",), (-4,), (b"\xff",)]
WHERES: dict[str | None, Callable[[int, str], bool]] = {
    None: lambda n, title: True,
    "n % 3 <> 0": lambda n, title: n % 3 != 0,
    # Without its parentheses, `OR` would let rows past the conditions ANDed after it.
    "n < 10 OR n > 60": lambda n, title: n < 10 or n > 60,
    "title LIKE 'r1%'": lambda n, title: title.startswith("r1"),
}


def _literal(value: Any) -> str:
    """`value` as the app writes it in SQL: text that is not UTF-8 cast from its bytes."""
    if isinstance(value, InvalidText):
        return f"CAST(X'{value.raw.hex()}' AS TEXT)"
    if isinstance(value, bytes):
        return f"X'{value.hex()}'"
    if isinstance(value, str):
        return quote_literal(value)
    return "NULL" if value is None else repr(value)


def _rows() -> dict[str, list[tuple[Any, ...]]]:
    """The rows of each table, as table_rows reads them (key, title, n)."""
    composite = [(a, b, f"r{n}", n) for n, (a, b) in enumerate(product(A_PARTS, B_PARTS))]
    single = [(a, f"r{n}", n) for n, a in enumerate([*A_PARTS, 1.25, "zz", b"\xff\xff"])]
    return {"c": composite, "s": single}


ROWS = _rows()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    path = tmp_path_factory.mktemp("table_rows") / "app.db"
    inserts = [
        (f"INSERT INTO {table} VALUES ({', '.join(map(_literal, row))})", [])
        for table, rows in ROWS.items()
        for row in rows
    ]
    app_write(path, [[(sql, []) for sql in DDL], inserts])
    database = Database(path)
    yield database
    database.close()


def mapping(table: str, where: str | None = None) -> TableMapping:
    key = ("a", "b") if table == "c" else ("id",)
    fields = (FieldMap("title", "title", "string", True), FieldMap("n", "n", "int64", True))
    return TableMapping(
        table=table,
        collection=table,
        key=key,
        key_affinities=("",) * len(key),
        fields=fields,
        default_sorting_field=None,
        where=where,
        soft_delete=None,
    )


def order(value: Any) -> tuple[int, Any]:
    """Where SQLite's BINARY order puts a value: NULL, numbers, text by its bytes, blobs."""
    if value is None:
        return (0, 0)
    if isinstance(value, int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value.raw if isinstance(value, InvalidText) else value.encode())
    return (3, value)


def key_order(key: tuple[Any, ...]) -> tuple[tuple[int, Any], ...]:
    return tuple(order(v) for v in key)


def exact(rows: Any) -> list[tuple[tuple[str, Any], ...]]:
    """Rows compared value by value with their types (1 == 1.0 == True in Python)."""
    return [tuple((type(v).__name__, getattr(v, "raw", v)) for v in row) for row in rows]


def expected(table: str, where: str | None) -> list[tuple[Any, ...]]:
    """The rows `where` keeps, in key order."""
    width = 2 if table == "c" else 1
    kept = [row for row in ROWS[table] if WHERES[where](row[-1], row[-2])]
    return sorted(kept, key=lambda row: key_order(row[:width]))


tables = st.sampled_from(["c", "s"])
wheres = st.sampled_from(list(WHERES))


@settings(max_examples=examples(60), deadline=None)
@given(table=tables, where=wheres, page_size=st.integers(1, 90))
def test_every_row_reads_each_row_once_in_key_order(
    db: Database, table: str, where: str | None, page_size: int
) -> None:
    # Page boundaries fall on every kind of key part: after a NULL part the next page must not
    # skip the rows that share the key's beginning; after text that is not UTF-8 it must not
    # start again at that key (its replaced text) or skip the key with other bytes.
    rows = expected(table, where)
    read = list(islice(every_row(db, mapping(table, where), page_size), len(rows) + 1))  # bounded
    assert exact(read) == exact(rows)


@settings(max_examples=examples(80), deadline=None)
@given(
    where=wheres,
    after=st.sampled_from([row[:2] for row in ROWS["c"]] + ABSENT),
    limit=st.integers(1, 20),
)
def test_a_page_starts_right_after_any_key(
    db: Database, where: str | None, after: tuple[Any, ...], limit: int
) -> None:
    later = [r for r in expected("c", where) if key_order(r[:2]) > key_order(after)]
    with db.read() as conn:
        page = page_after(conn, mapping("c", where), after, limit)
    assert exact(page) == exact(later[:limit])


def test_the_first_page_and_the_end(db: Database) -> None:
    everything = expected("c", None)
    with db.read() as conn:
        first = page_after(conn, mapping("c"), None, 5)
        beyond = page_after(conn, mapping("c"), everything[-1][:2], 5)
    assert exact(first) == exact(everything[:5])
    assert beyond == []


@settings(max_examples=examples(60), deadline=None)
@given(
    table=tables,
    where=wheres,
    picked=st.lists(st.integers(0, 200), max_size=40),
    absent=st.lists(st.integers(0, 5), max_size=4),
    per_select=st.integers(1, 7),
)
def test_rows_by_keys_finds_the_rows_where_keeps(
    db: Database,
    table: str,
    where: str | None,
    picked: list[int],
    absent: list[int],
    per_select: int,
) -> None:
    width = 2 if table == "c" else 1
    # Looked up by value: a key part that is not UTF-8 (has_row looks for it, for sync's
    # _check_ids) or NULL (`IN` matches no NULL; such a key names no document) finds nothing.
    unusable = (type(None), InvalidText)
    readable = [r for r in ROWS[table] if not any(isinstance(v, unusable) for v in r[:width])]
    wanted = [readable[i % len(readable)][:width] for i in picked]
    keys = wanted + [(ABSENT if table == "c" else ABSENT_ONE)[i] for i in absent]
    kept = {r[:width]: r for r in expected(table, where) if r[:width] in set(wanted)}
    with mock.patch.object(table_rows, "KEYS_PER_SELECT", per_select), db.read() as conn:
        found = rows_by_keys(conn, mapping(table, where), keys)
        anywhere = rows_by_keys(conn, mapping(table, where), keys, filtered=False)
    assert sorted(exact(found.items()), key=repr) == sorted(exact(kept.items()), key=repr)
    assert {k: r[:width] for k, r in found.items()} == {k: k for k in kept}
    assert len(anywhere) == len(set(wanted))  # every row looked for, whatever `where` says


def test_has_row_binds_each_part_as_it_is(db: Database) -> None:
    with db.read() as conn:
        for key in [(BAD_K, None), (BAD_K2, BAD), (None, 1.5), (b"", b"\x01"), (2.5, "x")]:
            assert has_row(conn, mapping("c", "0"), key)  # any row: `where` is not applied
        for key in [(InvalidText(b"k\xfd"), None), ("k\ufffd", None), (2.5, 2.5)]:
            assert not has_row(conn, mapping("c"), key)
        assert has_row(conn, mapping("s"), (BAD_K,))
        assert not has_row(conn, mapping("s"), (InvalidText(b"\xfd"),))


@pytest.mark.parametrize("where", list(WHERES))
def test_count_rows_counts_what_where_keeps(db: Database, where: str | None) -> None:
    assert count_rows(db, mapping("c", where)) == len(expected("c", where))


def test_row_query_reads_the_mapped_columns() -> None:
    assert row_query(mapping("c", "n > 1")) == (
        'SELECT "a", "b", "title", "n" FROM "c" WHERE (n > 1)'
    )
    assert row_query(mapping("c", "n > 1"), filtered=False) == (
        'SELECT "a", "b", "title", "n" FROM "c"'
    )
