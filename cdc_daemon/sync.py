"""One sync iteration: read a batch and its rows in one snapshot → build → send → acknowledge."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw
import structlog

from cdc_daemon.batching import BatchSize
from cdc_daemon.changelog import MAX_DELAY, ChangeLog, KeyFailure, LogEntry, contiguous_ranges
from cdc_daemon.database import Database, InvalidText
from cdc_daemon.dependencies import DependencyPath, expansion, join_columns, parse_payload
from cdc_daemon.document_sql import document_sql, fetch_documents
from cdc_daemon.documents import build_document, row_is_live, size_problem
from cdc_daemon.errors import CdcError, CollectionMissing, DocumentError, TargetError
from cdc_daemon.evolution import CollectionManager, Target
from cdc_daemon.log_schema import Op
from cdc_daemon.preflight import row_failure_problem
from cdc_daemon.row_keys import Key, log_key_to_key
from cdc_daemon.schema import TableMapping
from cdc_daemon.sink import (
    MAX_ID_BYTES,
    OK,
    DocResult,
    EncodedLines,
    Sink,
    encode_document,
    id_problem,
)
from cdc_daemon.table_rows import ROW_QUERY_ERRORS, has_row, rows_by_keys

NOT_SENT = DocResult(ok=False, error="not sent")
TABLE_RETRY = 30.0  # seconds before a table whose rows could not be read is read again
REPORT_BROKEN_EVERY = 60.0  # seconds between two error lines about one skipped table
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
    # Per table: documents refused as documents (not retryable: they count toward max_attempts),
    # and "key K: reason" of the first of them.
    rejected: dict[str, int] = field(default_factory=dict)
    first_rejection: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # tables not read (Syncer.broken)
    full: bool = False  # as many entries as the read asked for: more are likely waiting


@dataclass
class Rejections:
    """Documents Typesense (or documents.py) refused as documents, per table, over the batches
    this process sent: what `backfill` and `run --once` report when they end."""

    count: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)  # "key K: reason"

    def add(self, report: BatchReport) -> None:
        for table, count in report.rejected.items():
            self.count[table] = self.count.get(table, 0) + count
        for table, first in report.first_rejection.items():
            self.first.setdefault(table, first)

    def lines(self) -> list[str]:
        """One line per table, for a terminal."""
        return [
            f"{table}: {count} documents rejected (first: {self.first[table]});"
            " they stay in the log, are retried with backoff, then dead-lettered"
            " (`cdc-daemon dead-letters list`)"
            for table, count in self.count.items()
        ]

    def log(self) -> bool:
        """An error line per table with rejections; True when there were any."""
        for table, count in self.count.items():
            log.error(
                "documents rejected",
                table=table,
                count=count,
                first=self.first[table],
                then="retried with backoff, then dead-lettered (`cdc-daemon dead-letters list`)",
            )
        return bool(self.count)


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
    settled: bool = False  # a delete of a document that can't exist: done without a request
    # A dependency row's change (op J): settled, its acknowledgement logs these E entries. A
    # tuple: no list allocated per change (GC work on every batch).
    expansions: tuple[tuple[str, list[Any]], ...] = ()


@dataclass
class _TableWrite:
    """What a batch sends to one table's collection: indexes into the batch's changes."""

    table: str
    upserts: list[int] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # the upserts' documents
    deletes: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # the deletes' document ids


@dataclass
class _Batch:
    """The changes read in one snapshot, planned for sending: all of it is prepared while
    reading (off the send's critical path when read ahead), so that between two imports the
    loop does little more than acknowledge."""

    changes: list[_Change]
    deleted_by_others: int  # the log's count in the same snapshot (ChangeLog.commit)
    seqs: list[int]  # every entry's seq, ascending
    ranges: list[tuple[int, int]]  # the same, as contiguous ranges: the acknowledgement
    writes: list[_TableWrite]
    refused: list[int]  # changes that failed before sending (change.error)
    settled: list[int]  # changes done without sending (change.settled)
    limit: int = 0  # the batch size it was read with: as many entries means more may wait
    document_bytes: int = 0  # the upserts' import bodies


@dataclass
class _Ack:
    """A batch's acknowledgement, for ChangeLog.commit."""

    acked: list[tuple[int, int]]
    succeeded: Iterable[tuple[str, Any]]
    failures: list[KeyFailure]
    deleted_by_others: int
    expansions: list[tuple[str, list[Any]]]


def _id_surely_fits(key: Key, room: int) -> bool:
    """True when the key's document id can't be empty or take more than `room` bytes (beside
    its prefix), without building it: most keys are one integer (row_keys.document_id)."""
    if len(key) == 1:
        value = key[0]
        if type(value) is int:
            return room >= 20  # its digits
        if isinstance(value, str):
            return len(value) > 0 and 4 * len(value) <= room  # UTF-8: at most 4 bytes a char
        if isinstance(value, bytes):
            return len(value) > 0 and 2 * len(value) <= room  # hex
        return False  # REAL or NULL: the id itself is checked
    # JSON: a character at most 6 bytes (an escape), at most 12 more per text or blob part
    # ('{"hex":""},'), at most 32 for a number or null, and the brackets.
    longest = 2 + sum(6 * len(v) + 12 if isinstance(v, str | bytes) else 32 for v in key)
    return longest <= room


class Syncer:
    """Turns log entries into Typesense writes. Call `sync_once()` from a loop or a test."""

    def __init__(
        self,
        db: Database,
        changelog: ChangeLog,
        sink: Sink,
        mappings: dict[str, TableMapping],
        batch_size: int,
        collections: CollectionManager,
    ) -> None:
        self.db = db
        self.changelog = changelog
        self.sink = sink
        self.mappings = mappings
        self.batch_size = batch_size  # the upper bound; each batch reads `sizes.current`
        self.sizes = BatchSize(batch_size)
        self.collections = collections
        self.targets: dict[str, Target] = {}
        self.resend_delay = 30.0  # after a timeout; the daemon sets it from typesense.timeout
        self.read_ahead = True  # read the next batch while a full one is being sent
        self._collections_ready = False
        self._next: _Batch | None = None  # read ahead, sent by the next sync_once
        self._pending: _Ack | None = None  # the last batch's acknowledgement, not written yet
        self._document_sql = {table: document_sql(m) for table, m in mappings.items()}
        # Tables skipped while their rows can't be read (dropped, renamed, a `where` that no
        # longer compiles): table → why. Their log entries wait, untouched, while the other
        # tables sync. Those open_tables left out stay skipped until the runtime is built again
        # (the schema or the config changed); one whose read failed here is tried again after
        # TABLE_RETRY seconds (monotonic time in _retry_at).
        self.broken: dict[str, str] = {}
        self.entries: dict[str, str] = {}  # table → its config key, `tables[N]` (build_runtime)
        self._retry_at: dict[str, float] = {}
        self._reported_at: dict[str, float] = {}
        self.rejections = Rejections()  # over this syncer's batches (backfill, run --once)
        self.dependencies: Sequence[DependencyPath] = ()  # use_dependencies
        self._joined: Mapping[str, tuple[str, ...]] = {}

    def use_dependencies(self, paths: Iterable[DependencyPath]) -> None:
        """Every depends_on path of the configured tables (also of those skipped as broken: their
        dependency tables' changes wait), and so the join columns each dependency table's
        triggers log."""
        self.dependencies = tuple(paths)
        self._joined = join_columns(self.dependencies)

    def skip_tables(self, broken: dict[str, str]) -> None:
        """Leave out these configured tables (open_tables could not use them): table → why."""
        self.broken.update(broken)

    def ensure_collections(self) -> None:
        """Create, extend or start rebuilding collections; SchemaMismatch for a foreign one."""
        self.targets = self.collections.ensure(self.mappings)
        self._collections_ready = True

    def step_collections(self) -> bool:
        """Between batches: feed backfills and finish rebuilds. True when it did some work.
        A table whose backfill page can't be read is skipped like one whose changes can't."""
        if not self._collections_ready:
            self.ensure_collections()
        unreadable: dict[str, str] = {}
        try:
            skip = self._skipped_tables()
            return self.collections.step(self.mappings, self.targets, skip, unreadable)
        except CollectionMissing:
            self._collections_ready = False  # look again before the next batch
            raise
        finally:
            for table, error in unreadable.items():
                self._skip_unreadable(table, error)
            if unreadable:
                self._report_broken()

    def sync_once(self) -> BatchReport:
        started = time.monotonic()
        if not self._collections_ready:
            self.ensure_collections()
        report = BatchReport()
        batch, self._next = self._next or self._read(), None
        report.skipped = dict(self.broken)
        changes = batch.changes
        if not changes:
            self._commit_pending(report)
            return report
        report.entries, report.keys = len(batch.seqs), len(changes)
        report.full = report.entries >= batch.limit
        self.sizes.read(report.entries, batch.limit)  # before reading ahead: with the new size
        report.first_seq, report.last_seq = batch.seqs[0], batch.seqs[-1]
        uncertain = self.sink.uncertain_writes
        ahead = None
        try:
            if self.read_ahead and report.entries >= batch.limit:  # more is likely waiting
                results, ahead = self._send_reading_ahead(batch, report, report.last_seq)
            else:
                self._commit_pending(report)
                results = self._send(batch, report)
        except CollectionMissing:
            self._collections_ready = False
            raise
        finally:
            # A write that timed out or lost its connection may be applied later, even when
            # another node then took the batch (failover): re-send these keys after a delay.
            if self.sink.uncertain_writes != uncertain:
                self._resend_later(changes)
        # Nearly always every result is the one OK: list.count, in C, tells at once.
        all_ok = results.count(OK) == len(results)
        failed = [] if all_ok else [i for i, result in enumerate(results) if not result.ok]
        acked = batch.ranges
        if failed:
            failed_set = set(failed)
            acked = contiguous_ranges(
                e.seq for i, c in enumerate(changes) if i not in failed_set for e in c.entries
            )
        failures = [
            KeyFailure(
                table=changes[i].table,
                log_key=changes[i].log_key,
                entries=tuple(changes[i].entries),
                error=results[i].error or "failed",
                retryable=results[i].retryable,
            )
            for i in failed
        ]
        self._withdraw_dead(changes, failed, results)
        # Only read when there are dead letters to clear: a generator costs nothing otherwise.
        succeeded = ((c.table, c.log_key) for c, r in zip(changes, results, strict=True) if r.ok)
        # Only a dependency row's change (settled) has expansions.
        expansions = [e for i in batch.settled for e in changes[i].expansions]
        self._pending = _Ack(acked, succeeded, failures, batch.deleted_by_others, expansions)
        if ahead is not None and ahead.changes:
            # More follows at once: this acknowledgement is written while the next batch is
            # imported (by the next sync_once's helper thread), not between the two imports.
            self._next = ahead
        else:
            self._commit_pending(report)
        report.failed = len(failures)
        report.errors = [f"{f.table} {f.log_key!r}: {f.error}" for f in failures[:5]]
        for f in failures:
            if not f.retryable:
                report.rejected[f.table] = report.rejected.get(f.table, 0) + 1
                report.first_rejection.setdefault(f.table, f"key {f.log_key!r}: {f.error}")
        self.rejections.add(report)
        report.duration = time.monotonic() - started
        self.sizes.sent(report.duration, batch.document_bytes)
        return report

    def commit_pending(self) -> None:
        """Write the acknowledgement still held for the batch sent last (before stopping)."""
        self._commit_pending(BatchReport())

    def _commit_pending(self, report: BatchReport) -> None:
        """Write the held acknowledgement, if any; its dead letters count in `report`. If
        writing fails, it is dropped: its entries are read and sent again (harmless)."""
        ack, self._pending = self._pending, None
        if ack is None:
            return
        dead = self.changelog.commit(
            ack.acked, ack.succeeded, ack.failures, ack.deleted_by_others, ack.expansions
        )
        for failure in dead:
            report.dead_by_table[failure.table] = report.dead_by_table.get(failure.table, 0) + 1

    def _send_reading_ahead(
        self, batch: _Batch, report: BatchReport, after: int
    ) -> tuple[list[DocResult], _Batch | None]:
        """Send this batch while a helper thread writes the previous batch's acknowledgement
        and then reads the next batch (the due entries after seq `after`, and their rows, in a
        snapshot of its own) and builds its documents.

        Safe because imports stay sequential (the previous batch's import had succeeded before
        this one was sent, so per-key order holds; a later snapshot's document is sent later),
        an acknowledgement is only ever written after its import succeeded, and a batch read
        ahead is dropped when this one fails. The helper is joined before this returns, so the
        database connection is never used by two threads at once; HTTP stays on this (the
        loop's) thread.
        """
        ahead: list[_Batch] = []
        failed: list[CdcError] = []

        def acknowledge_and_read() -> None:
            time.sleep(0)  # the GIL back to the loop's thread at once: its import goes out first
            try:
                self._commit_pending(report)
            except CdcError as exc:
                failed.append(exc)
                return
            try:
                ahead.append(self._read(after))
            except CdcError as exc:  # not fatal: the next sync_once reads again
                log.debug("read-ahead failed", error=str(exc))

        helper = threading.Thread(target=acknowledge_and_read, name="cdc-read-ahead", daemon=True)
        helper.start()
        try:
            results = self._send(batch, report)
        finally:
            helper.join()
        if failed:  # this batch was sent, but is not acknowledged either: both are sent again
            raise failed[0]
        return results, (ahead[0] if ahead else None)

    def _read(self, after: int = 0) -> _Batch:
        """The due log entries (after seq `after`) and the rows they point at, in one read
        transaction."""
        skipped = self._skipped_tables()
        with self.db.read() as conn:
            limit = self.sizes.current
            entries = self.changelog.read_batch(
                conn, limit, time.time(), after, skip_tables=skipped
            )
            deleted_by_others = self.changelog.deleted_by_others(conn) if entries else 0
            if entries:  # read here, in a read transaction, when not known yet: not in the ack
                self.changelog.retrying_entries(conn, deleted_by_others)
            changes: dict[tuple[str, Any, bool], _Change] = {}
            known, joined_op = changes.get, Op.JOINED  # locals: this loop runs for every entry
            for entry in entries:
                table, log_key = entry.table, entry.log_key
                ident = (table, log_key, entry.op == joined_op)
                change = known(ident)
                if change is None:
                    changes[ident] = _Change(table, log_key, [entry])
                else:
                    change.entries.append(entry)
            by_table: dict[str, list[_Change]] = {}
            for (_table, _key, joined), change in changes.items():
                if joined:
                    self._expand(change)
                else:
                    by_table.setdefault(change.table, []).append(change)
            unreadable: set[str] = set()
            for table, table_changes in by_table.items():
                if not self._resolve_or_skip(conn, table, table_changes):
                    unreadable.add(table)
        self._report_broken()
        # A skipped table's entries are neither sent nor acknowledged: they wait in the log.
        if unreadable:
            kept = [c for c in changes.values() if c.table not in unreadable]
            seqs = sorted(e.seq for c in kept for e in c.entries)
        else:
            kept, seqs = list(changes.values()), [e.seq for e in entries]  # read in seq order
        batch = self._plan(kept, seqs, deleted_by_others)
        batch.limit = limit
        return batch

    def _expand(self, change: _Change) -> None:
        """A dependency row's change: settled here, and its acknowledgement logs the keys of
        the documents joined to the old or the new row (dependencies.py). An entry that can't be
        read (logged by triggers of another config's join columns) is dropped with a warning:
        a changed depends_on re-sends every document anyway (reconfigure.py)."""
        change.settled = True
        paths = [p for p in self.dependencies if p.table == change.table]
        if not paths:
            return  # no configured document reads this table (any more)
        columns = self._joined[change.table]
        try:
            sides = parse_payload(change.log_key, len(columns))
        except ValueError as exc:
            log.warning(
                "dependency change unreadable; dropped",
                table=change.table,
                entry=repr(change.log_key),
                error=str(exc),
            )
            return
        if not sides:
            return
        change.expansions = tuple(  # a root left out of this runtime is skipped (_skipped_tables)
            expansion(path, self.mappings[path.root].key, columns, sides, self.changelog.names)
            for path in paths
            if path.root in self.mappings
        )

    def _skipped_tables(self) -> list[str]:
        """The broken tables whose log entries are not read now; one whose retry time came is
        read again (and skipped again if it still fails)."""
        now = time.monotonic()
        for table, due in list(self._retry_at.items()):
            if now >= due:
                del self._retry_at[table], self.broken[table]
        # A dependency table's changes wait too while a table reading it is skipped: expanded
        # now, they would find no documents to re-send.
        waiting = {p.table for p in self.dependencies if p.root in self.broken}
        return sorted(set(self.broken) | waiting)

    def _resolve_or_skip(self, conn: apsw.Connection, table: str, changes: list[_Change]) -> bool:
        """_resolve and _check_ids, unless the table's rows can't be read (dropped or renamed
        since the runtime was built, or its `where` fails on a row: json_extract of text that
        is not JSON): then the table is skipped for a while, and False. Caught here, per table:
        Database.read() would make it the whole read's error. Any other error (busy, I/O) is
        the whole batch's."""
        try:
            self._resolve(conn, table, changes)
            self._check_ids(conn, table, changes)
        except ROW_QUERY_ERRORS as exc:
            self._skip_unreadable(table, str(exc))
            return False
        return True

    def _skip_unreadable(self, table: str, error: str) -> None:
        """Skip `table` for TABLE_RETRY seconds; its problem names the config key and SQLite's
        message (`tables[N].where`, or `.table` when its query no longer compiles)."""
        mapping = self.mappings.get(table)
        self.broken[table] = (  # row_failure_problem compiles the query: it never raises
            row_failure_problem(self.db, mapping, self.entries[table], error)
            if mapping is not None
            else f"table {table!r} could not be read: {error}"
        )
        self._retry_at[table] = time.monotonic() + TABLE_RETRY

    def _report_broken(self) -> None:
        """An error line per skipped table when it is first skipped, then once a minute."""
        now = time.monotonic()
        for table, problem in self.broken.items():
            last = self._reported_at.get(table)
            if last is None or now - last >= REPORT_BROKEN_EVERY:
                self._reported_at[table] = now
                log.error(
                    "table skipped: its changes wait in the log until it can be read",
                    table=table,
                    problem=problem,
                )

    @staticmethod
    def _plan(changes: list[_Change], seqs: list[int], deleted_by_others: int) -> _Batch:
        """`seqs`: every entry's seq, ascending."""
        writes: dict[str, _TableWrite] = {}
        refused: list[int] = []
        settled: list[int] = []
        for i, change in enumerate(changes):
            if change.settled:
                settled.append(i)
                continue
            if change.error is not None:
                refused.append(i)
                continue
            write = writes.get(change.table)
            if write is None:
                write = writes[change.table] = _TableWrite(change.table)
            if change.line is None:
                write.deletes.append(i)
                write.ids.append(change.doc_id)
            else:
                write.upserts.append(i)
                write.lines.append(change.line)
        document_bytes = 0
        for write in writes.values():  # the import bodies too: read ahead, off the send's path
            lines = write.lines = EncodedLines(write.lines)
            document_bytes += len(lines.body)
        ranges = contiguous_ranges(seqs)
        return _Batch(
            changes, deleted_by_others, seqs, ranges, list(writes.values()), refused, settled,
            document_bytes=document_bytes,
        )

    def _resolve(self, conn: apsw.Connection, table: str, changes: list[_Change]) -> None:
        """Attach to each change its current document (upsert) or None (delete), or an error."""
        mapping = self.mappings.get(table)
        if mapping is None:
            # Logged by triggers `install` put on a table before the config names it (or after
            # it stopped naming it): done without sending. Adding a table to the config sends
            # every row of it and removes what it has no row for (reconfigure.py's resync).
            for change in changes:
                change.settled = True
            return
        for change in changes:
            try:
                change.key = log_key_to_key(change.log_key, len(mapping.key))
            except (ValueError, TypeError) as exc:
                change.error = f"unreadable key {change.log_key!r}: {exc}"
        keys = [c.key for c in changes if c.key is not None]
        sql = self._document_sql.get(table)
        built = fetch_documents(conn, mapping, sql, keys) if sql else None
        # Rows whose documents SQLite did not build (all of them, without a fast path).
        slow = keys if built is None else [(v,) for v, line in built.items() if line is None]
        rows = rows_by_keys(conn, mapping, slow) if slow else {}
        for change in changes:
            if change.key is None:
                continue
            if built is not None:
                change.line = built.get(change.key[0])
            row = rows.get(change.key)
            try:
                if change.line is None and row is not None and row_is_live(mapping, row):
                    change.line = encode_document(build_document(mapping, row))
                elif change.line is None:  # a delete: only here is the document id needed
                    change.doc_id = mapping.doc_id(change.key)
            except (DocumentError, ValueError, TypeError) as exc:  # one bad row, not the batch
                change.error = str(exc)
            if change.line is not None and change.error is None:  # SQLite's or Python's line
                change.error = size_problem(change.line)  # too big to import: fails this row

    def _check_ids(self, conn: apsw.Connection, table: str, changes: list[_Change]) -> None:
        """A key whose document id Typesense can't take (empty, or too long to be deleted again
        in a URL) fails for its row alone; its delete, and the delete of a key that is not
        UTF-8, are done without a request: no such document can exist. Only long text or blob
        keys can be too long, so most keys cost one length check."""
        mapping = self.mappings.get(table)
        if mapping is None:
            return
        room = MAX_ID_BYTES - len(mapping.id_prefix.encode("utf-8", "surrogatepass"))
        for change in changes:
            key = change.key
            if key is None:
                if change.line is None and self._gone_unreadable(conn, mapping, change.log_key):
                    change.error, change.settled = None, True
                continue
            if change.error is not None:
                continue
            if _id_surely_fits(key, room):
                continue
            problem = id_problem(mapping.doc_id(key))
            if problem is not None and change.line is None:
                change.settled = True
            elif problem is not None:
                change.error = problem

    @staticmethod
    def _gone_unreadable(conn: apsw.Connection, mapping: TableMapping, log_key: Any) -> bool:
        """A one-column key that is not UTF-8 whose row is gone (its bytes bound as they are)."""
        if len(mapping.key) != 1 or not isinstance(log_key, InvalidText):
            return False
        return not has_row(conn, mapping, (log_key,))

    def _withdraw_dead(
        self, changes: list[_Change], failed: list[int], results: list[DocResult]
    ) -> None:
        """A change that is about to be dead-lettered (rejected max_attempts times) takes its
        key's document out of search: search shows no document rather than an outdated one for
        a row whose latest version can't be indexed (README: dead letters). Sent before the
        acknowledgement, so a failure here leaves the batch to be tried again."""
        doomed: dict[str, list[str]] = {}
        for i in failed:
            change = changes[i]
            attempts = max(e.attempts for e in change.entries) + 1
            if results[i].retryable or attempts < self.changelog.max_attempts or not change.key:
                continue  # retried again (the old document stays meanwhile), or names no document
            doc_id = self.mappings[change.table].doc_id(change.key)
            if id_problem(doc_id) is None:
                doomed.setdefault(change.table, []).append(doc_id)
        for table, ids in doomed.items():
            target = self.targets.get(table) or Target(self.mappings[table].collection)
            for collection in filter(None, (target.primary, target.mirror)):
                self.sink.delete(collection, ids)

    def _send(self, batch: _Batch, report: BatchReport) -> list[DocResult]:
        """Upserts per collection, then deletes; one result per change, in order."""
        changes = batch.changes
        results = [NOT_SENT] * len(changes)
        for i in batch.refused:
            results[i] = DocResult(ok=False, error=changes[i].error)
        for i in batch.settled:
            results[i] = OK
        for write in batch.writes:
            target = self.targets.get(write.table) or Target(self.mappings[write.table].collection)
            upsert_results = self.sink.upsert(target.primary, write.lines)
            delete_results = self.sink.delete(target.primary, write.ids)
            if target.mirror is not None:
                live = [
                    line
                    for i, line in zip(write.upserts, write.lines, strict=True)
                    if any(e.op != Op.BACKFILL for e in changes[i].entries)
                ]
                self._mirror(target.mirror, live, write.ids)
            order = write.upserts + write.deletes
            for i, result in zip(order, upsert_results + delete_results, strict=True):
                results[i] = result
            report.upserted[write.table] = sum(r.ok for r in upsert_results)
            report.deleted[write.table] = sum(r.ok for r in delete_results)
        return results

    def _resend_later(self, changes: list[_Change]) -> None:
        """A timed-out write (or one whose connection broke after sending) may still be applied
        later, even after newer writes (a stalled cluster node forwarding it late). Its entries
        stay in the log and are retried as usual (or are acknowledged when another node took
        the batch); on top, the keys are logged again, due after a safe delay, so their current
        state is sent once more after any late arrival."""
        due = time.time() + min(self.resend_delay, MAX_DELAY)
        by_table: dict[str, list[Any]] = {}
        for change in changes:
            by_table.setdefault(change.table, []).append(change.log_key)
        for table, log_keys in by_table.items():
            self.changelog.enqueue(table, log_keys, Op.RESEND, not_before=due)

    def _mirror(self, collection: str, documents: list[str], ids: list[str]) -> None:
        """Best effort, during a rebuild: keep the collection searches still use up to date.
        Its answers are not acknowledged (the new collection's are); it is dropped at the swap."""
        try:
            self.sink.upsert(collection, documents, dirty_values="coerce_or_drop")
            self.sink.delete(collection, ids)
        except TargetError as exc:
            log.debug("mirror write failed", collection=collection, error=str(exc))
