"""The daemon's own footprint in the app's database, in one place: its three tables' names, the
op codes of the change log, the names in the state table, and the small store that reads and
writes those names.

What is stored here must stay byte for byte what earlier versions stored (the letters, the
state names): a database written by one version is read by the next. The tables themselves are
created by sql/log.sql (triggers.install); docs/architecture.md "The change log" describes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

import apsw

from cdc_daemon.database import Database, quote_ident, scalar

StateValue = str | int | float  # bound as is: SQLite turns a number into its own text


@dataclass(frozen=True)
class LogTables:
    """The names of the daemon's own tables in the app's database."""

    log: str

    @property
    def dead(self) -> str:
        return f"{self.log}_dead"

    @property
    def state(self) -> str:
        return f"{self.log}_state"

    def trigger_prefix(self) -> str:
        return f"{self.log}:"

    def trigger_name(self, table: str, kind: str) -> str:
        return f"{self.log}:{table}:{kind}"


def not_installed_message(db: Database, names: LogTables, missing: list[str]) -> str:
    """The one line every command says instead of SQLite's "no such table"."""
    if len(missing) == len((names.log, names.dead, names.state)):
        return f"the change log is not installed in {db.path}: run `cdc-daemon install`"
    listed = ", ".join(repr(table) for table in missing)
    return (
        f"{db.path}: the change log is partly installed ({listed} missing):"
        " run `cdc-daemon install`"
    )


class Op(StrEnum):
    """Why an entry is in the change log (its `op` column). The sync path treats every op alike
    (it reads the key's row now: a row upserts its document, no row deletes it); the op says who
    logged the entry, for people reading the log and for the few places noted below."""

    INSERT = "I"
    """The app inserted a row (its insert trigger)."""
    UPDATE = "U"
    """The app updated a row (its update trigger); the new key's entry when the key changed."""
    DELETE = "D"
    """A key that may no longer have a row: the app deleted the row (delete trigger), changed its
    key (the old key, update_key trigger), or a REPLACE evicted it through a UNIQUE index or a
    non-BINARY key collation (the eviction triggers)."""
    BACKFILL = "B"
    """Logged by a backfill (backfill.py), page by page: the `backfill` command, a rebuild, a
    resend or resync after a reload, a replaced file, a following host. A rebuild does not mirror
    these to the old collection (sync.py): only the app's own changes are."""
    RETRY = "R"
    """A dead letter sent again: `dead-letters retry` or the admin API (dead_letters.py)."""
    RESEND = "T"
    """A key whose write timed out (or whose connection broke), logged again to be sent once
    more after a delay, after any late arrival of the lost write (sync.py)."""
    REPAIR = "V"
    """A key whose document differs from its row: `verify --repair` (verify.py) and the sweep
    after a replaced file (sweep.py)."""
    JOINED = "J"
    """A row of a dependency table (`depends_on`) changed: the entry's `tbl` is that table, its
    `pk` the old and then the new values of its join columns (dependencies.py). Not a key: the
    daemon turns it into EXPANDED entries of the documents joined to either version of the row."""
    EXPANDED = "E"
    """A key whose document reads a dependency row that changed (a JOINED entry, expanded by the
    daemon in the transaction that acknowledges it: changelog.py)."""


# -- names in the state table (`<log>_state`: name TEXT PRIMARY KEY, value TEXT) ------------------
# Single names.
ACKNOWLEDGING = "acknowledging"
"""Present only inside the daemon's own acknowledging transaction (never committed): the log's
guard trigger (sql/trigger_log_guard.sql) does not count the daemon's deletes."""
DELETED_BY_OTHERS = "deleted-by-others"
"""Log entries deleted by anything but the daemon, ever (counted by the guard trigger)."""
DATABASE_FILE = "database-file"
"""The file last synced: `<inode> <token>` (sweep.py: a replaced file is noticed)."""
LAST_SYNCED = "last-synced"
"""Unix time the processor last acknowledged synced changes (`status`), written with an ack at
most about once a second (changelog.py): an idle daemon writes nothing."""

