"""Backfill: every current row goes through the log, a page of keys at a time, resumably.

Each page of keys (ordered by primary key) is written into the change log in one short write
transaction, together with the page's last key (the resume point, in the state table). The page
is then synced like any app change, so the one-processor rule keeps per-key order even while the
app writes. Memory is one page; after a kill -9 the backfill continues from its last page.

`backfill` (the command) drives pages itself; the daemon drives them between batches when a
schema change needs every row sent again (see evolution.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import apsw

from cdc_daemon.database import (
    Database,
    InvalidText,
    after_key,
    quote_ident,
    scalar,
    select_rows,
)
from cdc_daemon.errors import DatabaseError
from cdc_daemon.keys import Key, KeyValue, parse_quoted_key
from cdc_daemon.schema import TableMapping
from cdc_daemon.triggers import LogTables, key_expr

if TYPE_CHECKING:
    from cdc_daemon.drain import Drainer

PAGE_SIZE = 2000
STATE_PREFIX = "backfill:"
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


@dataclass
class BackfillProgress:
    table: str
    total: int
    done: int
    resumed_from: int = 0


class Backfill:
    """Pages of keys into the log; the resume point lives in the `<log>_state` table."""

    def __init__(self, db: Database, names: LogTables, page_size: int = PAGE_SIZE) -> None:
        self.db = db
        self.names = names
        self.page_size = page_size
        self._state = quote_ident(names.state)
        self._log = quote_ident(names.log)

    def _resume_point(self, table: str) -> tuple[Key | None, int] | None:
        """(last logged key, rows logged) of an unfinished backfill, None when there is none."""
        value = self.db.scalar(
            f"SELECT value FROM {self._state} WHERE name = ?", (STATE_PREFIX + table,)
        )
        if value is None:
            return None
        done, _, key_text = str(value).partition(" ")
        return (_resume_key(key_text) if key_text else None), int(done)

    def start(self, table: str, conn: Any = None) -> None:
        """Begin (or restart) a backfill of `table` from its first key (inside `conn`'s write
        transaction when given: recorded together with what needs it)."""
        self._save(table, 0, None, conn)

    def _save(self, table: str, done: int, last_key: Key | None, conn: Any = None) -> None:
        value = f"{done} {_resume_text(last_key)}" if last_key else str(done)
        sql = f"INSERT OR REPLACE INTO {self._state} (name, value) VALUES (?, ?)"
        if conn is not None:
            conn.execute(sql, (STATE_PREFIX + table, value))
        else:
            with self.db.write() as write:
                write.execute(sql, (STATE_PREFIX + table, value))

    def active(self) -> dict[str, int]:
        """Tables with an unfinished backfill and how many rows it has logged so far."""
        return backfills_in_progress(self.db, self.names)

    def count(self, mapping: TableMapping) -> int:
        where = f" WHERE ({mapping.where})" if mapping.where else ""
        return int(self.db.scalar(f"SELECT COUNT(*) FROM {quote_ident(mapping.table)}{where}"))

    def log_next_page(self, mapping: TableMapping) -> tuple[int, int] | None:
        """Log the next page of keys and move the resume point, in one transaction.

        Returns (highest seq logged, rows in the page), or None when the backfill is finished
        (its state is then removed) or none is in progress.
        """
        resume = self._resume_point(mapping.table)
        if resume is None:
            return None
        after, done = resume
        key_cols = ", ".join(quote_ident(c) for c in mapping.key)
        conditions = [f"({mapping.where})"] if mapping.where else []
        params: list[Any] = []
        if after is not None:
            condition, params = after_key(mapping.key, after)
            conditions.append(condition)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = f"FROM {quote_ident(mapping.table)}{where} ORDER BY {key_cols}"
        with self.db.write() as conn:
            # SQLite writes each key's log text with the triggers' own expression: the same value
            # an app change of that row logs (a text key that is not UTF-8 included: dead-lettered
            # like any such key, while the other rows go on).
            try:
                conn.execute(
                    f"INSERT INTO {self._log} (tbl, pk, op) SELECT ?,"
                    f" {key_expr('', mapping.key)}, 'B' {rows} LIMIT {int(self.page_size)}",
                    [mapping.table, *params],
                )
            except ROW_QUERY_ERRORS as exc:  # caught here: write() would make it the database's
                raise RowQueryFailed(mapping.table, str(exc)) from None
            count = conn.changes()
            if not count:
                conn.execute(
                    f"DELETE FROM {self._state} WHERE name = ?", (STATE_PREFIX + mapping.table,)
                )
                return None
            # The page's last key, read keeping the bytes of a text that is not UTF-8.
            last = select_rows(conn, mapping.key, f"{rows} LIMIT 1 OFFSET {count - 1}", params)
            max_seq = int(scalar(conn, f"SELECT MAX(seq) FROM {self._log}"))
            self._save(mapping.table, done + count, tuple(last[0]), conn)
        return max_seq, count

    def run(
        self,
        mapping: TableMapping,
        drainer: Drainer,
        on_progress: Callable[[BackfillProgress], None],
    ) -> bool:
        """The `backfill` command for one table; False if stopped before the end (resumable)."""
        resume = self._resume_point(mapping.table)
        if resume is None:
            self.start(mapping.table)
            done = 0
        else:
            done = resume[1]
        progress = BackfillProgress(mapping.table, self.count(mapping), done, resumed_from=done)
        on_progress(progress)
        while not drainer.stop.is_set():
            page = self.log_next_page(mapping)
            if page is None:
                return True
            max_seq, rows = page
            if not drainer.drain_through(max_seq):
                return False
            progress.done += rows
            progress.total = max(progress.total, progress.done)
            on_progress(progress)
        return False


def _resume_text(key: Key) -> str:
    """The resume point's key as ASCII JSON, exact for every value: a float by its repr, a NUL
    as \\u0000, a blob and a text that is not UTF-8 as tagged hex."""
    return json.dumps([_tagged(value) for value in key], separators=(",", ":"))


def _tagged(value: KeyValue) -> Any:
    if isinstance(value, InvalidText):
        return {"not_utf8": value.raw.hex()}
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    return value


def _untagged(value: Any) -> KeyValue:
    if isinstance(value, dict):
        if "not_utf8" in value:
            return InvalidText(bytes.fromhex(value["not_utf8"]))
        return bytes.fromhex(value["hex"])
    return cast(KeyValue, value)


def _resume_key(text: str) -> Key:
    if text.startswith("["):
        return tuple(_untagged(value) for value in json.loads(text))
    return parse_quoted_key(text)  # saved by an earlier version (Python's quoted literals)


def backfills_in_progress(db: Database, names: LogTables) -> dict[str, int]:
    """Tables with an unfinished backfill and how many rows it has logged so far."""
    rows = db.query(
        f"SELECT name, value FROM {quote_ident(names.state)} WHERE name LIKE 'backfill:%'"
    )
    return {name.removeprefix(STATE_PREFIX): int(value.split(" ")[0]) for name, value in rows}
