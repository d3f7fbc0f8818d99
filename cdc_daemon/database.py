"""The SQLite side: opening the app's file with APSW, short transactions, table introspection."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import apsw

from cdc_daemon import turns
from cdc_daemon.errors import ConfigError, DatabaseBusy, DatabaseError
from cdc_daemon.permissions import database_access_problem, folder_not_writable, not_writable

BUSY_TIMEOUT_MS = 5000
# SQLite's own busy_timeout waits (sqliteDefaultBusyCallback), milliseconds; then 100 each.
BUSY_DELAYS_MS = (1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100)


DATABASE_SIDE_FILES = ("-wal", "-shm", "-journal", ".cdc-lock")  # never databases themselves


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
    # The collation of each primary key column, in key order, as the key's index compares them
    # (e.g. `email TEXT PRIMARY KEY COLLATE NOCASE`); () means all BINARY.
    key_collations: tuple[str, ...] = ()

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
    except (apsw.ReadOnlyError, apsw.CantOpenError, apsw.IOError) as exc:
        # Most often a file or folder this user may not write (run once as root, say).
        raise DatabaseError(database_access_problem(path) or f"{path}: {exc}") from None
    except apsw.Error as exc:
        raise DatabaseError(f"{path}: {exc}") from None
    except UnicodeDecodeError as exc:  # a read that did not go through select_rows
        raise DatabaseError(
            f"{path}: a text value is not valid UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None


class InvalidText(str):
    """Text that SQLite held but that was not valid UTF-8: each invalid byte is now U+FFFD.

    `raw` keeps the original bytes, so the value can be bound back as the very same TEXT
    (`bind`): the replaced text would name another value (a keyset cursor would never move on)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> InvalidText:
        text = super().__new__(cls, raw.decode("utf-8", errors="replace"))
        text.raw = raw
        return text

    # Equal only to the same bytes: 6BFF and 6BFE (and the valid text 'k\ufffd') all read as
    # 'k\ufffd', and are three different keys.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, InvalidText) and self.raw == other.raw

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((InvalidText, self.raw))


def bind(value: Any) -> tuple[str, Any]:
    """(placeholder, parameter) that gives SQLite back exactly `value`: an InvalidText is bound
    as its original bytes, cast to TEXT (the same value, byte for byte)."""
    if isinstance(value, InvalidText):
        return "CAST(? AS TEXT)", value.raw
    return "?", value


def _decoded(value: Any, is_text: Any) -> Any:
    if not (is_text and isinstance(value, bytes)):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return InvalidText(value)


def select_rows(
    conn: apsw.Connection, columns: Sequence[str], rest: str, params: Any = None
) -> list[tuple[Any, ...]]:
    """`SELECT <columns, quoted> <rest>`: every row, without failing on invalid UTF-8.

    SQLite stores whatever bytes an app hands it as TEXT; APSW refuses to decode text that is
    not UTF-8 (UnicodeDecodeError), which would fail the whole read. Then the read is done again
    with such columns read as bytes, and each invalid byte becomes U+FFFD (an InvalidText, which
    keeps the original bytes)."""
    return select_values(conn, [quote_ident(c) for c in columns], rest, params)


def select_values(
    conn: apsw.Connection, expressions: Sequence[str], rest: str, params: Any = None
) -> list[tuple[Any, ...]]:
    """select_rows for SQL expressions (a quoted column, or `(<expression>)`). On the rare
    second read, for invalid UTF-8, each expression is evaluated up to three times per row."""
    try:
        return conn.execute(f"SELECT {', '.join(expressions)} {rest}", params).fetchall()
    except UnicodeDecodeError:
        pass
    pairs = ", ".join(
        f"CASE typeof({q}) WHEN 'text' THEN CAST({q} AS BLOB) ELSE {q} END, typeof({q}) = 'text'"
        for q in expressions
    )
    return [
        tuple(_decoded(row[i], row[i + 1]) for i in range(0, len(row), 2))
        for row in conn.execute(f"SELECT {pairs} {rest}", params).fetchall()
    ]


