"""Read-only questions about the change log and the dead letters: backlogs, what is pending,
what is dead. For `status`, metrics, verify and the waits (drain, the daemon's resyncs); it
writes nothing, so it needs no `sync.max_attempts`."""

from __future__ import annotations

import time
from typing import Any

import apsw

from cdc_daemon.database import Database, quote_ident, scalar, select_rows
from cdc_daemon.log_schema import LogTables


class LogStatus:
    """Used by the thread that uses `db` (metrics and admin requests open their own)."""

    def __init__(self, db: Database, names: LogTables) -> None:
        self.db = db
        self.names = names
        self._log = quote_ident(names.log)
        self._dead = quote_ident(names.dead)

    def unsynced_through(self, seq: int) -> int:
        """Entries up to `seq` not yet synced, leaving out those backing off after a rejection."""
        return int(
            self.db.scalar(
                f"SELECT COUNT(*) FROM {self._log} WHERE seq <= ? AND attempts = 0", (seq,)
            )
        )

    def unsynced_for_table(self, table: str, limit: int) -> int:
        """Entries of one table not yet synced (counted up to `limit`), leaving out those backing
        off after a rejection."""
        return int(
            self.db.scalar(
                f"SELECT COUNT(*) FROM (SELECT 1 FROM {self._log} WHERE tbl = ? AND attempts = 0"
                " LIMIT ?)",
                (table, limit),
            )
        )

    def oldest_due(self, conn: apsw.Connection, now: float) -> float | None:
        """When the oldest entry that is due and was never tried was logged (None: none is);
        an old one means nobody is syncing."""
        value = scalar(
            conn,
            f"SELECT MIN(ts) FROM {self._log} WHERE attempts = 0 AND next_attempt_at <= ?",
            (now,),
        )
        return None if value is None else float(value)

    def pending(self, conn: apsw.Connection, table: str) -> list[tuple[Any, float, int, Any]]:
        """Each key of `table` with entries in the log: (log key, oldest entry's ts, most
        attempts, last error or None)."""
        return select_rows(
            conn,
            ("pk", "ts", "attempts", "last_error"),
            f"FROM (SELECT pk, MIN(ts) AS ts, MAX(attempts) AS attempts,"
            f" MAX(last_error) AS last_error FROM {self._log} WHERE tbl = ? GROUP BY pk)",
            (table,),
        )

    def dead_keys(self, conn: apsw.Connection, table: str) -> list[tuple[Any, str]]:
        """(log key, error) of each dead letter of `table`."""
        return select_rows(conn, ("pk", "error"), f"FROM {self._dead} WHERE tbl = ?", (table,))

    def summary(self, tables: list[str]) -> dict[str, Any]:
        """Backlog, oldest pending age and dead letters, in total and per table."""
        now = time.time()
        per_table: dict[str, dict[str, Any]] = {}

        def entry(table: str) -> dict[str, Any]:
            empty = {"backlog": 0, "oldest_age_seconds": None, "retrying": 0, "dead_letters": 0}
            return per_table.setdefault(table, empty)

        for table in tables:
            entry(table)
        with self.db.read() as conn:
            backlog_rows: list[tuple[Any, ...]] = conn.execute(
                f"SELECT tbl, COUNT(*), MIN(ts), SUM(attempts > 0) FROM {self._log} GROUP BY tbl"
            ).fetchall()
            dead_rows: list[tuple[Any, ...]] = conn.execute(
                f"SELECT tbl, COUNT(*) FROM {self._dead} GROUP BY tbl"
            ).fetchall()
        for table, count, oldest, retrying in backlog_rows:
            age = round(max(0.0, now - oldest), 3)
            entry(table).update(backlog=count, oldest_age_seconds=age, retrying=retrying)
        for table, count in dead_rows:
            entry(table)["dead_letters"] = count
        ages = [age for t in per_table.values() if (age := t["oldest_age_seconds"]) is not None]
        return {
            "backlog": sum(t["backlog"] for t in per_table.values()),
            "oldest_age_seconds": max(ages) if ages else None,
            "dead_letters": sum(t["dead_letters"] for t in per_table.values()),
            "tables": per_table,
        }
