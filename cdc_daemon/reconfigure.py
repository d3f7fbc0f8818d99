"""What a changed config (or table) owes the collections, on reload, schema change and start.

Each table's mapping is compared with the one its documents were last made by, recorded in the
state table (`mapping:<table>`, JSON: collection, id_prefix, key, where, soft_delete, fields):

- nothing changed: nothing owed;
- only the fields' columns, names or types (`fields`, `include`, `exclude`, `rename`, a column
  added or dropped): every row is sent again (a backfill); a schema change itself is
  evolution.py's (PATCH or rebuild);
- `where`, `soft_delete`, the key, `id_prefix` or the collection's name: a resync (sweep.py:
  a backfill, then every document no live row produces is removed);
- `id_prefix` or the collection's name: also a leftover, the old prefix's or collection's
  documents.

A leftover (`leftover:<table>`, a JSON list) is cleared once the table's resync is done, so
searches find the new documents before the old ones go: the documents the old mapping produced
are deleted from the old collection; a renamed collection that this database created, owns
(ownership.py) and that holds nothing else is dropped instead, with its alias. A collection that
is configured (again) is never touched, and another host's or database's documents never.

The record is written after what it owes, so a kill -9 in between makes the next start owe it
again. A table without a record is new: at start only when other tables have one (the first
start of this version records them all and owes nothing), on reload when the running config did
not have it. (The config as a whole is compared by config.py's `config_changes`.)
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from cdc_daemon.backfill import Backfill
from cdc_daemon.database import Database
from cdc_daemon.log_schema import (
    LEFTOVER_PREFIX,
    MAPPING_PREFIX,
    REBUILD_PREFIX,
    RETIRE_PREFIX,
    LogTables,
    StateStore,
)
from cdc_daemon.ownership import Ownership
from cdc_daemon.row_keys import Key
from cdc_daemon.schema import TableMapping
from cdc_daemon.sink import Sink
from cdc_daemon.sweep import ResyncState
from cdc_daemon.table_rows import rows_by_keys

MEMBERSHIP = ("collection", "id_prefix", "key", "key_affinities", "where", "soft_delete")
PAGE_SIZE = 500  # document ids deleted per request
log = structlog.get_logger("cdc_daemon.reconfigure")


# -- tables -------------------------------------------------------------------------------------


def describe(mapping: TableMapping) -> dict[str, Any]:
    """What makes a table's documents what they are (the schema's flags are evolution.py's)."""
    return {
        "collection": mapping.collection,
        "id_prefix": mapping.id_prefix,
        "key": list(mapping.key),
        "key_affinities": list(mapping.key_affinities),
        "where": mapping.where,
        "soft_delete": mapping.soft_delete,
        # A computed field's expression too (an edited one re-sends every document); a
        # column's entry stays as it was, so older records still match.
        "fields": [[f.column, f.name, f.type, *([f.sql] if f.sql else [])] for f in mapping.fields],
        "manage_collection": mapping.manage_collection,
        # Only when there are some, so that older records still match.
        **({"depends_on": list(mapping.reads)} if mapping.reads else {}),
    }


@dataclass
class Plan:
    """What one comparison found: tables owing a resync, a re-send, and leftovers."""

    resync: list[str] = field(default_factory=list)
    resend: list[str] = field(default_factory=list)
    leftovers: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasons: dict[str, list[str]] = field(default_factory=dict)  # table → changed parts
    unrecorded: list[str] = field(default_factory=list)  # tables whose record is to be written