def scalar(conn: apsw.Connection, sql: str, params: Any = None) -> Any:
    """The first column of the first row (None when there is no row)."""
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def wait_while_busy(tries: int) -> bool:
    """SQLite's busy_timeout (BUSY_TIMEOUT_MS), as a busy handler: a fleet worker waiting for
    an app's lock gives its turn up meanwhile (turns.py). False: give up, SQLITE_BUSY."""
    waited = sum(BUSY_DELAYS_MS[:tries]) + max(0, tries - len(BUSY_DELAYS_MS)) * 100
    delay = min(BUSY_DELAYS_MS[min(tries, len(BUSY_DELAYS_MS) - 1)], BUSY_TIMEOUT_MS - waited)
    if delay <= 0:
        return False
    with turns.waiting():
        time.sleep(delay / 1000)
    return True


def file_identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file `path` names now; None when there is none."""
    try:
        stat = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stat.st_dev, stat.st_ino


SHARED_FIRST, SHARED_SIZE = 0x40000002, 510  # SQLite's unix VFS: the SHARED lock's byte range


def opened_elsewhere(path: Path) -> bool:
    """True when another process holds SQLite's SHARED lock on `path`: in WAL mode a connection
    holds it from its first read until it closes. Only asks (F_GETLK). Call it before this
    process opens `path` with SQLite: closing any descriptor of a file drops the process's own
    POSIX locks on it."""
    if not sys.platform.startswith("linux"):
        return True  # struct flock's layout is Linux's; elsewhere assume the worst
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, SHARED_FIRST, SHARED_SIZE, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        lock_type: int = struct.unpack("hhqqi", answer)[0]
        return lock_type != fcntl.F_UNLCK
    finally:
        os.close(fd)


class Database:
    """One APSW connection to the app's SQLite file. Never creates the file."""

    # Every connection of this process (the loop's, metrics', admin requests'): a replaced file's
    # are closed together (release_replaced), since POSIX locks are the process's, not theirs.
    _open: weakref.WeakSet[Database] = weakref.WeakSet()
    _open_lock = threading.Lock()  # admin requests open connections on their own threads
    # Prepared statements each connection keeps (APSW's default: 100). A `databases:` daemon
    # keeps fewer (wiring.serve_fleet: fleet_member.MEMBER_STATEMENTS), for a thousand of them.
    statement_cache = 100

    @staticmethod
    def configure_sqlite(lookaside: bool = True) -> bool:
        """SQLite for this process: no memory statistics (they take a global mutex at every
        allocation, ~7% of a catch-up's CPU), and with `lookaside` False no lookaside memory
        per connection (~40 KB of RSS each; a `databases:` daemon holds a thousand; measured:
        ~3% more CPU). SQLite takes these only between a shutdown and its next initialization,
        so only while no connection is open in this process: False when one was (nothing
        changed). Called at start-up (wiring.serve*), before any other thread runs."""
        if apsw.connections():
            return False
        apsw.shutdown()
        apsw.config(apsw.SQLITE_CONFIG_MEMSTATUS, 0)
        if not lookaside:
            apsw.config(apsw.SQLITE_CONFIG_LOOKASIDE, 0, 0)
        apsw.initialize()
        return True

    def __init__(self, path: Path) -> None:
        self.path = path
        # Taken before opening: if the file is replaced in between, replaced() says so at once
        # (a reopen too many) rather than never.
        try:
            self.identity = file_identity(path)
        except PermissionError as exc:  # a folder on the way this user may not enter
            raise DatabaseError(database_access_problem(path) or f"{path}: {exc}") from None
        self.released = False  # closed by release_replaced: it names no file any more
        if self.identity is None:
            raise DatabaseError(f"{path}: database file does not exist")
        with sqlite_errors(path):
            self.conn = apsw.Connection(
                str(path),
                flags=apsw.SQLITE_OPEN_READWRITE,
                statementcachesize=Database.statement_cache,
            )
            self.conn.set_busy_handler(wait_while_busy)
            self.conn.execute("PRAGMA schema_version").fetchall()
        with Database._open_lock:
            Database._open.add(self)

    def close(self) -> None:
        self.conn.close()

    def require_writable(self) -> None:
        """DatabaseError naming the file and the fix when this process could not write the
        database (SQLite opens a file it may only read read-only, and says so at the first
        write): checked where a command starts that writes, rather than failing every retry."""
        problem = database_access_problem(self.path)
        if problem is None and self.conn.readonly("main"):
            problem = not_writable(self.path, "the database file")
        if problem is not None:
            raise DatabaseError(problem)

    def replaced(self) -> bool:
        """True when the path no longer names the file this connection has open: a backup
        restored with `mv` (or `cp` to a new file, then `mv`), or the file deleted. One stat."""
        return self.released or file_identity(self.path) != self.identity

    def release_replaced(self) -> str | None:
        """Let go of the file that was replaced (see replaced()) before the new one is opened:
        empty its WAL, then close every connection this process has to it, this one included.

        The -wal and -shm files are found by name, so after `mv backup.db app.db` the new file
        and the old connections share them. The first connection to the new file would replay
        the old file's latest pages from that WAL (the restore silently undone): the app's last
        connection would have emptied it on close, but ours kept it alive, and SQLite's close
        skips that for a file that moved. So it is emptied here, unless another process has the
        new file open already (its pages are in that WAL now): then a problem is returned. And
        the old connections must be gone before the new file is opened: closing the -shm of one
        drops the shm locks of all (POSIX locks are per process), and the app would then reset
        the -shm under the new connection (SIGBUS). DatabaseBusy while the old file is in use."""
        if self.released:
            return None
        with sqlite_errors(self.path):
            problem = self._empty_replaced_wal()
            with Database._open_lock:
                others = list(Database._open)
            for other in others:
                if other is not self and other.identity == self.identity:
                    try:
                        other.conn.close()
                    except apsw.ThreadingViolationError:  # a metrics scrape, right now
                        raise DatabaseBusy(f"{self.path}: the replaced file is in use") from None
                    other.released = True
            self.conn.close()  # last: a retry after DatabaseBusy still has it
            self.released = True
        return problem

    def _empty_replaced_wal(self) -> str | None:
        if str(scalar(self.conn, "PRAGMA journal_mode")).lower() != "wal":
            return None  # rollback journal: nothing is shared by name between transactions
        if opened_elsewhere(self.path):
            return (
                f"{self.path} was opened by another process before cdc-daemon let go of the"
                " replaced file: both used the same -wal file, so the restored database may show"
                " the replaced file's latest pages; check it, and restore again with the app"
                " stopped"
            )
        if scalar(self.conn, "PRAGMA wal_checkpoint(TRUNCATE)"):
            raise DatabaseBusy(
                f"{self.path}: the replaced file's WAL could not be emptied: is a process still"
                " using the old file?"
            )
        return None

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
                if self.replaced():  # never write a replaced file: it shares -wal/-journal names
                    raise DatabaseError(f"{self.path}: the database file was replaced; not writing")
                yield self.conn
                # Without the turn (turns.py): a COMMIT may wait for the app's readers (a
                # rollback journal) or fsync, and its locks must go as soon as it is done.
                with turns.waiting():
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
        key_collations: dict[str, str] = {}
        for _seq, index_name, is_unique, origin, _partial in self.query(
            f"PRAGMA index_list({ident})"
        ):
            if not is_unique:
                continue
            index_columns = self._index_key_columns(index_name)
            if origin == "pk":  # no index at all for an INTEGER PRIMARY KEY (the rowid)
                key_collations = {col: coll for col, coll in index_columns if col is not None}
            elif index_columns and all(col is not None for col, _ in index_columns):
                unique.append(tuple(str(col) for col, _ in index_columns))
                collations.append(tuple(coll for _, coll in index_columns))
        return TableInfo(
            name=name,
            columns=columns,
            key=key,
            unique_indexes=tuple(unique),
            unique_collations=tuple(collations),
            key_collations=tuple(key_collations.get(c, "BINARY") for c in key),
        )

    def _index_key_columns(self, index: str) -> list[tuple[str | None, str]]:
        """(column name, None for an expression; collation) of an index's key columns, without
        the rowid / primary key / other columns appended to every index."""
        return [
            (row[2], row[4] or "BINARY")
            for row in self.query(f"PRAGMA index_xinfo({quote_ident(index)})")
            if row[5]
        ]


