"""verify / repair: compare every row with its document, streaming both sides.

The collection is exported (JSONL stream) into a scratch SQLite file as (id, digest); then the
table is read in short pages by primary key and each expected document's digest is looked up.
Memory stays flat whatever the size. With `id_prefix` (a collection shared by several hosts) only
this host's documents are compared: other prefixes are skipped, never reported or repaired.

A difference whose key has changes in the log is left out only while they are in flight: younger
than GRACE seconds, never failed, and the log as a whole moving (its oldest due entry is younger
than GRACE too). Anything else is reported with its reason: dead-lettered, retrying after a
rejection, or waiting in a backlog. When there are few differences, each is checked once more,
row and document, to rule out races with concurrent writes. Repair logs the differing keys, so
the normal sync path (one processor, current row state) fixes them; a document whose id no row of
the table can produce is deleted directly. The report names every document repaired.

A caller that shows progress (the `verify` command on a terminal) passes `on_progress`: it is
told the documents read and the rows compared, with their totals (Typesense's document count,
one COUNT(*) of the table) asked only then.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import apsw

from cdc_daemon.changelog import ChangeLog
from cdc_daemon.database import Database, InvalidText
from cdc_daemon.documents import build_document, row_is_live, row_key
from cdc_daemon.errors import ConfigError, DocumentError
from cdc_daemon.log_schema import Op
from cdc_daemon.log_status import LogStatus
from cdc_daemon.reconfigure import old_documents
from cdc_daemon.row_keys import Key, log_key_to_key
from cdc_daemon.schema import TableMapping
from cdc_daemon.sink import Sink, id_problem
from cdc_daemon.table_rows import count_rows, every_row, rows_by_keys

PAGE_SIZE = 2000
RECHECK_LIMIT = 1000  # differences checked again one by one; beyond this, counts are taken as is
EXAMPLES = 5
GRACE = 10.0  # seconds a change may take to reach Typesense before verify counts it
DOCUMENT_BATCH = 5000  # exported documents stored (and progress told) at a time


@dataclass(eq=False)  # each stage's one object, told again as it moves: hashed by identity
class VerifyProgress:
    """How far one table's comparison is: `stage` "documents" (read from Typesense) or "rows"
    (compared); `total` None when unknown."""

    table: str
    stage: str
    done: int
    total: int | None


ProgressCallback = Callable[[VerifyProgress], None]


def _normalize(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    return value


def digest(document: dict[str, Any]) -> bytes:
    canonical = json.dumps(_normalize(document), sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).digest()


@dataclass(frozen=True)
class Difference:
    """One document that differs: its id, and its row's key (None for an extra document whose
    id no row of this table can produce, e.g. `manual-1` or `007` for an integer key)."""

    doc_id: str
    key: Key | None


@dataclass
class TableDiff:
    missing: list[Difference] = field(default_factory=list)
    stale: list[Difference] = field(default_factory=list)
    extra: list[Difference] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # doc id → why it differs, if known
    in_flight: int = 0  # differences left out: their changes are on their way
    rows: int = 0
    documents: int = 0
    repaired: dict[str, list[str]] = field(default_factory=dict)  # kind → ids sent again

    def repairable(self) -> dict[str, list[str]]:
        """The ids Verifier.repair acts on, by kind (not keys that can't be indexed)."""
        kinds = {"missing": self.missing, "stale": self.stale, "extra": self.extra}
        return {
            kind: [d.doc_id for d in found if not _never_indexable(d)]
            for kind, found in kinds.items()
        }

    @property
    def in_sync(self) -> bool:
        return not (self.missing or self.stale or self.extra)

    @property
    def differences(self) -> list[Difference]:
        return self.missing + self.stale + self.extra

    def summary(self) -> dict[str, Any]:
        examples = {
            "missing": [d.doc_id for d in self.missing[:EXAMPLES]],
            "extra": [d.doc_id for d in self.extra[:EXAMPLES]],
            "stale": [d.doc_id for d in self.stale[:EXAMPLES]],
        }
        shown = {doc_id for ids in examples.values() for doc_id in ids}
        summary = {
            "in_sync": self.in_sync,
            "rows": self.rows,
            "documents": self.documents,
            "missing": len(self.missing),
            "extra": len(self.extra),
            "stale": len(self.stale),
            "in_flight": self.in_flight,
            "examples": examples,
            "reasons": {i: r for i, r in self.reasons.items() if i in shown},
        }
        if self.repaired:  # every id a repair sent again (the command counts after it)
            summary["repaired"] = self.repaired
        return summary


def summarize(results: dict[str, TableDiff], log_status: dict[str, Any]) -> dict[str, Any]:
    """`verify --json` (and the admin API's verify): totals, the log's state, every table."""
    return {
        "in_sync": all(d.in_sync for d in results.values()),
        "missing": sum(len(d.missing) for d in results.values()),
        "extra": sum(len(d.extra) for d in results.values()),
        "stale": sum(len(d.stale) for d in results.values()),
        "in_flight": sum(d.in_flight for d in results.values()),
        "backlog": log_status["backlog"],
        "oldest_age_seconds": log_status["oldest_age_seconds"],
        "dead_letters": log_status["dead_letters"],
        "tables": {t: d.summary() for t, d in results.items()},
    }


@dataclass(frozen=True)
class _LogView:
    """What the log says about one table's keys, for telling in-flight keys from stuck ones."""

    waiting: dict[Key, str | None]  # key → why it is stuck, or None while in flight
    dead: dict[Key, str]  # dead-lettered key → its error

    def reason(self, key: Key) -> str | None:
        """Why this key's document differs ('in flight' when it is merely on its way)."""
        if key in self.dead:
            return f"dead-lettered: {self.dead[key]}"
        if key in self.waiting:
            return self.waiting[key] or "in flight"
        return None


class Verifier:
    """Compares (and repairs) on the thread that built it: the `verify` command's, or an admin
    request's (POST /v1/verify) while the loop syncs on its own; `db` is that thread's own
    connection."""

    def __init__(
        self,
        db: Database,
        changelog: ChangeLog,
        sink: Sink,
        processor_running: bool | Callable[[], bool] = True,
    ) -> None:
        """`processor_running`: whether a process holds the processor lock (a daemon, or a
        backfill draining), asked at each comparison. Without one, no change is on its way."""
        self.db = db
        self.changelog = changelog  # repairs are logged through it
        self.log_status = LogStatus(db, changelog.names)  # what the log says of each key
        self.sink = sink
        self.processor_running = processor_running

    def _rows(self, mapping: TableMapping) -> Iterator[tuple[Any, ...]]:
        """Every row matching `where`, in short read transactions of PAGE_SIZE rows."""
        return every_row(self.db, mapping, PAGE_SIZE)

    def compare(
        self, mapping: TableMapping, on_progress: ProgressCallback | None = None
    ) -> TableDiff:
        diff = TableDiff()
        progress = _Reporter(mapping.table, on_progress)
        with tempfile.TemporaryDirectory(prefix="cdc-verify-") as tmp:
            scratch = apsw.Connection(str(Path(tmp) / "docs.db"))
            scratch.execute("PRAGMA journal_mode = OFF").fetchall()
            scratch.execute("PRAGMA synchronous = OFF")
            scratch.execute(
                "CREATE TABLE docs (id TEXT PRIMARY KEY, digest BLOB, seen INT DEFAULT 0)"
            )
            self._load_documents(scratch, mapping, diff, progress)
            progress.start("rows", lambda: count_rows(self.db, mapping))
            read = 0
            for row in self._rows(mapping):
                read += 1
                if read % PAGE_SIZE == 0:
                    progress.tell(read)
                if not row_is_live(mapping, row):
                    continue
                diff.rows += 1
                key = row_key(mapping, row)
                doc_id, expected = _expected(mapping, row)
                if doc_id is None:  # no id names this row's document: it can't have one
                    difference = Difference(_shown_id(mapping, key), key)
                    diff.reasons[difference.doc_id] = str(expected)
                    diff.missing.append(difference)
                    continue
                difference = Difference(doc_id, key)
                if isinstance(expected, str):  # no document can be right: an old one is stale
                    diff.reasons[doc_id] = expected
                found = scratch.execute(
                    "SELECT digest FROM docs WHERE id = ?", (doc_id,)
                ).fetchall()
                if not found:
                    diff.missing.append(difference)
                    continue
                scratch.execute("UPDATE docs SET seen = 1 WHERE id = ?", (doc_id,))
                if isinstance(expected, str) or found[0][0] != digest(expected):
                    diff.stale.append(difference)
            progress.tell(read, finished=True)
            for (doc_id,) in scratch.execute("SELECT id FROM docs WHERE seen = 0"):
                diff.extra.append(Difference(doc_id, mapping.key_of(doc_id)))
            scratch.close()
        self._classify(mapping, diff)
        if len(diff.differences) <= RECHECK_LIMIT:
            self._recheck(mapping, diff)
        return diff

    def _load_documents(
        self,
        scratch: apsw.Connection,
        mapping: TableMapping,
        diff: TableDiff,
        progress: _Reporter,
    ) -> None:
        batch: list[tuple[str, bytes]] = []
        progress.start("documents", lambda: self._document_count(mapping))
        read = 0

        def flush() -> None:
            with scratch:
                scratch.executemany("INSERT OR REPLACE INTO docs (id, digest) VALUES (?, ?)", batch)
            batch.clear()

        # An earlier id_prefix's documents a reload has not cleared yet are this table's too.
        olds = old_documents(self.db, self.changelog.names, mapping)
        for document in self.sink.export(mapping.collection):
            read += 1
            if read % DOCUMENT_BATCH == 0:
                progress.tell(read)
            doc_id = str(document["id"])
            if not doc_id.startswith(mapping.id_prefix) and not any(
                old.surely_ours(doc_id) for old in olds
            ):
                continue  # another host's document in a shared collection (id_prefix)
            diff.documents += 1
            batch.append((str(document["id"]), digest(document)))
            if len(batch) >= DOCUMENT_BATCH:
                flush()
        flush()
        progress.tell(read, finished=True)

    def _document_count(self, mapping: TableMapping) -> int | None:
        """The collection's documents (every host's, with id_prefix), as Typesense counts them."""
        collection = self.sink.get_collection(mapping.collection) or {}
        count = collection.get("num_documents")
        return count if isinstance(count, int) else None

    def _log_view(self, mapping: TableMapping, running: bool) -> _LogView:
        now = time.time()
        with self.db.read() as conn:
            stalled_since = self.log_status.oldest_due(conn, now)
            pending = self.log_status.pending(conn, mapping.table)
            dead = self.log_status.dead_keys(conn, mapping.table)
        stalled = stalled_since is not None and now - stalled_since > GRACE
        waiting: dict[Key, str | None] = {}
        for log_key, oldest, attempts, error in pending:
            key = _readable(log_key, mapping)
            if key is None:
                continue  # a NULL or unreadable key names no document
            if attempts or error:
                waiting[key] = f"retrying: {error or 'failed'}"
            elif stalled or now - oldest > GRACE:
                age = now - min(oldest, stalled_since or oldest)
                waiting[key] = f"not synced: changes waiting in the log for {age:.0f} s"
            elif not running:  # young, but nobody will deliver it
                waiting[key] = "not synced: no cdc-daemon is running"
            else:
                waiting[key] = None
        dead_keys = {k: error for log_key, error in dead if (k := _readable(log_key, mapping))}
        return _LogView(waiting, dead_keys)

    def _classify(self, mapping: TableMapping, diff: TableDiff) -> None:
        """Leave out the differences whose changes are in flight; give the others a reason."""
        running = self.processor_running
        view = self._log_view(mapping, running if isinstance(running, bool) else running())
        for found in (diff.missing, diff.stale, diff.extra):
            kept = []
            for difference in found:
                reason = view.reason(difference.key) if difference.key is not None else None
                if reason == "in flight":
                    diff.in_flight += 1
                    continue
                if reason is not None:
                    diff.reasons[difference.doc_id] = reason
                elif difference.key is None:
                    diff.reasons[difference.doc_id] = "no row of this table has this id"
                kept.append(difference)
            found[:] = kept

    def _recheck(self, mapping: TableMapping, diff: TableDiff) -> None:
        """Look at each difference again, row and document, to drop the ones a write raced."""
        def raced(difference: Difference) -> bool:
            if _never_indexable(difference):
                return False  # whatever a second look finds
            return self._agrees(mapping, difference)

        for found in (diff.missing, diff.stale, diff.extra):
            found[:] = [d for d in found if not raced(d)]
        remaining = {d.doc_id for d in diff.differences}
        diff.reasons = {i: r for i, r in diff.reasons.items() if i in remaining}

    def _agrees(self, mapping: TableMapping, difference: Difference) -> bool:
        expected: dict[str, Any] | str | None = None
        if difference.key is not None:
            with self.db.read() as conn:
                row = rows_by_keys(conn, mapping, [difference.key]).get(difference.key)
            if row is not None and row_is_live(mapping, row):
                expected = _expected(mapping, row)[1]
        actual = self.sink.get_document(mapping.collection, difference.doc_id)
        if expected is None or actual is None:
            return expected is None and actual is None
        return isinstance(expected, dict) and digest(expected) == digest(actual)

    def repair(self, mapping: TableMapping, diff: TableDiff) -> int:
        """Log every differing key (deleting directly the documents no row can produce);
        returns the highest seq to wait for (0 if nothing was logged).

        Those deletes are the one write to documents made beside the loop (an admin request's
        repair runs on its thread): safe, as the sync never upserts an id that no row of the
        table can produce, so nothing the loop sends is undone."""
        # A key no document can have is not sent again: that would change nothing.
        keys = [d.key for d in diff.differences if d.key is not None and not _never_indexable(d)]
        strays = [d.doc_id for d in diff.extra if d.key is None]
        if strays:
            self.sink.delete(mapping.collection, strays)
        if not keys:
            return 0
        return self.changelog.enqueue_keys(mapping.table, keys, Op.REPAIR)


def _expected(
    mapping: TableMapping, row: tuple[Any, ...]
) -> tuple[str | None, dict[str, Any] | str]:
    """(the live row's document id, None when it has none: a NULL or non-UTF-8 key part, an
    empty or too long id; the document it should have, or why it can't have one)."""
    key = row_key(mapping, row)
    if any(isinstance(value, InvalidText) for value in key):
        return None, "cannot be indexed: the key is text that is not valid UTF-8"
    doc_id = None if None in key else mapping.doc_id(key)
    if doc_id is not None and (problem := id_problem(doc_id)) is not None:
        return None, f"cannot be indexed: {problem}"
    try:  # a NULL key part fails here, naming the key
        return doc_id, build_document(mapping, row)
    except DocumentError as exc:
        return doc_id, f"cannot be indexed: {exc}"


def _shown_id(mapping: TableMapping, key: Key) -> str:
    """How a row that can't have a document is named in the report: its would-be id, and the
    bytes of a key part that is not UTF-8 (such keys read alike: each byte is U+FFFD)."""
    raw = [v.raw.hex() for v in key if isinstance(v, InvalidText)]
    if None in key:
        return "NULL key " + repr(key)
    return mapping.doc_id(key) + (f" (not UTF-8: {', '.join(raw)})" if raw else "")


def _never_indexable(difference: Difference) -> bool:
    """A key no document can have: text that is not UTF-8, or an id the sync refuses (empty,
    too long: sink.id_problem)."""
    key = difference.key or ()
    return any(isinstance(v, InvalidText) for v in key) or id_problem(difference.doc_id) is not None


class _Reporter:
    """One table's progress, told to `on_progress`; nothing (not even a total asked) without
    one."""

    def __init__(self, table: str, on_progress: ProgressCallback | None) -> None:
        self.table = table
        self.on_progress = on_progress
        self.current = VerifyProgress(table, "", 0, None)

    def start(self, stage: str, total: Callable[[], int | None]) -> None:
        if self.on_progress is not None:
            self.current = VerifyProgress(self.table, stage, 0, total())
            self.on_progress(self.current)

    def tell(self, done: int, finished: bool = False) -> None:
        if self.on_progress is None:
            return
        self.current.done = done
        total = self.current.total
        if finished or (total is not None and done > total):  # counted while the app wrote
            self.current.total = done
        self.on_progress(self.current)


def _readable(log_key: Any, mapping: TableMapping) -> Key | None:
    try:
        return log_key_to_key(log_key, len(mapping.key))
    except (ValueError, TypeError):
        return None


class CollectionChecker(Protocol):
    def check(self, mapping: TableMapping) -> str | None: ...


def refuse_foreign_repair(collections: CollectionChecker, mapping: TableMapping) -> None:
    """Before a repair writes: a collection that is not this database's to change (another
    database's, see ownership.py) is refused, with `check`'s one line (naming the config key the
    root gave the checker)."""
    problem = collections.check(mapping)
    if problem is not None:
        raise ConfigError(f"not repaired: {problem}")


def verify_tables(
    verifier: Verifier,
    mappings: list[TableMapping],
    collections: CollectionChecker,
    log_status: Callable[[], dict[str, Any]],
    repair: bool = False,
    synced_through: Callable[[int], object] | None = None,
    on_progress: ProgressCallback | None = None,
) -> tuple[dict[str, Any], int]:
    """The verify of `verify` and the admin API: each table compared (and with `repair`, after
    refusing a collection that isn't this database's, repaired: Verifier.repair), then the
    summary. `synced_through(seq)` (the command, which syncs itself): waits for the repair to be
    synced, then compares again; without it (the daemon's loop delivers) the first comparison
    is reported. A repaired table's summary names every id repaired (`repaired`). Returns
    (summary, differences repaired)."""
    results: dict[str, TableDiff] = {}
    repaired = 0
    for mapping in mappings:
        diff = verifier.compare(mapping, on_progress)
        if repair and not diff.in_sync:
            refuse_foreign_repair(collections, mapping)
            seq = verifier.repair(mapping, diff)
            fixed = diff.repairable()
            repaired += sum(len(ids) for ids in fixed.values())  # not keys it can't repair
            if synced_through is not None:
                if seq:
                    synced_through(seq)
                diff = verifier.compare(mapping, on_progress)
            diff.repaired = fixed
        results[mapping.table] = diff
    return summarize(results, log_status()), repaired
