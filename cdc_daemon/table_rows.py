"""The rows of one mapped table: the row query with its `where` clause, keyset pages in key
order, rows by keys.

Every read of a mapped table's rows builds its SQL here (sync, backfill, verify, the sweep, a
leftover's clean-up, `check`), so they all read the same rows: those the mapping's `where` keeps,
as `mapping.select_list()` (key, fields, then the soft-delete flag; a computed field's
expression is evaluated in that same query), a text that is not UTF-8 as an InvalidText
(select_values). Pages follow the primary key, `(key) > (last key)` rather than OFFSET:
a page costs the same wherever it starts, and rows the app adds or removes meanwhile never make
a page skip or repeat a row.

A computed field's expression that fails on one row (json_extract of text that is not JSON, a
function raising an error) fails that row alone: the read is done again key by key, and the
failing expression's value is an ExpressionFailed, which build_document turns into that row's
DocumentError naming the field.
Without computed fields a failing row query is the table's trouble (RowQueryFailed), as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apsw

from cdc_daemon.database import Database, bind, quote_ident, scalar, select_values
from cdc_daemon.documents import ExpressionFailed, row_key
from cdc_daemon.errors import DatabaseError
from cdc_daemon.row_keys import Key
from cdc_daemon.schema import TableMapping

KEYS_PER_SELECT = 500  # keys looked up per statement
Row = tuple[Any, ...]
# What one table's row query raises when it is that table's trouble, not the database's: its
# `where` failing on a row (json_extract of text that is not JSON), the table dropped or altered
# under a built runtime. Busy, I/O, corruption, a full disk... fail everything, as before.
ROW_QUERY_ERRORS = (
    apsw.SQLError,
    apsw.MismatchError,
    apsw.RangeError,
    apsw.TooBigError,
)


class RowQueryFailed(DatabaseError):
    """Reading one table's rows failed (ROW_QUERY_ERRORS): that table is skipped for a while
    (sync.Syncer.broken); the other tables go on. `error` is SQLite's message."""

    def __init__(self, table: str, error: str) -> None:
        super().__init__(f"table {table!r}: its rows could not be read: {error}")
        self.table = table
        self.error = error


# -- the row query --------------------------------------------------------------------------


def from_clause(mapping: TableMapping, *conditions: str, filtered: bool = True) -> str:
    """`FROM <table> WHERE (<where>) AND <condition>...`: the mapping's rows (all of the table's
    when not `filtered`) that meet every condition."""
    clauses = (f"({mapping.where})", *conditions) if filtered and mapping.where else conditions
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"FROM {quote_ident(mapping.table)}{where}"


def row_query(mapping: TableMapping, filtered: bool = True) -> str:
    """`SELECT <mapping.select_list()> FROM <table> WHERE (<where>)`: what every row read runs."""
    columns = ", ".join(mapping.select_list())
    return f"SELECT {columns} {from_clause(mapping, filtered=filtered)}"


def count_rows(db: Database, mapping: TableMapping) -> int:
    """How many rows the mapping has (its `where` applied)."""
    return int(db.scalar(f"SELECT COUNT(*) {from_clause(mapping)}"))


# -- keyset pages -----------------------------------------------------------------------------


def after_key(columns: Sequence[str], key: Key) -> tuple[str, list[Any]]:
    """`(<columns>) > (<key>)` and its parameters: the rows after `key` in `ORDER BY <columns>`.

    A key part read as an InvalidText is bound as its own bytes: its replaced text would name
    another key, and the next page would start at that key again. A NULL part is spelled out
    column by column (NULL sorts first): in `(a, b) > ('k', NULL)` every row ('k', x) compares
    as NULL, and the next page would skip them. (Rows whose whole key is that same key, NULLs
    and all, are told apart by nothing: those past the page's end are not read.)"""
    bound = [bind(value) for value in key]
    quoted = [quote_ident(c) for c in columns]
    if None in key:
        return _after_key_with_nulls(quoted, bound)
    placeholders, params = zip(*bound, strict=True)
    return f"({', '.join(quoted)}) > ({', '.join(placeholders)})", list(params)


def _after_key_with_nulls(
    quoted: list[str], bound: list[tuple[str, Any]]
) -> tuple[str, list[Any]]:
    """after_key, part by part: equal to the key in the first i parts and past it in the next
    one, for some i."""
    alternatives: list[str] = []
    params: list[Any] = []
    for i in range(len(quoted)):
        terms = [_compared(quoted[m], bound[m], "=", params) for m in range(i)]
        terms.append(_compared(quoted[i], bound[i], ">", params))
        alternatives.append(f"({' AND '.join(terms)})")
    return f"({' OR '.join(alternatives)})", params


def _compared(column: str, bound: tuple[str, Any], operator: str, params: list[Any]) -> str:
    """`column = value` or `column > value` (its parameter appended), NULL sorting first."""
    placeholder, value = bound
    if value is None:
        return f"{column} IS NULL" if operator == "=" else f"{column} IS NOT NULL"
    params.append(value)
    return f"{column} {operator} {placeholder}"


