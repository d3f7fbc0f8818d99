"""One sync iteration: read a batch and its rows in one snapshot → build → send → acknowledge."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw
import structlog

from cdc_daemon.changelog import ChangeLog, KeyFailure, LogEntry
from cdc_daemon.database import Database, quote_ident, select_rows
from cdc_daemon.document_sql import document_sql, fetch_documents
from cdc_daemon.documents import build_document, row_is_live, row_key
from cdc_daemon.errors import CdcError, CollectionMissing, DocumentError, TargetError
from cdc_daemon.evolution import CollectionManager, Target
from cdc_daemon.keys import Key, log_key_to_key
from cdc_daemon.schema import TableMapping
from cdc_daemon.sink import DocResult, TypesenseSink, encode_document

KEYS_PER_SELECT = 500
log = structlog.get_logger("cdc_daemon.sync")


@dataclass
class BatchReport:
    entries: int = 0
    keys: int = 0
    upserted: dict[str, int] = field(default_factory=dict)  # per table
    deleted: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    dead_by_table: dict[str, int] = field(default_factory=dict)
    first_seq: int | None = None
    last_seq: int | None = None
    duration: float = 0.0
    errors: list[str] = field(default_factory=list)


@dataclass
class _Change:
    """All log entries of one key in this batch, and what to do with it."""

    table: str
    log_key: Any
    entries: list[LogEntry]
    key: Key | None = None
    doc_id: str = ""
    line: str | None = None  # the document as JSON (built while reading): upsert; None: delete
    error: str | None = None


@dataclass
class _Batch:
    """The changes read in one snapshot, and the log's deleted-by-others count in it."""

    changes: list[_Change]
    deleted_by_others: int


def fetch_rows(
    conn: apsw.Connection, mapping: TableMapping, keys: Sequence[Key]
) -> dict[Key, tuple[Any, ...]]:
    """The current rows for `keys` that exist and match `where`, keyed by their primary key."""
    key_cols = ", ".join(quote_ident(c) for c in mapping.key)
    width = len(mapping.key)
    where = f"({mapping.where}) AND " if mapping.where else ""
    found: dict[Key, tuple[Any, ...]] = {}
    for start in range(0, len(keys), KEYS_PER_SELECT):
        chunk = keys[start : start + KEYS_PER_SELECT]
        if width == 1:
            match = f"{key_cols} IN ({', '.join('?' * len(chunk))})"
            params: list[Any] = [k[0] for k in chunk]
        else:
            row = "(" + ", ".join("?" * width) + ")"
            match = f"({key_cols}) IN (VALUES {', '.join([row] * len(chunk))})"
            params = [v for k in chunk for v in k]
        rest = f"FROM {quote_ident(mapping.table)} WHERE {where}{match}"
        for row_values in select_rows(conn, mapping.columns, rest, params):  # invalid UTF-8: U+FFFD
            found[row_key(mapping, row_values)] = row_values
    return found


