"""Backfill: every current row goes through the log, a page of keys at a time, resumably.

Each page of keys (ordered by primary key) is written into the change log in one short write
transaction, together with the page's last key (the resume point, in the state table). The page
is then synced like any app change, so the one-processor rule keeps per-key order even while the
app writes. Memory is one page; after a kill -9 the backfill continues from its last page.

`backfill` (the command) drives pages itself; the daemon drives them between batches when a
schema change needs every row sent again (see evolution.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cdc_daemon.database import Database, quote_ident, scalar
from cdc_daemon.keys import Key, format_quoted_key, key_to_log_key, parse_quoted_key
from cdc_daemon.schema import TableMapping
from cdc_daemon.triggers import LogTables

if TYPE_CHECKING:
    from cdc_daemon.drain import Drainer

PAGE_SIZE = 2000
STATE_PREFIX = "backfill:"


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
        return (parse_quoted_key(key_text) if key_text else None), int(done)

    def start(self, table: str) -> None:
        """Begin (or restart) a backfill of `table` from its first key."""
        self._save(table, 0, None)

    def _save(self, table: str, done: int, last_key: Key | None, conn: Any = None) -> None:
        value = f"{done} {format_quoted_key(last_key)}" if last_key else str(done)
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
            conditions.append(f"({key_cols}) > ({', '.join('?' * len(after))})")
            params.extend(after)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = (
            f"SELECT {key_cols} FROM {quote_ident(mapping.table)}{where}"
            f" ORDER BY {key_cols} LIMIT {int(self.page_size)}"
        )
        with self.db.write() as conn:
            keys = [tuple(row) for row in conn.execute(sql, params)]
            if not keys:
                conn.execute(
                    f"DELETE FROM {self._state} WHERE name = ?", (STATE_PREFIX + mapping.table,)
                )
                return None
            conn.executemany(
                f"INSERT INTO {self._log} (tbl, pk, op) VALUES (?, ?, 'B')",
                ((mapping.table, key_to_log_key(k)) for k in keys),
            )
            max_seq = int(scalar(conn, f"SELECT MAX(seq) FROM {self._log}"))
            self._save(mapping.table, done + len(keys), keys[-1], conn)
        return max_seq, len(keys)

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


def backfills_in_progress(db: Database, names: LogTables) -> dict[str, int]:
    """Tables with an unfinished backfill and how many rows it has logged so far."""
    rows = db.query(
        f"SELECT name, value FROM {quote_ident(names.state)} WHERE name LIKE 'backfill:%'"
    )
    return {name.removeprefix(STATE_PREFIX): int(value.split(" ")[0]) for name, value in rows}