class Reconfiguration:
    """Compares each table's mapping with its record and records what the change owes."""

    def __init__(self, db: Database, names: LogTables) -> None:
        self.db = db
        self.names = names
        self._state = StateStore(db, names)

    def _read(self, prefix: str) -> dict[str, Any]:
        records = self._state.with_prefix(prefix)
        return {table: json.loads(value) for table, value in records.items()}

    def plan(
        self, mappings: dict[str, TableMapping], previous: dict[str, TableMapping] | None
    ) -> Plan:
        """`previous`: the running mappings on a reload or schema change; None at start."""
        records = self._read(MAPPING_PREFIX)
        plan = Plan()
        for table, mapping in mappings.items():
            now = describe(mapping)
            before = records.get(table)
            if before != now:
                plan.unrecorded.append(table)
            if before is None and previous is not None and table in previous:
                before = describe(previous[table])  # no record yet (an earlier version)
            if before is None:
                new_table = table not in previous if previous is not None else bool(records)
                if new_table:
                    plan.resync.append(table)
                    plan.reasons[table] = ["table added"]
                continue
            # Who manages the collection changes no document: recorded, owes nothing.
            changed = [k for k in now if now[k] != before.get(k) and k != "manage_collection"]
            if not changed:
                continue
            plan.reasons[table] = changed
            if any(k in MEMBERSHIP for k in changed):
                plan.resync.append(table)
            elif "fields" in changed or "depends_on" in changed:
                plan.resend.append(table)
            if before["collection"] != now["collection"] or before["id_prefix"] != now["id_prefix"]:
                plan.leftovers[table] = before
        return plan

    def record(self, mappings: dict[str, TableMapping], plan: Plan) -> None:
        """Record what `plan` owes, then the mappings as the ones the documents are made by."""
        if not plan.unrecorded:
            return  # nothing changed since the last look: no write
        if plan.resync:
            ResyncState(self.db, self.names).begin(plan.resync)
        backfill = Backfill(self.db, self.names)
        owed = self._read(LEFTOVER_PREFIX)
        with self.db.write() as conn:
            for table in plan.resend:
                backfill.start(table, conn)
            for table, before in plan.leftovers.items():
                renamed = before["collection"] != mappings[table].collection
                rebuilds = self._rebuilds(table, before) if renamed else []
                entry = _leftover(before, mappings[table], rebuilds)
                pending = [e for e in owed.get(table, []) if e != entry] + [entry]
                self._state.set(LEFTOVER_PREFIX + table, json.dumps(pending), conn)
                self._forget_rebuild(conn, table, entry)
            for table in plan.unrecorded:
                self._state.set(MAPPING_PREFIX + table, json.dumps(describe(mappings[table])), conn)

    def _rebuilds(self, table: str, before: dict[str, Any]) -> list[str]:
        """Collections of a rebuild (or an alias switch) of the renamed collection in progress."""
        values = [self._state.get(prefix + table) for prefix in (REBUILD_PREFIX, RETIRE_PREFIX)]
        pattern = re.escape(str(before["collection"])) + r"__v\d+"
        return [value for value in values if value is not None and re.fullmatch(pattern, value)]

    def _forget_rebuild(self, conn: Any, table: str, entry: dict[str, Any]) -> None:
        """A rebuild of the old collection is over: its collection is the leftover's to drop
        (evolution.py would otherwise go on filling it for the renamed one)."""
        if entry["collections"]:
            self._state.delete(REBUILD_PREFIX + table, RETIRE_PREFIX + table, conn=conn)

    def leftovers(self, table: str | None = None) -> dict[str, list[dict[str, Any]]]:
        owed = self._read(LEFTOVER_PREFIX)
        return owed if table is None else {table: owed[table]} if table in owed else {}

    def remember(self, table: str, entry: dict[str, Any], collections: list[str]) -> dict[str, Any]:
        """Before an alias is dropped: the collections behind it, so that a crash right after
        still finds them (`collections`). Returns the entry as now recorded."""
        known = [str(c) for c in entry.get("collections", [])]
        updated = {**entry, "collections": known + [c for c in collections if c not in known]}
        pending = [updated if e == entry else e for e in self.leftovers(table).get(table, [])]
        self._write_leftovers(table, pending)
        return updated

    def done(self, table: str, entry: dict[str, Any]) -> None:
        """One leftover cleared."""
        pending = self.leftovers(table).get(table, [])
        self._write_leftovers(table, [e for e in pending if e != entry])

    def _write_leftovers(self, table: str, pending: list[dict[str, Any]]) -> None:
        if pending:
            self._state.set(LEFTOVER_PREFIX + table, json.dumps(pending))
        else:
            self._state.delete(LEFTOVER_PREFIX + table)


def _leftover(before: dict[str, Any], now: TableMapping, rebuilds: list[str]) -> dict[str, Any]:
    renamed = before["collection"] != now.collection
    return {
        "collection": before["collection"],
        "id_prefix": before["id_prefix"],
        "key_affinities": before["key_affinities"],
        # A collection this host managed may be dropped once nothing else is in it.
        "drop": renamed and bool(before.get("manage_collection", True)),
        # Known collections of the old name (a rebuild of it in progress; the one behind its
        # alias, recorded just before the alias is dropped): dropped with it.
        "collections": rebuilds,
    }


