"""FakeSink: the Sink protocol (cdc_daemon/sink.py) in memory, for unit tests of sync, verify
and evolution where a real Typesense adds nothing. The real-server tests stay the proof.

It keeps what the core relies on: collections by real name, aliases that resolve on reads and
writes, documents by id; one import result per document (an id the server can't take, or one
a test marks in `rejected`, is refused as a document, not retryable); a delete of a document
that is gone counts as deleted; a write to a missing collection raises CollectionMissing;
`delete_collection` refuses an alias or a collection an alias points to."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

from cdc_daemon.errors import CollectionMissing, TargetError
from cdc_daemon.sink import OK, DocResult, DocumentBatch, id_problem


class FakeSink:
    """In memory; one thread (no locks). `calls` records (method, collection) of the document
    calls, for tests that count round trips."""

    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}  # real name → schema
        self.aliases: dict[str, str] = {}  # alias → real name
        self.documents: dict[str, dict[str, dict[str, Any]]] = {}  # real name → id → document
        self.rejected: dict[str, str] = {}  # document id → the error its import line gets
        self.uncertain_writes = 0
        self.calls: list[tuple[str, str]] = []

    def _real(self, name: str) -> str:
        return self.aliases.get(name, name)

    def _collection(self, name: str) -> dict[str, dict[str, Any]]:
        """A collection's documents by its name or an alias; CollectionMissing without it."""
        real = self._real(name)
        if real not in self.documents:
            raise CollectionMissing(f"collection {name!r} not found")
        return self.documents[real]

    # -- documents -------------------------------------------------------------------------

    def upsert(
        self, collection: str, documents: DocumentBatch, dirty_values: str = "reject"
    ) -> list[DocResult]:
        self.calls.append(("upsert", collection))
        stored = self._collection(collection)
        return [self._upsert_one(stored, d) for d in documents]

    def _upsert_one(
        self, stored: dict[str, dict[str, Any]], document: dict[str, Any] | str
    ) -> DocResult:
        parsed = json.loads(document) if isinstance(document, str) else copy.deepcopy(document)
        doc_id = parsed.get("id")
        if not isinstance(doc_id, str) or id_problem(doc_id) is not None:
            return DocResult(ok=False, error="400: Document's `id` field should be a string.")
        if doc_id in self.rejected:
            return DocResult(ok=False, error=f"400: {self.rejected[doc_id]}")
        stored[doc_id] = parsed  # an upsert replaces the whole document
        return OK

    def delete(self, collection: str, ids: list[str]) -> list[DocResult]:
        self.calls.append(("delete", collection))
        if not ids:
            return []
        stored = self._collection(collection)
        results = []
        for doc_id in ids:
            problem = id_problem(doc_id)
            if problem is None:
                stored.pop(doc_id, None)  # one that is gone counts as deleted
            results.append(OK if problem is None else DocResult(ok=False, error=problem))
        return results

    def export(self, collection: str) -> Iterator[dict[str, Any]]:
        self.calls.append(("export", collection))
        stored = self.documents.get(self._real(collection), {})  # none: nothing to export
        for document in list(stored.values()):
            yield copy.deepcopy(document)

    def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        found = self.documents.get(self._real(collection), {}).get(doc_id)
        return copy.deepcopy(found) if found is not None else None

    def write_document(
        self, collection: str, document: dict[str, Any], replace: bool = False
    ) -> bool:
        stored = self._collection(collection)
        if document["id"] in stored and not replace:
            return False
        stored[document["id"]] = copy.deepcopy(document)
        return True

    def delete_document(self, collection: str, doc_id: str) -> None:
        self.documents.get(self._real(collection), {}).pop(doc_id, None)

    # -- collections and aliases -----------------------------------------------------------

    def get_collection(self, name: str) -> dict[str, Any] | None:
        schema = self.schemas.get(self._real(name))
        return copy.deepcopy(schema) if schema is not None else None

    def create_collection(self, schema: dict[str, Any]) -> bool:
        name = schema["name"]
        if name in self.schemas:
            return False
        self.schemas[name] = copy.deepcopy(schema)
        self.documents[name] = {}
        return True

    def add_fields(self, collection: str, fields: list[dict[str, Any]]) -> str | None:
        schema = self.schemas.get(self._real(collection))
        if schema is None:
            return "Not Found"
        present = {f["name"] for f in schema["fields"]}
        schema["fields"] += [copy.deepcopy(f) for f in fields if f["name"] not in present]
        return None

    def delete_collection(self, physical_name: str) -> None:
        if physical_name in self.aliases:
            raise TargetError(f"refusing to delete {physical_name!r}: it is an alias")
        users = self.aliases_to(physical_name)
        if users:
            raise TargetError(
                f"refusing to delete {physical_name!r}: alias {users[0]!r} points to it"
            )
        self.schemas.pop(physical_name, None)
        self.documents.pop(physical_name, None)

    def aliases_to(self, physical_name: str) -> list[str]:
        return [alias for alias, real in self.aliases.items() if real == physical_name]

    def get_alias(self, name: str) -> str | None:
        return self.aliases.get(name)

    def set_alias(self, name: str, collection: str) -> None:
        self.aliases[name] = collection

    def delete_alias(self, name: str) -> None:
        self.aliases.pop(name, None)