# Prefixes: the name is the prefix followed by a table's name.
BACKFILL_PREFIX = "backfill:"
"""An unfinished backfill: `<rows logged>[ <last key as JSON>]` (backfill.py)."""
REBUILD_PREFIX = "rebuild:"
"""A rebuild in progress: the new collection being filled (evolution.py)."""
RETIRE_PREFIX = "retire:"
"""The collection a finishing rebuild's alias switch leaves behind, to drop (evolution.py)."""
CREATED_PREFIX = "created:"
"""The alias the daemon created for the table (evolution.py: recreated and filled if deleted)."""
FOLLOW_PREFIX = "follow:"
"""The shared collection (and schema) a following host last sent its rows to (evolution.py)."""
MAPPING_PREFIX = "mapping:"
"""The table's mapping as last synced, JSON (reconfigure.py)."""
LEFTOVER_PREFIX = "leftover:"
"""Old collections or id prefixes a reload left to clear, a JSON list (reconfigure.py)."""
SWEEP_PREFIX = "sweep:"
"""The phase of a resync still owed (sweep.py: after a replaced file, a reload, triggers back)."""
TRIGGERS_MISSING_PREFIX = "triggers-missing:"
"""Unix time the table was first seen without its triggers (trigger_watch.py)."""

# Every prefix in use (tests keep them apart and free of LIKE wildcards).
STATE_PREFIXES = (
    BACKFILL_PREFIX,
    REBUILD_PREFIX,
    RETIRE_PREFIX,
    CREATED_PREFIX,
    FOLLOW_PREFIX,
    MAPPING_PREFIX,
    LEFTOVER_PREFIX,
    SWEEP_PREFIX,
    TRIGGERS_MISSING_PREFIX,
)


class StateStore:
    """Names and values in the state table. Each method takes the caller's write (or read)
    transaction's connection when given, so a state change commits together with what needs it;
    without one a read is a statement of its own and a write its own short transaction. Like
    every object holding a Database, used by the thread that uses that Database."""

    def __init__(self, db: Database, names: LogTables) -> None:
        self.db = db
        self._state = quote_ident(names.state)

    def get(self, name: str, conn: apsw.Connection | None = None) -> str | None:
        sql = f"SELECT value FROM {self._state} WHERE name = ?"
        value = self.db.scalar(sql, (name,)) if conn is None else scalar(conn, sql, (name,))
        return None if value is None else str(value)

    def with_prefix(self, prefix: str, conn: apsw.Connection | None = None) -> dict[str, str]:
        """Every name starting with `prefix` (none holds a LIKE wildcard) → its value, the name
        given without the prefix."""
        sql = f"SELECT name, value FROM {self._state} WHERE name LIKE ?"
        params = (prefix + "%",)
        rows = self.db.query(sql, params) if conn is None else conn.execute(sql, params).fetchall()
        return {str(name).removeprefix(prefix): str(value) for name, value in rows}

    def set(self, name: str, value: StateValue, conn: apsw.Connection | None = None) -> None:
        sql = f"INSERT OR REPLACE INTO {self._state} (name, value) VALUES (?, ?)"
        self._write(sql, [(name, value)], conn)

    def set_default(
        self, name: str, value: StateValue, conn: apsw.Connection | None = None
    ) -> None:
        """Set `name` unless it is already set (its value then stays)."""
        sql = f"INSERT OR IGNORE INTO {self._state} (name, value) VALUES (?, ?)"
        self._write(sql, [(name, value)], conn)

    def delete(self, *names: str, conn: apsw.Connection | None = None) -> None:
        """Remove these names, all in one transaction."""
        sql = f"DELETE FROM {self._state} WHERE name = ?"
        self._write(sql, [(name,) for name in names], conn)

    @contextmanager
    def marker(self, name: str, conn: apsw.Connection) -> Iterator[None]:
        """`name` is present only while the block runs, inside the caller's transaction (a
        plain INSERT: a marker left over from elsewhere fails the transaction, loudly)."""
        conn.execute(f"INSERT INTO {self._state} VALUES (?, 1)", (name,))
        yield
        conn.execute(f"DELETE FROM {self._state} WHERE name = ?", (name,))

    def _write(
        self, sql: str, rows: list[tuple[StateValue, ...]], conn: apsw.Connection | None
    ) -> None:
        if conn is not None:
            conn.executemany(sql, rows)
            return
        with self.db.write() as write:
            write.executemany(sql, rows)