def leftover_summary(db: Database, names: LogTables) -> dict[str, list[str]]:
    """For `status`: table → the old collections and prefixes still to clear."""
    owed = Reconfiguration(db, names).leftovers()
    return {
        table: [f"{e['collection']} (id_prefix {e['id_prefix']!r})" for e in entries]
        for table, entries in owed.items()
    }


# -- clearing leftovers -------------------------------------------------------------------------


@dataclass(frozen=True)
class OldDocuments:
    """The documents an earlier mapping of a table made (a leftover) in its old collection."""

    old: TableMapping  # the earlier mapping: its collection, id_prefix and key types
    current: TableMapping

    @classmethod
    def of(cls, mapping: TableMapping, entry: dict[str, Any]) -> OldDocuments:
        affinities = tuple(str(a) for a in entry["key_affinities"])
        old = dataclasses.replace(
            mapping,
            collection=str(entry["collection"]),
            id_prefix=str(entry["id_prefix"]),
            key_affinities=affinities,
            key=tuple(f"key{i}" for i in range(len(affinities))),
        )
        return cls(old, mapping)

    @property
    def same_collection(self) -> bool:
        return self.old.collection == self.current.collection

    def key(self, doc_id: str) -> Key | None:
        """The key of an id the old mapping made and the current one does not claim."""
        key = self.old.key_of(doc_id)
        if key is None or (self.same_collection and self.current.key_of(doc_id) is not None):
            return None
        return key

    def ambiguous(self, key: Key) -> bool:
        """Without an old prefix, in the collection that now has one (shared, maybe), a text
        key could be another host's prefixed id (`b:42` is also the TEXT key 'b:42'): such an
        id is ours only when its row exists."""
        return (
            self.same_collection
            and not self.old.id_prefix
            and any(isinstance(v, str | bytes) for v in key)
        )

    def surely_ours(self, doc_id: str) -> bool:
        """For verify: an id that is certainly this table's old document."""
        key = self.key(doc_id)
        return key is not None and not self.ambiguous(key)


def old_documents(db: Database, names: LogTables, mapping: TableMapping) -> list[OldDocuments]:
    """For verify: the leftovers of `mapping`'s table still in its own collection (an earlier
    id_prefix): their documents are differences, not another host's to skip."""
    entries = Reconfiguration(db, names).leftovers(mapping.table).get(mapping.table, [])
    found = [OldDocuments.of(mapping, entry) for entry in entries]
    return [o for o in found if o.same_collection and o.old.id_prefix != mapping.id_prefix]


@dataclass
class Cleared:
    deleted: int = 0  # documents deleted
    dropped: list[str] = field(default_factory=list)  # collections (and aliases) dropped
    kept: str | None = None  # why the old collection stays


