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
from dataclasses import dataclass
from typing import Any, cast

from cdc_daemon.database import Database, InvalidText, quote_ident, scalar, select_rows
from cdc_daemon.log_schema import BACKFILL_PREFIX, LogTables, Op, StateStore
from cdc_daemon.row_keys import Key, KeyValue, parse_quoted_key
from cdc_daemon.schema import TableMapping
from cdc_daemon.table_rows import ROW_QUERY_ERRORS, RowQueryFailed, count_rows, in_key_order
from cdc_daemon.triggers import key_expr

PAGE_SIZE = 2000


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
        self._state = StateStore(db, names)
        self._log = quote_ident(names.log)

    def _resume_point(self, table: str) -> tuple[Key | None, int] | None:
        """(last logged key, rows logged) of an unfinished backfill, None when there is none."""
        value = self._state.get(BACKFILL_PREFIX + table)
        if value is None:
            return None
        done, _, key_text = value.partition(" ")
        return (_resume_key(key_text) if key_text else None), int(done)

    def start(self, table: str, conn: Any = None) -> None:
        """Begin (or restart) a backfill of `table` from its first key (inside `conn`'s write
        transaction when given: recorded together with what needs it)."""
        self._save(table, 0, None, conn)

    def _save(self, table: str, done: int, last_key: Key | None, conn: Any = None) -> None:
        value = f"{done} {_resume_text(last_key)}" if last_key else str(done)
        self._state.set(BACKFILL_PREFIX + table, value, conn)

    def active(self) -> dict[str, int]:
        """Tables with an unfinished backfill and how many rows it has logged so far."""
        return backfills_in_progress(self.db, self.names)

    def count(self, mapping: TableMapping) -> int:
        return count_rows(self.db, mapping)

    def log_next_page(self, mapping: TableMapping) -> tuple[int, int] | None:
        """Log the next page of keys and move the resume point, in one transaction.

        Returns (highest seq logged, rows in the page), or None when the backfill is finished
        (its state is then removed) or none is in progress.
        """
        resume = self._resume_point(mapping.table)
        if resume is None:
            return None
        after, done = resume
        rows, params = in_key_order(mapping, after)
        with self.db.write() as conn:
            # SQLite writes each key's log text with the triggers' own expression: the same value
            # an app change of that row logs (a text key that is not UTF-8 included: dead-lettered
            # like any such key, while the other rows go on).
            try:
                conn.execute(
                    f"INSERT INTO {self._log} (tbl, pk, op) SELECT ?,"
                    f" {key_expr('', mapping.key)}, ? {rows} LIMIT {int(self.page_size)}",
                    [mapping.table, Op.BACKFILL, *params],
                )
            except ROW_QUERY_ERRORS as exc:  # caught here: write() would make it the database's
                raise RowQueryFailed(mapping.table, str(exc)) from None
            count = conn.changes()
            if not count:
                self._state.delete(BACKFILL_PREFIX + mapping.table, conn=conn)
                return None
            # The page's last key, read keeping the bytes of a text that is not UTF-8.
            last = select_rows(conn, mapping.key, f"{rows} LIMIT 1 OFFSET {count - 1}", params)
            max_seq = int(scalar(conn, f"SELECT MAX(seq) FROM {self._log}"))
            self._save(mapping.table, done + count, tuple(last[0]), conn)
        return max_seq, count

    def begin_or_resume(self, table: str) -> int:
        """Rows logged so far by an unfinished backfill of `table`; 0 when none was in progress
        (one is started now). The `backfill` command's driver is drain.backfill_table."""
        resume = self._resume_point(table)
        if resume is None:
            self.start(table)
            return 0
        return resume[1]


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
    owed = StateStore(db, names).with_prefix(BACKFILL_PREFIX)
    return {table: int(value.split(" ")[0]) for table, value in owed.items()}
