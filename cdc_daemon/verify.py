"""verify / repair: compare every row with its document, streaming both sides.

The collection is exported (JSONL stream) into a scratch SQLite file as (id, digest); then the
table is read in short pages by primary key and each expected document's digest is looked up.
Memory stays flat whatever the size. With `id_prefix` (a collection shared by several hosts) only
this host's documents are compared: other prefixes are skipped, never reported or repaired. Keys
with changes still in the log are not counted (they are in flight). When there are few
differences, each is checked once more, row and document, to rule out races with concurrent
writes. Repair logs the differing keys, so the normal sync path (one processor, current row
state) fixes them.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from cdc_daemon.changelog import ChangeLog
from cdc_daemon.database import Database, quote_ident, select_rows
from cdc_daemon.documents import build_document, row_is_live, row_key
from cdc_daemon.errors import DocumentError
from cdc_daemon.keys import Key, document_id, key_to_log_key, log_key_to_key
from cdc_daemon.schema import TableMapping
from cdc_daemon.sink import TypesenseSink
from cdc_daemon.sync import fetch_rows

PAGE_SIZE = 2000
RECHECK_LIMIT = 1000  # differences checked again one by one; beyond this, counts are taken as is
EXAMPLES = 5


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


@dataclass
class TableDiff:
    missing: list[Key] = field(default_factory=list)
    stale: list[Key] = field(default_factory=list)
    extra: list[Key] = field(default_factory=list)
    rows: int = 0
    documents: int = 0

    @property
    def in_sync(self) -> bool:
        return not (self.missing or self.stale or self.extra)

    def summary(self) -> dict[str, Any]:
        def examples(keys: list[Key]) -> list[str]:
            return [document_id(k) for k in keys[:EXAMPLES]]

        return {
            "in_sync": self.in_sync,
            "rows": self.rows,
            "documents": self.documents,
            "missing": len(self.missing),
            "extra": len(self.extra),
            "stale": len(self.stale),
            "examples": {
                "missing": examples(self.missing),
                "extra": examples(self.extra),
                "stale": examples(self.stale),
            },
        }


class Verifier:
    def __init__(self, db: Database, changelog: ChangeLog, sink: TypesenseSink) -> None:
        self.db = db
        self.changelog = changelog
        self.sink = sink

    def _expected(self, mapping: TableMapping, row: tuple[Any, ...]) -> dict[str, Any] | None:
        if not row_is_live(mapping, row):
            return None
        try:
            return build_document(mapping, row)
        except DocumentError:
            return None  # cannot be mirrored: it is missing (and in the dead letters)

    def _rows(self, mapping: TableMapping) -> Iterator[tuple[Any, ...]]:
        """Every row matching `where`, in short read transactions of PAGE_SIZE rows."""
        key_cols = ", ".join(quote_ident(c) for c in mapping.key)
        table = quote_ident(mapping.table)
        after: Key | None = None
        while True:
            conditions = [f"({mapping.where})"] if mapping.where else []
            params: list[Any] = []
            if after is not None:
                conditions.append(f"({key_cols}) > ({', '.join('?' * len(after))})")
                params.extend(after)
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            with self.db.read() as conn:
                page = select_rows(  # invalid UTF-8 read as fetch_rows reads it (U+FFFD)
                    conn,
                    mapping.columns,
                    f"FROM {table}{where} ORDER BY {key_cols} LIMIT {PAGE_SIZE}",
                    params,
                )
            if not page:
                return
            yield from page
            after = row_key(mapping, page[-1])

    def compare(self, mapping: TableMapping) -> TableDiff:
        diff = TableDiff()
        with tempfile.TemporaryDirectory(prefix="cdc-verify-") as tmp:
            scratch = apsw.Connection(str(Path(tmp) / "docs.db"))
            scratch.execute("PRAGMA journal_mode = OFF").fetchall()
            scratch.execute("PRAGMA synchronous = OFF")
            scratch.execute(
                "CREATE TABLE docs (id TEXT PRIMARY KEY, digest BLOB, seen INT DEFAULT 0)"
            )
            self._load_documents(scratch, mapping, diff)
            for row in self._rows(mapping):
                expected = self._expected(mapping, row)
                if expected is None:
                    continue
                diff.rows += 1
                found = scratch.execute(
                    "SELECT digest FROM docs WHERE id = ?", (expected["id"],)
                ).fetchall()
                key = row_key(mapping, row)
                if not found:
                    diff.missing.append(key)
                    continue
                scratch.execute("UPDATE docs SET seen = 1 WHERE id = ?", (expected["id"],))
                if found[0][0] != digest(expected):
                    diff.stale.append(key)
            for (doc_id,) in scratch.execute("SELECT id FROM docs WHERE seen = 0"):
                extra = mapping.key_of(doc_id)
                if extra is not None:
                    diff.extra.append(extra)
            scratch.close()
        self._drop_in_flight(mapping, diff)
        if len(diff.missing) + len(diff.stale) + len(diff.extra) <= RECHECK_LIMIT:
            self._recheck(mapping, diff)
        return diff

    def _load_documents(
        self, scratch: apsw.Connection, mapping: TableMapping, diff: TableDiff
    ) -> None:
        batch: list[tuple[str, bytes]] = []

        def flush() -> None:
            with scratch:
                scratch.executemany("INSERT OR REPLACE INTO docs (id, digest) VALUES (?, ?)", batch)
            batch.clear()

        for document in self.sink.export(mapping.collection):
            if not str(document["id"]).startswith(mapping.id_prefix):
                continue  # another host's document in a shared collection (id_prefix)
            diff.documents += 1
            batch.append((str(document["id"]), digest(document)))
            if len(batch) >= 5000:
                flush()
        flush()

    def _drop_in_flight(self, mapping: TableMapping, diff: TableDiff) -> None:
        pending = self.changelog.pending_keys(mapping.table)
        if not pending:
            return
        in_flight: set[Key] = set()
        for log_key in pending:
            try:
                in_flight.add(log_key_to_key(log_key, len(mapping.key)))
            except ValueError:
                continue  # a NULL or unreadable key names no document: nothing to leave out
        for keys in (diff.missing, diff.stale, diff.extra):
            keys[:] = [k for k in keys if k not in in_flight]

    def _recheck(self, mapping: TableMapping, diff: TableDiff) -> None:
        """Look at each difference again, row and document, to drop the ones a write raced."""
        for keys in (diff.missing, diff.stale, diff.extra):
            keys[:] = [k for k in keys if not self._agrees(mapping, k)]

    def _agrees(self, mapping: TableMapping, key: Key) -> bool:
        with self.db.read() as conn:
            row = fetch_rows(conn, mapping, [key]).get(key)
        expected = self._expected(mapping, row) if row is not None else None
        actual = self.sink.get_document(mapping.collection, mapping.doc_id(key))
        if expected is None or actual is None:
            return expected is None and actual is None
        return digest(expected) == digest(actual)

    def repair(self, mapping: TableMapping, diff: TableDiff) -> int:
        """Log every differing key; returns the highest seq to wait for (0 if nothing)."""
        keys = diff.missing + diff.stale + diff.extra
        if not keys:
            return 0
        return self.changelog.enqueue(mapping.table, (key_to_log_key(k) for k in keys), "V")