class ProcessorLock:
    """Only one process may turn log rows into documents at a time (two would race on order).

    An flock on `<database>.cdc-lock`, beside the database's real file (symlinks resolved, so
    every path to one database meets the same lock): the kernel releases it when the holder dies,
    even by kill -9. The file holds the holder's pid. It is created with the database file's
    permission bits (and, when root creates it, its owner and group): whoever may write the
    database may take the lock, so a first run as root doesn't shut the service's user out.

    A lock file can be deleted under its holder (`rm`), and a newcomer would then lock a new
    file. So the holder also takes an open-file-description lock on one byte of the database
    file itself, far beyond any byte SQLite locks: the database can't be deleted while in use.
    Where that lock is unsupported (not Linux), the lock file alone guards.
    """

    def __init__(self, database: Path) -> None:
        self.database = database
        real = Path(os.path.realpath(database))
        self.path = real.with_name(real.name + ".cdc-lock")
        self._fd: int | None = None
        self._database_fd: int | None = None  # holding the database-side lock through it

    def acquire(self) -> bool:
        for _ in range(3):  # the file was removed or replaced between open and flock: again
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            if not self._is_at_path(fd):
                os.close(fd)
                continue
            database_fd = _lock_database(self.database)
            if database_fd is False:  # a holder whose lock file was deleted
                os.close(fd)
                return False
            token = _token(_read(fd))  # kept across holders (ResyncState)
            os.ftruncate(fd, 0)
            os.pwrite(
                fd, f"{os.getpid()}\n".encode() + (f"file {token}\n".encode() if token else b""), 0
            )
            self._fd, self._database_fd = fd, database_fd
            return True
        raise DatabaseError(f"{self.path}: keeps being replaced; is another uninstall running?")

    def busy(self) -> bool:
        """Whether another process holds the lock (never creates the lock file)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            pass
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            finally:
                os.close(fd)  # closing releases a lock taken here
        return _database_locked(self.database)

    def _is_at_path(self, fd: int) -> bool:
        """Whether the locked file is still the one at the lock's path (not removed or replaced
        between open and flock: that lock would guard nothing)."""
        try:
            at_path = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)

    def file_token(self) -> str | None:
        """The token of the database file last synced (sweep.ResyncState), kept here because a
        backup restored over the database can't carry it: it is not in the database file."""
        if self._fd is not None:  # the holder reads its own file, even if removed meanwhile
            return _token(_read(self._fd))
        try:
            return _token(self.path.read_bytes())
        except OSError:
            return None

    def set_file_token(self, token: str) -> None:
        """Record the token (only the lock's holder writes the file)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\nfile {token}\n".encode(), 0)

    def _open(self) -> int:
        """The lock file, opened for writing; created like the database file if missing.
        DatabaseError naming the file and the fix when this user may not."""
        for _ in range(3):  # removed (uninstall) between the two opens: create it, again
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                try:
                    fd = os.open(self.path, os.O_RDWR)
                except FileNotFoundError:
                    continue
                except PermissionError:
                    raise DatabaseError(not_writable(self.path, "the lock file")) from None
                self._own_like_database(fd)
                return fd
            except PermissionError:
                raise DatabaseError(folder_not_writable(self.path.parent, self.database)) from None
            except OSError as exc:  # a read-only file system, say
                raise DatabaseError(f"{self.path}: cannot create the lock file: {exc}") from None
            with contextlib.suppress(OSError):  # best effort: the lock works either way
                os.fchmod(fd, stat.S_IMODE(os.stat(self.database).st_mode) & 0o666)
            self._own_like_database(fd)
            return fd
        raise DatabaseError(f"{self.path}: keeps disappearing; is another uninstall running?")

    def _own_like_database(self, fd: int) -> None:
        """As root, give the lock file the database file's owner and group (also one an
        earlier version left owned by root)."""
        if os.geteuid() != 0:
            return
        with contextlib.suppress(OSError):  # e.g. root squashed on NFS: leave it as it is
            st = os.stat(self.database)
            os.fchown(fd, st.st_uid, st.st_gid)

    def holder(self) -> str:
        """The holder's pid: the file's first line (a `file` token line may follow)."""
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except OSError:
            return "unknown"
        return lines[0].strip() if lines and lines[0].strip() else "unknown"

    def remove(self) -> bool:
        """Delete the lock file while holding the lock (uninstall). True when there was one.
        Only our own file: a newcomer that opened it before finds it gone after its flock
        (_is_at_path) and makes a new one; the database-side lock covers the moment between."""
        if self._fd is None or not self._is_at_path(self._fd):
            return False
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except PermissionError:
            raise DatabaseError(folder_not_writable(self.path.parent, self.database)) from None
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._database_fd is not None:
            _unlock_database(self._database_fd)
            self._database_fd = None


# The database-side lock: one byte far beyond SQLite's lock bytes (around 1 GiB), as an
# open-file-description lock (F_OFD_*), which other descriptors' closes don't release.
_DATABASE_LOCK_BYTE = 1 << 62
# One descriptor per database file, kept until exit: closing any descriptor of the database
# would drop the POSIX locks this process's SQLite connections hold on it.
_DATABASE_FDS: dict[tuple[int, int], int] = {}
_DATABASE_FDS_LOCK = threading.Lock()


def _read(fd: int) -> bytes:
    return os.pread(fd, 65536, 0)


def _token(content: bytes) -> str | None:
    lines = content.decode(errors="replace").splitlines()
    return next((line[5:] for line in lines if line.startswith("file ")), None)


def forget_database_file(identity: tuple[int, int] | None) -> None:
    """A database file this process is done with (deleted, no connection left open to it):
    close the descriptor kept for its lock, so the deleted file's space is freed."""
    with _DATABASE_FDS_LOCK:
        fd = _DATABASE_FDS.pop(identity, None) if identity is not None else None
    if fd is not None:
        os.close(fd)