class Syncer:
    """Turns log entries into Typesense writes. Call `sync_once()` from a loop or a test."""

    def __init__(
        self,
        db: Database,
        changelog: ChangeLog,
        sink: TypesenseSink,
        mappings: dict[str, TableMapping],
        batch_size: int,
        collections: CollectionManager,
    ) -> None:
        self.db = db
        self.changelog = changelog
        self.sink = sink
        self.mappings = mappings
        self.batch_size = batch_size
        self.collections = collections
        self.targets: dict[str, Target] = {}
        self.resend_delay = 30.0  # after a timeout; the daemon sets it from typesense.timeout
        self.read_ahead = True  # read the next batch while a full one is being sent
        self._collections_ready = False
        self._next: _Batch | None = None  # read ahead, sent by the next sync_once
        self._document_sql = {table: document_sql(m) for table, m in mappings.items()}

    def ensure_collections(self) -> None:
        """Create, extend or start rebuilding collections; SchemaMismatch for a foreign one."""
        self.targets = self.collections.ensure(self.mappings)
        self._collections_ready = True

    def step_collections(self) -> bool:
        """Between batches: feed backfills and finish rebuilds. True when it did some work."""
        if not self._collections_ready:
            self.ensure_collections()
        try:
            return self.collections.step(self.mappings, self.targets)
        except CollectionMissing:
            self._collections_ready = False  # look again before the next batch
            raise

    def sync_once(self) -> BatchReport:
        started = time.monotonic()
        if not self._collections_ready:
            self.ensure_collections()
        report = BatchReport()
        batch, self._next = self._next or self._read(), None
        changes = batch.changes
        if not changes:
            return report
        entries = [e for c in changes for e in c.entries]
        report.entries, report.keys = len(entries), len(changes)
        report.first_seq = min(e.seq for e in entries)
        report.last_seq = max(e.seq for e in entries)
        uncertain = self.sink.uncertain_writes
        ahead = None
        try:
            if self.read_ahead and report.entries >= self.batch_size:  # more is likely waiting
                results, ahead = self._send_reading_ahead(changes, report, report.last_seq)
            else:
                results = self._send(changes, report)
        except CollectionMissing:
            self._collections_ready = False
            raise
        finally:
            # A write that timed out or lost its connection may be applied later, even when
            # another node then took the batch (failover): re-send these keys after a delay.
            if self.sink.uncertain_writes != uncertain:
                self._resend_later(changes)
        acked: list[int] = []
        succeeded: list[tuple[str, Any]] = []
        failures: list[KeyFailure] = []
        for change, result in zip(changes, results, strict=True):
            if result.ok:
                acked.extend(e.seq for e in change.entries)
                succeeded.append((change.table, change.log_key))
            else:
                failures.append(
                    KeyFailure(
                        table=change.table,
                        log_key=change.log_key,
                        entries=tuple(change.entries),
                        error=result.error or "failed",
                        retryable=result.retryable,
                    )
                )
        dead = self.changelog.commit(acked, succeeded, failures, batch.deleted_by_others)
        self._next = ahead  # only once this batch is acknowledged: on any failure it is dropped
        report.failed = len(failures)
        for failure in dead:
            report.dead_by_table[failure.table] = report.dead_by_table.get(failure.table, 0) + 1
        report.errors = [f"{f.table} {f.log_key!r}: {f.error}" for f in failures[:5]]
        report.duration = time.monotonic() - started
        return report

    def _send_reading_ahead(
        self, changes: list[_Change], report: BatchReport, after: int
    ) -> tuple[list[DocResult], _Batch | None]:
        """Send this batch while a helper thread reads the next one (the due entries after seq
        `after`, and their rows, in a snapshot of its own) and builds its documents.

        Safe because the batch read ahead is sent only after this one was acknowledged (imports
        stay sequential: per-key order holds, a later snapshot's document is sent later), and is
        dropped when this one fails. The helper is joined before this returns, so the database
        connection is never used by two threads at once; HTTP stays on this (the loop's) thread.
        """
        ahead: list[_Batch] = []

        def read() -> None:
            try:
                ahead.append(self._read(after))
            except CdcError as exc:  # not fatal: the next sync_once reads again
                log.debug("read-ahead failed", error=str(exc))

        reader = threading.Thread(target=read, name="cdc-read-ahead", daemon=True)
        reader.start()
        try:
            results = self._send(changes, report)
        finally:
            reader.join()
        return results, (ahead[0] if ahead else None)

    def _read(self, after: int = 0) -> _Batch:
        """The due log entries (after seq `after`) and the rows they point at, in one read
        transaction."""
        with self.db.read() as conn:
            entries = self.changelog.read_batch(conn, self.batch_size, time.time(), after)
            deleted_by_others = self.changelog.deleted_by_others(conn) if entries else 0
            changes: dict[tuple[str, Any], _Change] = {}
            for entry in entries:
                ident = (entry.table, entry.log_key)
                if ident not in changes:
                    changes[ident] = _Change(entry.table, entry.log_key, [])
                changes[ident].entries.append(entry)
            by_table: dict[str, list[_Change]] = {}
            for change in changes.values():
                by_table.setdefault(change.table, []).append(change)
            for table, table_changes in by_table.items():
                self._resolve(conn, table, table_changes)
        return _Batch(list(changes.values()), deleted_by_others)

    def _resolve(self, conn: apsw.Connection, table: str, changes: list[_Change]) -> None:
        """Attach to each change its current document (upsert) or None (delete), or an error."""
        mapping = self.mappings.get(table)
        if mapping is None:
            for change in changes:
                change.error = f"table {table!r} is not configured"
            return
        for change in changes:
            try:
                change.key = log_key_to_key(change.log_key, len(mapping.key))
                change.doc_id = mapping.doc_id(change.key)
            except (ValueError, TypeError) as exc:
                change.error = f"unreadable key {change.log_key!r}: {exc}"
        keys = [c.key for c in changes if c.key is not None]
        sql = self._document_sql.get(table)
        built = fetch_documents(conn, mapping, sql, keys, KEYS_PER_SELECT) if sql else None
        # Rows whose documents SQLite did not build (all of them, without a fast path).
        slow = keys if built is None else [key for key, line in built.items() if line is None]
        rows = fetch_rows(conn, mapping, slow) if slow else {}
        for change in changes:
            if change.key is None:
                continue
            change.line = built.get(change.key) if built is not None else None
            row = rows.get(change.key)
            if change.line is not None or row is None or not row_is_live(mapping, row):
                continue  # built by SQLite, or a delete
            try:
                change.line = encode_document(build_document(mapping, row))
            except (DocumentError, ValueError, TypeError) as exc:  # one bad row, not the batch
                change.error = str(exc)

    def _send(self, changes: list[_Change], report: BatchReport) -> list[DocResult]:
        """Upserts per collection, then deletes; one result per change, in order."""
        results: list[DocResult | None] = [None] * len(changes)
        by_table: dict[str, list[int]] = {}
        for i, change in enumerate(changes):
            if change.error is not None:
                results[i] = DocResult(ok=False, error=change.error)
            else:
                by_table.setdefault(change.table, []).append(i)
        for table, indexes in by_table.items():
            target = self.targets.get(table) or Target(self.mappings[table].collection)
            upserts: list[tuple[int, str]] = []  # (index, document line)
            deletes: list[int] = []
            for i in indexes:
                line = changes[i].line
                if line is None:
                    deletes.append(i)
                else:
                    upserts.append((i, line))
            ids = [changes[i].doc_id for i in deletes]
            upsert_results = self.sink.upsert(target.primary, [line for _, line in upserts])
            delete_results = self.sink.delete(target.primary, ids)
            if target.mirror is not None:
                live = [line for i, line in upserts if any(e.op != "B" for e in changes[i].entries)]
                self._mirror(target.mirror, live, ids)
            order = [i for i, _ in upserts] + deletes
            for i, result in zip(order, upsert_results + delete_results, strict=True):
                results[i] = result
            report.upserted[table] = sum(r.ok for r in upsert_results)
            report.deleted[table] = sum(r.ok for r in delete_results)
        return [r if r is not None else DocResult(ok=False, error="not sent") for r in results]

    def _resend_later(self, changes: list[_Change]) -> None:
        """A timed-out write (or one whose connection broke after sending) may still be applied
        later, even after newer writes (a stalled cluster node forwarding it late). Its entries
        stay in the log and are retried as usual (or are acknowledged when another node took
        the batch); on top, the keys are logged again, due after a safe delay, so their current
        state is sent once more after any late arrival."""
        due = time.time() + self.resend_delay
        by_table: dict[str, list[Any]] = {}
        for change in changes:
            by_table.setdefault(change.table, []).append(change.log_key)
        for table, log_keys in by_table.items():
            self.changelog.enqueue(table, log_keys, "T", not_before=due)

    def _mirror(self, collection: str, documents: list[str], ids: list[str]) -> None:
        """Best effort, during a rebuild: keep the collection searches still use up to date.
        Its answers are not acknowledged (the new collection's are); it is dropped at the swap."""
        try:
            self.sink.upsert(collection, documents, dirty_values="coerce_or_drop")
            self.sink.delete(collection, ids)
        except TargetError as exc:
            log.debug("mirror write failed", collection=collection, error=str(exc))