class LeftoverCleaner:
    """Clears a table's leftovers after its resync: on the loop thread, between batches."""

    def __init__(
        self,
        state: Reconfiguration,
        sink: Sink,
        owners: Ownership,
        configured: set[str],
        stop: threading.Event,
        beat: Callable[[], None] = lambda: None,
    ) -> None:
        self.state = state
        self.db = state.db
        self.sink = sink
        self.owners = owners
        self.configured = configured  # every configured collection name: never touched
        self.stop = stop
        self.beat = beat

    def clear(self, mapping: TableMapping, entry: dict[str, Any]) -> Cleared | None:
        """Clear one leftover of `mapping`'s table and record it done; None when stopped
        half-way (done again next time: harmless)."""
        documents = OldDocuments.of(mapping, entry)
        old = documents.old
        same = documents.same_collection
        cleared: Cleared | None
        if same and old.id_prefix == mapping.id_prefix:
            cleared = Cleared(kept="the same collection and prefix again")
        elif not same and old.collection in self.configured:
            cleared = Cleared(kept="configured (again)")
        elif not same and entry.get("drop") and self._name_gone(old.collection):
            cleared = self._drop(None, entry.get("collections", []))  # alias gone before a crash
        elif (owner := self._other_owner(old)) is not None:
            # The old name is another database's (this one is a copy of it, say, renamed to
            # get out of its way): its documents are that database's, never ours to delete.
            log.warning("old collection left alone: another database's", collection=old.collection,
                        owner=owner)
            cleared = Cleared(kept=f"another database's ({owner})")
        else:
            cleared, entry = self._drop_or_delete(documents, entry)
        if cleared is not None:
            self.state.done(mapping.table, entry)
        return cleared

    def _drop_or_delete(
        self, documents: OldDocuments, entry: dict[str, Any]
    ) -> tuple[Cleared | None, dict[str, Any]]:
        old = documents.old
        droppable = not documents.same_collection and entry.get("drop")
        physical = self._droppable(old) if droppable else None
        if physical is not None:
            others = self._count(old.collection, lambda doc_id: documents.key(doc_id) is None)
            if others is None:
                return None, entry
            if not others:
                entry = self.state.remember(documents.current.table, entry, [physical])
                return self._drop(old.collection, entry["collections"]), entry
            log.info("old collection kept: other hosts' documents are in it", collection=physical,
                     documents=others)
        return self._delete(documents), entry

    def _other_owner(self, old: TableMapping) -> str | None:
        """Who owns the collection behind the old name, when the old mapping managed it and it
        is registered to another database (None otherwise: ours, unregistered, or shared)."""
        if not old.manage_collection:
            return None  # a follower's own documents (its id_prefix) in a shared collection
        physical = self.sink.get_alias(old.collection) or old.collection
        return self.owners.other_owner(physical)

    def _name_gone(self, name: str) -> bool:
        """No alias and no collection of that name (GET /collections resolves aliases too)."""
        return self.sink.get_alias(name) is None and self.sink.get_collection(name) is None

    def _droppable(self, old: TableMapping) -> str | None:
        """The collection behind the old alias when this database may drop it: named by
        cdc-daemon (`<alias>__v<N>`) and ours (ownership.py)."""
        physical = self.sink.get_alias(old.collection)
        if physical is None or not re.fullmatch(re.escape(old.collection) + r"__v\d+", physical):
            return None  # a plain collection, or one cdc-daemon did not name: never dropped
        if not self.owners.droppable(physical):
            log.warning("old collection not dropped: another database's", collection=physical)
            return None
        return physical

    def _drop(self, alias: str | None, collections: list[str]) -> Cleared:
        """The alias first (a collection an alias points to can't be dropped), then each
        collection still there, unless another alias points to it (searches use it)."""
        cleared = Cleared()
        if alias is not None:
            self.sink.delete_alias(alias)
            cleared.dropped.append(f"alias {alias}")
        for name in collections:
            if self.sink.get_collection(name) is None or self.sink.aliases_to(name):
                continue
            if not self.owners.droppable(name):
                continue
            self.sink.delete_collection(name)
            self.owners.release(name)
            cleared.dropped.append(name)
        return cleared

    def _count(self, collection: str, wanted: Callable[[str], bool]) -> int | None:
        count = 0
        for i, document in enumerate(self.sink.export(collection)):
            count += wanted(str(document.get("id", "")))
            if i % PAGE_SIZE == 0:
                self.beat()
                if self.stop.is_set():
                    return None
        return count

    def _delete(self, documents: OldDocuments) -> Cleared | None:
        """Delete the old mapping's documents, a page at a time while streaming the export
        (as the sweep does). An ambiguous id (OldDocuments.ambiguous) only when its row exists;
        the others are counted in `kept`."""
        collection = documents.old.collection
        cleared = Cleared()
        page: dict[str, Key] = {}
        unsure = 0
        for document in self.sink.export(collection):
            doc_id = str(document.get("id", ""))
            key = documents.key(doc_id)
            if key is not None:
                page[doc_id] = key
            if len(page) >= PAGE_SIZE:
                unsure += self._delete_page(documents, page, cleared)
                page = {}
                self.beat()
                if self.stop.is_set():
                    return None
        if page:
            unsure += self._delete_page(documents, page, cleared)
        if unsure:
            cleared.kept = (
                f"{unsure} ids without a prefix and without a row could be another host's:"
                " not deleted (verify --repair once every host has its id_prefix)"
            )
        return cleared

    def _delete_page(self, documents: OldDocuments, page: dict[str, Key], cleared: Cleared) -> int:
        """Deletes the page's documents; returns how many were left as ambiguous."""
        ambiguous = [k for k in page.values() if documents.ambiguous(k)]
        rows: dict[Key, Any] = {}
        if ambiguous:
            with self.db.read() as conn:  # a row at all, whatever `where` says
                rows = rows_by_keys(conn, documents.current, ambiguous, filtered=False)
        ids = [i for i, k in page.items() if not documents.ambiguous(k) or k in rows]
        if ids:
            cleared.deleted += sum(r.ok for r in self.sink.delete(documents.old.collection, ids))
        return len(page) - len(ids)
