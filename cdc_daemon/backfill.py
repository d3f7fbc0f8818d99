"""Backfill: every current row goes through the log, a page of keys at a time, resumably.

Each page of keys (ordered by primary key) is written into the change log in one short write
transaction, together with the page's last key (the resume point). The page is then synced like
any app change, so the one-processor rule keeps per-key order even while the app writes.
Memory is one page; a kill -9 resumes from the last logged page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cdc_daemon.changelog import ChangeLog
from cdc_daemon.database import Database, quote_ident, scalar
from cdc_daemon.drain import Drainer
from cdc_daemon.keys import Key, format_quoted_key, key_to_log_key, parse_quoted_key
from cdc_daemon.schema import TableMapping
from cdc_daemon.triggers import LogTables

PAGE_SIZE = 2000


@dataclass
class BackfillProgress:
    table: str
    total: int
    done: int
    resumed_from: int = 0


def _state_name(table: str) -> str:
    return f"backfill:{table}"


class Backfill:
    def __init__(
        self,
        db: Database,
        names: LogTables,
        changelog: ChangeLog,
        drainer: Drainer,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.db = db
        self.names = names
        self.changelog = changelog
        self.drainer = drainer
        self.page_size = page_size
        self._state = quote_ident(names.state)

    def _resume_point(self, table: str) -> tuple[Key | None, int]:
        rows = self.db.query(
            f"SELECT value FROM {self._state} WHERE name = ?", (_state_name(table),)
        )
        if not rows:
            return None, 0
        done, _, key_text = str(rows[0][0]).partition(" ")
        return parse_quoted_key(key_text), int(done)

    def count(self, mapping: TableMapping) -> int:
        where = f" WHERE ({mapping.where})" if mapping.where else ""
        return int(self.db.scalar(f"SELECT COUNT(*) FROM {quote_ident(mapping.table)}{where}"))

    def run(self, mapping: TableMapping, on_progress: Callable[[BackfillProgress], None]) -> bool:
        """Backfill one table; False if stopped before the end (resumable)."""
        last_key, done = self._resume_point(mapping.table)
        progress = BackfillProgress(mapping.table, self.count(mapping), done, resumed_from=done)
        on_progress(progress)
        while not self.drainer.stop.is_set():
            page = self._log_page(mapping, last_key, progress.done)
            if page is None:
                break
            last_key, max_seq, page_rows = page
            if not self.drainer.drain_through(max_seq):
                return False
            progress.done += page_rows
            progress.total = max(progress.total, progress.done)
            on_progress(progress)
        else:
            return False
        with self.db.write() as conn:
            conn.execute(f"DELETE FROM {self._state} WHERE name = ?", (_state_name(mapping.table),))
        return True

    def _log_page(
        self, mapping: TableMapping, after: Key | None, done: int
    ) -> tuple[Key, int, int] | None:
        """Log the next page of keys and the resume point in one transaction."""
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
        log = quote_ident(self.names.log)
        with self.db.write() as conn:
            keys = [tuple(row) for row in conn.execute(sql, params)]
            if not keys:
                return None
            conn.executemany(
                f"INSERT INTO {log} (tbl, pk, op) VALUES (?, ?, 'B')",
                ((mapping.table, key_to_log_key(k)) for k in keys),
            )
            max_seq = int(scalar(conn, f"SELECT MAX(seq) FROM {log}"))
            conn.execute(
                f"INSERT OR REPLACE INTO {self._state} (name, value) VALUES (?, ?)",
                (_state_name(mapping.table), f"{done + len(keys)} {format_quoted_key(keys[-1])}"),
            )
        return keys[-1], max_seq, len(keys)


def backfills_in_progress(db: Database, names: LogTables) -> dict[str, int]:
    """Tables with an unfinished backfill and how many rows it has logged so far."""
    rows = db.query(
        f"SELECT name, value FROM {quote_ident(names.state)} WHERE name LIKE 'backfill:%'"
    )
    return {name.removeprefix("backfill:"): int(value.split(" ")[0]) for name, value in rows}
