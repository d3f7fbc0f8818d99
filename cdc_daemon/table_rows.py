"""The rows of one mapped table: the row query with its `where` clause, keyset pages in key
order, rows by keys.

Every read of a mapped table's rows builds its SQL here (sync, backfill, verify, the sweep, a
leftover's clean-up, `check`), so they all read the same rows: those the mapping's `where` keeps,
as `mapping.columns` (key, fields, then the soft-delete flag), a text that is not UTF-8 as an
InvalidText (select_rows). Pages follow the primary key, `(key) > (last key)` rather than OFFSET:
a page costs the same wherever it starts, and rows the app adds or removes meanwhile never make
a page skip or repeat a row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apsw

from cdc_daemon.database import Database, bind, quote_ident, scalar, select_rows
from cdc_daemon.documents import row_key
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
    """`SELECT <mapping.columns> FROM <table> WHERE (<where>)`: what every row read runs."""
    columns = ", ".join(quote_ident(c) for c in mapping.columns)
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
    """The next `limit` rows (as `mapping.columns`) after the key `after`, in key order."""
    rest, params = in_key_order(mapping, after)
    return select_rows(conn, mapping.columns, f"{rest} LIMIT {int(limit)}", params)


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
    keyed by their primary key."""
    found: dict[Key, Row] = {}
    for rest, params in key_chunks(mapping, keys, KEYS_PER_SELECT, filtered):
        for row in select_rows(conn, mapping.columns, rest, params):  # invalid UTF-8: U+FFFD
            found[row_key(mapping, row)] = row
    return found


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
