"""Dead letters: keys the daemon gave up on after `sync.max_attempts` rejections (`<log>_dead`).

Listed, retried and purged by the operator (`dead-letters`, the admin API); written and cleared
by the acknowledgement path (changelog.ChangeLog.commit) inside its own write transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import apsw

from cdc_daemon.database import Database, bind, quote_ident, scalar, select_rows
from cdc_daemon.log_schema import LogTables, Op
from cdc_daemon.row_keys import parse_quoted_key


class DeadLetters:
    """Used by the thread that uses `db` (an admin request opens its own)."""

    def __init__(self, db: Database, names: LogTables) -> None:
        self.db = db
        self._log = quote_ident(names.log)
        self._dead = quote_ident(names.dead)

    # -- the operator's side --------------------------------------------------------------------

    def entries(self, table: str | None = None) -> list[dict[str, Any]]:
        """Every dead letter (of `table`), oldest first."""
        with self.db.read() as conn:  # a key that is not UTF-8 is read as an InvalidText
            rows = select_rows(
                conn,
                ("tbl", "pk", "error", "attempts", "first_seen", "last_seen"),
                f"FROM {self._dead}" + (" WHERE tbl = ?" if table else "") + " ORDER BY rowid",
                (table,) if table else None,
            )
        return [
            {"table": t, "key": k, "error": e, "attempts": a, "first_seen": f, "last_seen": s}
            for t, k, e, a, f, s in rows
        ]

    def retry(self, table: str | None = None) -> int:
        """Log the dead letters' keys again (op R) and forget them; returns how many."""
        where, params = (" WHERE tbl = ?", (table,)) if table else ("", ())
        with self.db.write() as conn:
            count = int(scalar(conn, f"SELECT COUNT(*) FROM {self._dead}{where}", params))
            conn.execute(
                f"INSERT INTO {self._log} (tbl, pk, op) SELECT tbl, pk, ? FROM {self._dead}"
                f"{where} ORDER BY rowid",
                (Op.RETRY, *params),
            )
            conn.execute(f"DELETE FROM {self._dead}{where}", params)
        return count

    def purge(self, table: str | None = None) -> int:
        """Forget the dead letters without sending them again; returns how many."""
        where, params = (" WHERE tbl = ?", (table,)) if table else ("", ())
        with self.db.write() as conn:
            count = int(scalar(conn, f"SELECT COUNT(*) FROM {self._dead}{where}", params))
            conn.execute(f"DELETE FROM {self._dead}{where}", params)
        return count

    # -- the acknowledgement's side: inside its write transaction --------------------------------

    def any(self, conn: apsw.Connection) -> bool:
        return bool(scalar(conn, f"SELECT EXISTS (SELECT 1 FROM {self._dead})"))

    def add(
        self,
        conn: apsw.Connection,
        table: str,
        log_key: Any,
        error: str,
        attempts: int,
        seen: tuple[float, float],
    ) -> None:
        """Dead-letter a key (`seen`: its first change's time, now); a key dead already adds
        its attempts and keeps its first time."""
        key_placeholder, key = bind(log_key)  # a key that is not UTF-8: its own bytes
        conn.execute(
            f"INSERT INTO {self._dead} (tbl, pk, error, attempts, first_seen, last_seen)"
            f" VALUES (?, {key_placeholder}, ?, ?, ?, ?) ON CONFLICT (tbl, pk) DO UPDATE SET"
            " error = excluded.error, attempts = attempts + excluded.attempts,"
            " last_seen = excluded.last_seen",
            (table, key, error, attempts, *seen),
        )

    def clear(self, conn: apsw.Connection, succeeded: Iterable[tuple[str, Any]]) -> None:
        """Remove the dead letters of keys that succeeded: by their text, and a composite key
        with a REAL part also by its values (the app's SQLite and the daemon's may quote() a
        REAL in different digits)."""
        succeeded = list(succeeded)
        for table, log_key in succeeded:
            placeholder, key = bind(log_key)  # a key that is not UTF-8: its own bytes
            conn.execute(f"DELETE FROM {self._dead} WHERE tbl = ? AND pk IS {placeholder}",
                         (table, key))
        with_reals = {(t, c) for t, k in succeeded if (c := _with_reals(k)) is not None}
        if with_reals:
            letters = select_rows(conn, ("rowid", "tbl", "pk"), f"FROM {self._dead}")
            cleared = [(r,) for r, t, k in letters if (t, _with_reals(k)) in with_reals]
            conn.executemany(f"DELETE FROM {self._dead} WHERE rowid = ?", cleared)


def _with_reals(log_key: Any) -> tuple[tuple[str, Any], ...] | None:
    """A composite key text with a REAL part, as its typed values (None for any other key)."""
    if not (isinstance(log_key, str) and "," in log_key):
        return None
    try:
        values = parse_quoted_key(log_key)
    except ValueError:
        return None
    if not any(isinstance(v, float) for v in values):
        return None
    return tuple((type(v).__name__, v) for v in values)
