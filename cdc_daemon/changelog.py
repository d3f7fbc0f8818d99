"""The change log as its one processor uses it: read a batch, acknowledge by seq, back off or
dead-letter failures, log keys again. The dead letters' operator side is dead_letters.py, the
read-only questions (status, backlogs) log_status.py, the tables and op codes log_schema.py."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import apsw
import structlog

from cdc_daemon.database import Database, bind, quote_ident, scalar, select_rows
from cdc_daemon.dead_letters import DeadLetters
from cdc_daemon.log_schema import (
    ACKNOWLEDGING,
    DELETED_BY_OTHERS,
    LAST_SYNCED,
    LogTables,
    Op,
    StateStore,
)
from cdc_daemon.retry import backoff_delay
from cdc_daemon.row_keys import Key, log_key_sql

RETRYABLE_DELAY = 1.0  # seconds before a key whose failure was not its fault is tried again
MAX_DELAY = 300.0  # seconds: no entry is ever scheduled further ahead (backoff cap, re-sends)
LAST_SYNCED_EVERY = 1.0  # seconds: a busy processor records "last synced" this often at most
log = structlog.get_logger("cdc_daemon.changelog")


class LogEntry(NamedTuple):  # a tuple: built for every entry read, 3x cheaper than a dataclass
    seq: int
    table: str
    log_key: Any
    op: str
    attempts: int
    ts: float


@dataclass(frozen=True)
class KeyFailure:
    """Every log entry of one key read in a batch, and why its document failed."""

    table: str
    log_key: Any
    entries: tuple[LogEntry, ...]
    error: str
    retryable: bool


def contiguous_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """[1,2,3,7,8] → [(1,3),(7,8)]: range deletes are much cheaper than scattered ones."""
    ranges: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


class ChangeLog:
    """The processor's side of the log (one processor: the daemon's loop, or a command holding
    the processor lock); `max_attempts` rejections of a key dead-letter it."""

    def __init__(self, db: Database, names: LogTables, max_attempts: int) -> None:
        self.db = db
        self.names = names
        self.max_attempts = max_attempts
        self._log = quote_ident(names.log)
        self._dead_letters = DeadLetters(db, names)
        self._state = StateStore(db, names)
        # Keys whose entry waits for a retry after a failure: (table, log key) → [(seq,
        # attempts)], read once (with the deleted-by-others count it was read at), then kept
        # up to date by commit(). A newer change of such a key that succeeds makes it obsolete.
        self._retrying: dict[tuple[str, Any], list[tuple[int, int]]] = {}
        self._retrying_read_at: int | None = None
        self._last_synced_written = -LAST_SYNCED_EVERY  # time.monotonic() of the last record

    def read_batch(
        self,
        conn: apsw.Connection,
        limit: int,
        now: float,
        after: int = 0,
        skip_tables: Sequence[str] = (),
    ) -> list[LogEntry]:
        """The oldest `limit` entries that are due (with a seq above `after`), leaving out those
        of `skip_tables` (tables that can't be read now: their entries wait); call inside
        Database.read().

        next_attempt_at is wall-clock time: an entry due further ahead than any delay the daemon
        sets (MAX_DELAY) was scheduled before the clock was stepped back, and is due now."""
        skip = f" AND tbl NOT IN ({', '.join('?' * len(skip_tables))})" if skip_tables else ""
        rows = select_rows(  # a key that is not UTF-8 comes back as an InvalidText, and is
            conn,  # dead-lettered (row_keys.py)
            ("seq", "tbl", "pk", "op", "attempts", "ts"),  # LogEntry's fields
            f"FROM {self._log} WHERE seq > ?"
            f" AND (next_attempt_at <= ? OR next_attempt_at > ?){skip} ORDER BY seq LIMIT ?",
            (after, now, now + MAX_DELAY + 1.0, *skip_tables, limit),
        )
        return list(map(LogEntry._make, rows))

    def deleted_by_others(self, conn: apsw.Connection) -> int:
        """Log entries deleted by anything but the daemon, ever (counted by the log's guard
        trigger). Read with a batch; a different count when acknowledging it means its seqs may
        have been used again for newer changes (the log has no AUTOINCREMENT)."""
        return int(self._state.get(DELETED_BY_OTHERS, conn) or 0)

    def commit(
        self,
        acked: list[tuple[int, int]],
        succeeded_keys: Iterable[tuple[str, Any]],
        failures: list[KeyFailure],
        deleted_by_others: int,
        expansions: Sequence[tuple[str, list[Any]]] = (),
    ) -> list[KeyFailure]:
        """Delete the acknowledged seq ranges, back off or dead-letter failures, clear the dead
        letters of keys that succeeded (`succeeded_keys` is read only if there are any), and run
        `expansions` first (INSERT ... SELECTs logging the keys a dependency row's change touches,
        dependencies.py: the J entry goes in the same transaction as they come): one write.

        `deleted_by_others` is deleted_by_others() as read with the batch: if it moved, nothing
        is written (the entries are read and sent again: harmless). Returns the failures that
        were dead-lettered.
        """
        now = time.time()
        dead: list[KeyFailure] = []
        with self.db.write() as conn:
            if self.deleted_by_others(conn) != deleted_by_others:
                log.warning(
                    "log entries were deleted by something else since this batch was read;"
                    " not acknowledging it, it is read again"
                )
                return []
            for sql, params in expansions:  # before the deletes: new seqs above the acked ones
                conn.execute(sql, params)
            delete = list(acked)
            retrying = self.retrying_entries(conn, deleted_by_others)
            has_dead = self._dead_letters.any(conn)
            succeeded = list(succeeded_keys) if retrying or has_dead else []
            # Older entries of a key whose newer change succeeded (or failed again: one entry
            # per key waits) are done; they would hold the lag up for nothing.
            obsolete = [(seq, *ident) for ident in succeeded for seq, _ in retrying.pop(ident, [])]
            for failure in failures:
                ident = (failure.table, failure.log_key)
                keep = max(e.seq for e in failure.entries)
                delete.extend((e.seq, e.seq) for e in failure.entries if e.seq != keep)
                read = {e.seq for e in failure.entries}
                older = [(seq, n) for seq, n in retrying.pop(ident, []) if seq not in read]
                obsolete.extend((seq, *ident) for seq, _ in older)
                attempts = max([e.attempts for e in failure.entries] + [n for _, n in older])
                if failure.retryable:
                    conn.execute(
                        f"UPDATE {self._log} SET next_attempt_at = ?, last_error = ?,"
                        " attempts = ? WHERE seq = ?",
                        (now + RETRYABLE_DELAY, failure.error, attempts, keep),
                    )
                    retrying[ident] = [(keep, attempts)]
                    continue
                attempts += 1
                if attempts >= self.max_attempts:
                    dead.append(failure)
                    delete.append((keep, keep))
                    self._dead_letter(conn, failure, attempts, now)
                else:
                    retrying[ident] = [(keep, attempts)]
                    conn.execute(
                        f"UPDATE {self._log} SET attempts = ?, next_attempt_at = ?, last_error = ?"
                        " WHERE seq = ?",
                        (
                            attempts,
                            now + backoff_delay(attempts, initial=1.0, cap=MAX_DELAY),
                            failure.error,
                            keep,
                        ),
                    )
            # Our own deletes, not counted by the guard trigger: the marker is never committed.
            with self._state.marker(ACKNOWLEDGING, conn):
                conn.executemany(f"DELETE FROM {self._log} WHERE seq BETWEEN ? AND ?", delete)
                for seq, table, log_key in obsolete:  # by seq and key: never another key's entry
                    placeholder, key = bind(log_key)
                    conn.execute(
                        f"DELETE FROM {self._log} WHERE seq = ? AND tbl = ?"
                        f" AND pk IS {placeholder}",
                        (seq, table, key),
                    )
            if has_dead:
                self._dead_letters.clear(conn, succeeded)
            if acked:
                self._record_synced(conn, now)
        return dead

    def _record_synced(self, conn: apsw.Connection, now: float) -> None:
        """`status`'s "last synced": written with an ack, throttled (one small row, at most
        about once a second while busy, never while idle)."""
        if time.monotonic() - self._last_synced_written >= LAST_SYNCED_EVERY:
            self._state.set(LAST_SYNCED, now, conn)
            self._last_synced_written = time.monotonic()

    def retrying_entries(
        self, conn: apsw.Connection, deleted_by_others: int
    ) -> dict[tuple[str, Any], list[tuple[int, int]]]:
        """The entries waiting for a retry, by key: read from the log the first time, and again
        after a delete by someone else (their seqs may name other entries now)."""
        if self._retrying_read_at != deleted_by_others:
            self._retrying = {}
            for table, log_key, seq, attempts in select_rows(
                conn,
                ("tbl", "pk", "seq", "attempts"),
                f"FROM {self._log} WHERE last_error IS NOT NULL ORDER BY seq",
            ):
                self._retrying.setdefault((table, log_key), []).append((seq, attempts))
            self._retrying_read_at = deleted_by_others
        return self._retrying

    def _dead_letter(
        self, conn: apsw.Connection, failure: KeyFailure, attempts: int, now: float
    ) -> None:
        first_seen = min(e.ts for e in failure.entries)
        self._dead_letters.add(
            conn, failure.table, failure.log_key, failure.error, attempts, (first_seen, now)
        )

    def enqueue(
        self, table: str, log_keys: Iterable[Any], op: Op, not_before: float = 0.0
    ) -> int:
        """Log again log keys read from the log (a re-send after a timeout), due at `not_before`
        (unix time); returns the highest seq. Keys of rows go through enqueue_keys."""
        with self.db.write() as conn:
            for log_key in log_keys:
                placeholder, value = bind(log_key)  # a text that is not UTF-8 stays itself
                conn.execute(
                    f"INSERT INTO {self._log} (tbl, pk, op, next_attempt_at)"
                    f" VALUES (?, {placeholder}, ?, ?)",
                    (table, value, op, not_before),
                )
            return int(scalar(conn, f"SELECT COALESCE(MAX(seq), 0) FROM {self._log}"))

    def enqueue_keys(
        self, table: str, keys: Iterable[Key], op: Op, not_before: float = 0.0
    ) -> int:
        """Log row keys as if the app had changed them (verify --repair), due at `not_before`
        (unix time); returns the highest seq. SQLite writes each key's text from the bound values
        with the triggers' own expression (keys.log_key_sql), so a key has one text in the log and
        the dead letters, whoever logged it."""
        with self.db.write() as conn:
            for key in keys:
                placeholders, values = zip(*(bind(value) for value in key), strict=True)
                numbered = [p.replace("?", f"?{i}") for i, p in enumerate(placeholders, start=4)]
                conn.execute(
                    f"INSERT INTO {self._log} (tbl, pk, op, next_attempt_at)"
                    f" VALUES (?1, {log_key_sql(numbered)}, ?2, ?3)",
                    (table, op, not_before, *values),
                )
            return int(scalar(conn, f"SELECT COALESCE(MAX(seq), 0) FROM {self._log}"))
