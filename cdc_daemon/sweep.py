"""A replaced database file (a backup restored with `mv`): bring each collection to its truth.

The new file's rows are sent again by a backfill of every table; the sweep then removes every
document that no row of the new file produces (the replaced file's rows). What is still owed
lives in the `<log>_state` table (`sweep:<table>`), so a kill -9 in the middle finishes it after
the restart; `database-file` remembers the file last synced, so a file replaced while the daemon
was stopped is noticed at start.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from cdc_daemon.changelog import ChangeLog
from cdc_daemon.database import Database, ProcessorLock
from cdc_daemon.documents import row_is_live
from cdc_daemon.log_schema import DATABASE_FILE, SWEEP_PREFIX, LogTables, Op, StateStore
from cdc_daemon.row_keys import Key
from cdc_daemon.schema import TableMapping
from cdc_daemon.sink import Sink
from cdc_daemon.table_rows import rows_by_keys

START_BACKFILL = "backfill"  # a table's first phase: its backfill is still to be started
AFTER_BACKFILL = "sweep"  # then: sweep once its backfill has logged every row
PAGE_SIZE = 500  # document ids looked up per read transaction
log = structlog.get_logger("cdc_daemon.sweep")


class ResyncState:
    """What a replaced file still owes its collections: `sweep:<table>` → phase."""

    def __init__(self, db: Database, names: LogTables, lock: ProcessorLock | None = None) -> None:
        self.db = db
        self._state = StateStore(db, names)
        self.lock = lock  # the daemon's: the token's copy a backup can't carry

    def _file(self) -> str:
        # The inode alone: a device number can change across reboots (NFS, some volumes),
        # which would resync everything for nothing.
        return str(self.db.identity[1]) if self.db.identity else ""

    def file_changed(self) -> bool:
        """True when the file open is not the one last synced (restored while stopped): another
        inode, or the same inode (a file system reuses a freed one) with another token than the
        lock file's. A backup carries the token recorded when it was taken; each file detected
        as new gets a new token, in the database and in the lock file. The first time (nothing
        recorded yet) this file is recorded, and it says False."""
        recorded = self._state.get(DATABASE_FILE)
        if recorded is None:
            self._record(self._tokened())
            return False
        inode, _, token = recorded.partition(" ")
        kept = self.lock.file_token() if self.lock is not None else None
        return inode != self._file() or bool(token and kept and token != kept)

    def begin(self, tables: Iterable[str]) -> None:
        """Every table owes a backfill and then a sweep; this file is the one synced now. One
        transaction: a kill -9 before it leaves the old file recorded, so the restart resyncs."""
        value = self._tokened()
        with self.db.write() as conn:
            for table in tables:
                self._state.set(SWEEP_PREFIX + table, START_BACKFILL, conn)
            self._state.set(DATABASE_FILE, value, conn)
        self._keep_token(value)

    def rotate(self) -> None:
        """A new token for the same file (at start and at a clean stop): a backup taken before
        carries an older one, so restoring it in place, while the daemon is stopped, is seen."""
        if self.lock is not None:
            self._record(self._tokened())

    def _tokened(self) -> str:
        """`<inode> <token>`: a new token when this process holds the lock (it writes the lock
        file's copy), else the one recorded (a reload's resync, which doesn't change files)."""
        if self.lock is not None:
            return f"{self._file()} {secrets.token_hex(8)}"
        token = (self._state.get(DATABASE_FILE) or "").partition(" ")[2]
        return f"{self._file()} {token}".rstrip()

    def _record(self, value: str) -> None:
        self._state.set(DATABASE_FILE, value)
        self._keep_token(value)

    def _keep_token(self, value: str) -> None:
        token = value.partition(" ")[2]
        if self.lock is not None and token:
            self.lock.set_file_token(token)  # after the database: a crash between resyncs again

    def owed(self) -> dict[str, str]:
        return self._state.with_prefix(SWEEP_PREFIX)

    def set_phase(self, table: str, phase: str | None) -> None:
        """Move a table's resync on; None: it is done."""
        if phase is None:
            self._state.delete(SWEEP_PREFIX + table)
        else:
            self._state.set(SWEEP_PREFIX + table, phase)


def owed_resyncs(db: Database, names: LogTables) -> dict[str, str]:
    """Tables whose collection still owes a resync after a file replacement → its phase."""
    return ResyncState(db, names).owed()


@dataclass
class SweepResult:
    documents: int = 0  # documents of this table looked at
    queued: int = 0  # without a row: logged, so the sync path deletes them
    deleted: int = 0  # ids no row can produce: deleted directly


def candidate_keys(mapping: TableMapping, doc_id: str) -> list[Key]:
    """Keys whose row might produce `doc_id`. For a one-column key also the id's text and the
    blob its hex spells: a column without a declared type holds any of them, and `123` may be
    the text '123' as well as the integer."""
    keys: list[Key] = []
    parsed = mapping.key_of(doc_id)
    if parsed is not None:
        keys.append(parsed)
    if len(mapping.key) == 1 and doc_id.startswith(mapping.id_prefix):
        text = doc_id[len(mapping.id_prefix) :]
        keys.append((text,))
        with contextlib.suppress(ValueError):  # not hex
            keys.append((bytes.fromhex(text),))
    return keys


class Sweep:
    """Removes from a collection the documents of one table that no live row produces.

    Streams the collection's documents (ids with the table's id_prefix; others are another
    host's) and looks their rows up a page at a time, each page in one short read. An id whose
    key has no live row is logged (Op.REPAIR), so the normal sync path deletes it, or sends the
    row if one exists again by then: race-free. An id no row can produce is deleted directly;
    nothing the app writes can create it, and the sweep runs on the loop thread, so no batch is
    in flight meanwhile. Memory: one page."""

    def __init__(
        self,
        db: Database,
        changelog: ChangeLog,
        sink: Sink,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.db = db
        self.changelog = changelog
        self.sink = sink
        self.page_size = page_size

    def run(
        self,
        mapping: TableMapping,
        collection: str,
        stop: threading.Event,
        beat: Callable[[], None] = lambda: None,
    ) -> SweepResult | None:
        """Sweep `collection` (where `mapping`'s documents go); None when `stop` came first (it
        starts again from the beginning next time: harmless). `beat` is called per page."""
        result = SweepResult()
        page: list[str] = []
        for document in self.sink.export(collection):
            doc_id = str(document.get("id", ""))
            if not doc_id.startswith(mapping.id_prefix):
                continue
            page.append(doc_id)
            if len(page) >= self.page_size:
                self._page(mapping, collection, page, result)
                page = []
                beat()
                if stop.is_set():
                    return None
        if page:
            self._page(mapping, collection, page, result)
        return result

    def _page(
        self, mapping: TableMapping, collection: str, ids: list[str], result: SweepResult
    ) -> None:
        keys = list(dict.fromkeys(k for doc_id in ids for k in candidate_keys(mapping, doc_id)))
        with self.db.read() as conn:
            rows = rows_by_keys(conn, mapping, keys) if keys else {}
        # Compared by id, not by key: a row found through a looser key ('007' finds 7 in an
        # INTEGER column) produces another id.
        produced = {mapping.doc_id(key) for key, row in rows.items() if row_is_live(mapping, row)}
        queued: list[Key] = []
        direct: list[str] = []
        for doc_id in ids:
            if doc_id in produced:
                continue
            key = mapping.key_of(doc_id)
            if key is None:
                direct.append(doc_id)
            else:
                queued.append(key)
        if queued:
            self.changelog.enqueue_keys(mapping.table, queued, Op.REPAIR)
        result.documents += len(ids)
        result.queued += len(queued)
        result.deleted += self._delete(collection, direct)

    def _delete(self, collection: str, ids: list[str]) -> int:
        """Delete ids no row produces; one that fails is logged and left (verify: extra)."""
        if not ids:
            return 0
        deleted = 0
        for doc_id, outcome in zip(ids, self.sink.delete(collection, ids), strict=True):
            if outcome.ok:
                deleted += 1
            else:
                log.warning(
                    "document not removed", collection=collection, id=doc_id, error=outcome.error
                )
        return deleted