def in_key_order(mapping: TableMapping, after: Key | None) -> tuple[str, list[Any]]:
    """`FROM ... WHERE (<where>) AND (<key>) > (<after>) ORDER BY <key>` and its parameters: the
    mapping's rows after the key `after` (from the first when None), for a LIMIT to follow."""
    conditions: list[str] = []
    params: list[Any] = []
    if after is not None:
        condition, params = after_key(mapping.key, after)
        conditions.append(condition)
    order = ", ".join(quote_ident(c) for c in mapping.key)
    return f"{from_clause(mapping, *conditions)} ORDER BY {order}", params


def page_after(
    conn: apsw.Connection, mapping: TableMapping, after: Key | None, limit: int
) -> list[Row]:
    """The next `limit` rows (as `mapping.select_list()`) after the key `after`, in key order;
    a row whose computed field fails holds an ExpressionFailed there (rows_by_keys)."""
    rest, params = in_key_order(mapping, after)
    rest = f"{rest} LIMIT {int(limit)}"
    try:
        return select_values(conn, mapping.select_list(), rest, params)
    except ROW_QUERY_ERRORS:
        if not mapping.computed_fields:
            raise
    keys = [row_key(mapping, r) for r in select_values(conn, _key_list(mapping), rest, params)]
    found = rows_by_keys(conn, mapping, keys)  # same snapshot: the same rows
    return [found[key] for key in keys if key in found]


def every_row(db: Database, mapping: TableMapping, page_size: int) -> Iterator[Row]:
    """Every row of the mapping in key order, one read transaction per page of `page_size`:
    short reads that never hold the app's writers back, and memory for one page."""
    after: Key | None = None
    while True:
        with db.read() as conn:
            page = page_after(conn, mapping, after, page_size)
        if not page:
            return
        yield from page
        after = row_key(mapping, page[-1])


# -- rows by keys -----------------------------------------------------------------------------


def key_chunks(
    mapping: TableMapping, keys: Sequence[Key], chunk: int = KEYS_PER_SELECT, filtered: bool = True
) -> Iterator[tuple[str, list[Any]]]:
    """Per `chunk` keys: `FROM ... WHERE (<where>) AND <key> IN (...)` and its parameters."""
    quoted = [quote_ident(c) for c in mapping.key]
    width = len(quoted)
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        if width == 1:
            match = f"{quoted[0]} IN ({', '.join('?' * len(part))})"
            params: list[Any] = [k[0] for k in part]
        else:
            row = "(" + ", ".join("?" * width) + ")"
            match = f"({', '.join(quoted)}) IN (VALUES {', '.join([row] * len(part))})"
            params = [v for k in part for v in k]
        yield from_clause(mapping, match, filtered=filtered), params


def rows_by_keys(
    conn: apsw.Connection, mapping: TableMapping, keys: Sequence[Key], filtered: bool = True
) -> dict[Key, Row]:
    """The current rows for `keys` that exist and match `where` (any row when not `filtered`),
    keyed by their primary key. A row on which a computed field's expression fails holds an
    ExpressionFailed in that field's place (build_document makes it the row's DocumentError)."""
    found: dict[Key, Row] = {}
    for start in range(0, len(keys), KEYS_PER_SELECT):
        part = keys[start : start + KEYS_PER_SELECT]
        rest, params = next(key_chunks(mapping, part, len(part), filtered))
        try:
            rows = select_values(conn, mapping.select_list(), rest, params)  # invalid UTF-8: U+FFFD
        except ROW_QUERY_ERRORS:
            if not mapping.computed_fields:
                raise
            rows = [r for key in part for r in _row_field_by_field(conn, mapping, key, filtered)]
        for row in rows:
            found[row_key(mapping, row)] = row
    return found


def _key_list(mapping: TableMapping) -> list[str]:
    return [quote_ident(c) for c in mapping.key]


def _row_field_by_field(
    conn: apsw.Connection, mapping: TableMapping, key: Key, filtered: bool
) -> list[Row]:
    """The row of `key` ([] when none), read with its computed fields left NULL and then each
    evaluated alone: one that fails is an ExpressionFailed with SQLite's message. When the
    row can't be read even so (its `where` fails), that is the table's error: raised."""
    rest, params = next(key_chunks(mapping, [key], 1, filtered))
    flag = mapping.select_list()[len(mapping.key) + len(mapping.fields) :]
    plain = [f.selected if f.sql is None else "NULL" for f in mapping.fields]
    rows = select_values(conn, [*_key_list(mapping), *plain, *flag], rest, params)
    if not rows:
        return []
    row = list(rows[0])
    for i, field in enumerate(mapping.fields, start=len(mapping.key)):
        if field.sql is None:
            continue
        try:
            values = select_values(conn, [field.selected], rest, params)
        except ROW_QUERY_ERRORS as exc:
            row[i] = ExpressionFailed(str(exc))
            continue
        row[i] = values[0][0] if values else None  # the row is gone only in another snapshot
    return [tuple(row)]


def has_row(conn: apsw.Connection, mapping: TableMapping, key: Key) -> bool:
    """Whether the table has a row with this key (`where` or not), each part bound as it is: a
    text that is not UTF-8 as its own bytes."""
    params: list[Any] = []
    match = " AND ".join(
        _compared(quote_ident(c), bind(v), "=", params)
        for c, v in zip(mapping.key, key, strict=True)
    )
    query = f"SELECT EXISTS (SELECT 1 {from_clause(mapping, match, filtered=False)})"
    return bool(scalar(conn, query, tuple(params)))
