"""The SQLite side: opening the app's file with APSW, short transactions, table introspection."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from cdc_daemon.errors import ConfigError, DatabaseBusy, DatabaseError

BUSY_TIMEOUT_MS = 5000


def quote_ident(name: str) -> str:
    """A SQL identifier, quoted so that any character (spaces, quotes, unicode) is safe."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A SQL string literal for names that must appear in DDL (trigger bodies); never for data."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Column:
    name: str
    declared_type: str
    not_null: bool
    key_position: int  # 0 when not part of the primary key, else its 1-based position


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    unique_indexes: tuple[tuple[str, ...], ...]
    # The collation of each column of each unique index (same shape); () means all BINARY.
    unique_collations: tuple[tuple[str, ...], ...] = ()

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)


@contextlib.contextmanager
def sqlite_errors(path: Path) -> Iterator[None]:
    """Translate APSW's errors into ours, naming the file."""
    try:
        yield
    except apsw.BusyError:
        raise DatabaseBusy(f"{path}: database is locked (busy for {BUSY_TIMEOUT_MS} ms)") from None
    except apsw.NotADBError:
        raise DatabaseError(f"{path}: file is not a SQLite database") from None
    except apsw.CorruptError:
        raise DatabaseError(f"{path}: database disk image is malformed") from None
    except apsw.FullError:
        raise DatabaseError(f"{path}: disk full while writing the database") from None
    except apsw.Error as exc:
        raise DatabaseError(f"{path}: {exc}") from None
    except UnicodeDecodeError as exc:  # a read that did not go through select_rows
        raise DatabaseError(
            f"{path}: a text value is not valid UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None


class InvalidText(str):
    """Text that SQLite held but that was not valid UTF-8: each invalid byte is now U+FFFD."""


def _decoded(value: Any, is_text: Any) -> Any:
    if not (is_text and isinstance(value, bytes)):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return InvalidText(value.decode("utf-8", errors="replace"))


def select_rows(
    conn: apsw.Connection, columns: Sequence[str], rest: str, params: Any = None
) -> list[tuple[Any, ...]]:
    """`SELECT <columns, quoted> <rest>`: every row, without failing on invalid UTF-8.

    SQLite stores whatever bytes an app hands it as TEXT; APSW refuses to decode text that is
    not UTF-8 (UnicodeDecodeError), which would fail the whole read. Then the read is done again
    with such columns read as bytes, and each invalid byte becomes U+FFFD (an InvalidText)."""
    quoted = [quote_ident(c) for c in columns]
    try:
        return conn.execute(f"SELECT {', '.join(quoted)} {rest}", params).fetchall()
    except UnicodeDecodeError:
        pass
    pairs = ", ".join(
        f"CASE typeof({q}) WHEN 'text' THEN CAST({q} AS BLOB) ELSE {q} END, typeof({q}) = 'text'"
        for q in quoted
    )
    return [
        tuple(_decoded(row[i], row[i + 1]) for i in range(0, len(row), 2))
        for row in conn.execute(f"SELECT {pairs} {rest}", params).fetchall()
    ]


def scalar(conn: apsw.Connection, sql: str, params: Any = None) -> Any:
    """The first column of the first row (None when there is no row)."""
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


class Database:
    """One APSW connection to the app's SQLite file. Never creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise DatabaseError(f"{path}: database file does not exist")
        with sqlite_errors(path):
            self.conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
            self.conn.set_busy_timeout(BUSY_TIMEOUT_MS)
            self.conn.execute("PRAGMA schema_version").fetchall()

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[apsw.Connection]:
        """One read transaction: every SELECT inside sees the same snapshot. Keep it short."""
        with sqlite_errors(self.path):
            self.conn.execute("BEGIN DEFERRED")
            try:
                yield self.conn
            finally:
                self.conn.execute("COMMIT")

    @contextlib.contextmanager
    def write(self) -> Iterator[apsw.Connection]:
        """One short write transaction (BEGIN IMMEDIATE); never hold it across HTTP.

        Whatever fails, COMMIT included, the transaction is rolled back, unless SQLite did that
        itself (SQLITE_FULL, IOERR: a second ROLLBACK would replace the real error). A COMMIT
        that fails with SQLITE_BUSY (rollback journal: an app reader keeps its SHARED lock past
        busy_timeout) leaves the transaction open, holding a lock that shuts the app out."""
        with sqlite_errors(self.path):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if not self.conn.get_autocommit():
                    with contextlib.suppress(apsw.Error):  # keep the error that brought us here
                        self.conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with sqlite_errors(self.path):
            return self.conn.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: Any = None) -> Any:
        with sqlite_errors(self.path):
            return scalar(self.conn, sql, params)

    def schema_version(self) -> int:
        """Moves when anyone changes the schema (ALTER TABLE, CREATE/DROP TRIGGER...)."""
        return int(self.scalar("PRAGMA schema_version"))

    def data_version(self) -> int:
        """Changes whenever another connection commits; cheap enough to poll."""
        with sqlite_errors(self.path):
            return int(scalar(self.conn, "PRAGMA data_version"))

    def table_exists(self, name: str) -> bool:
        rows = self.query(
            "SELECT type FROM sqlite_master WHERE name = ? AND type = 'table'", (name,)
        )
        return bool(rows)

    def table_info(self, name: str) -> TableInfo:
        """Columns, primary key and unique indexes of an existing table (ConfigError if absent)."""
        if not self.table_exists(name):
            raise ConfigError(f"table {name!r} does not exist in {self.path}")
        ident = quote_ident(name)
        columns = tuple(
            Column(name=col, declared_type=decl or "", not_null=bool(notnull), key_position=pk)
            for _cid, col, decl, notnull, _default, pk, hidden in self.query(
                f"PRAGMA table_xinfo({ident})"
            )
            if hidden in (0, 2, 3)
        )
        key = tuple(c.name for c in sorted(columns, key=lambda c: c.key_position) if c.key_position)
        unique: list[tuple[str, ...]] = []
        collations: list[tuple[str, ...]] = []
        for _seq, index_name, is_unique, origin, _partial in self.query(
            f"PRAGMA index_list({ident})"
        ):
            if not is_unique or origin == "pk":
                continue
            index_columns = [
                (row[2], row[4])  # name (None for an expression), collation
                for row in self.query(f"PRAGMA index_xinfo({quote_ident(index_name)})")
                if row[5]  # key columns only, not the rowid / primary key appended to every index
            ]
            if index_columns and all(col is not None for col, _ in index_columns):
                unique.append(tuple(col for col, _ in index_columns))
                collations.append(tuple(coll or "BINARY" for _, coll in index_columns))
        return TableInfo(
            name=name,
            columns=columns,
            key=key,
            unique_indexes=tuple(unique),
            unique_collations=tuple(collations),
        )


class ProcessorLock:
    """Only one process may turn log rows into documents at a time (two would race on order).

    An flock on `<database>.cdc-lock`: the kernel releases it when the holder dies, even by kill -9.
    """

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".cdc-lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