def _database_descriptor(database: Path) -> int | None:
    """This process's descriptor of the database file; None if it can't be opened (missing)."""
    try:
        st = os.stat(database)
    except OSError:
        return None
    with _DATABASE_FDS_LOCK:
        if (st.st_dev, st.st_ino) not in _DATABASE_FDS:
            try:
                fd = os.open(database, os.O_RDWR)
            except PermissionError:  # a read lock then: still in the way of a holder's
                try:
                    fd = os.open(database, os.O_RDONLY)
                except OSError:
                    return None
            except OSError:
                return None
            st = os.fstat(fd)  # replaced meanwhile: file it under what was opened
            _DATABASE_FDS.setdefault((st.st_dev, st.st_ino), fd)
        return _DATABASE_FDS[(st.st_dev, st.st_ino)]


def _database_lock_request(fd: int, kind: int) -> bytes:
    if kind == fcntl.F_WRLCK and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
        kind = fcntl.F_RDLCK
    # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, _DATABASE_LOCK_BYTE, 1, 0)


def _lock_database(database: Path) -> int | Literal[False] | None:
    """Take the database-side lock: its descriptor; None when it can't be had here (no such
    lock on this system or file system: the lock file alone guards); False when held."""
    fd = _database_descriptor(database)
    if fd is None or not hasattr(fcntl, "F_OFD_SETLK"):
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _database_lock_request(fd, fcntl.F_WRLCK))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None
    return fd


def _unlock_database(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _database_lock_request(fd, fcntl.F_UNLCK))


def _database_locked(database: Path) -> bool:
    """Whether another process holds the database-side lock."""
    fd = _database_descriptor(database)
    if fd is None or not hasattr(fcntl, "F_OFD_GETLK"):
        return False
    request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, _DATABASE_LOCK_BYTE, 1, 0)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, request)
    except OSError:
        return False
    return bool(struct.unpack("hhqqi4x", answer)[0] != fcntl.F_UNLCK)
