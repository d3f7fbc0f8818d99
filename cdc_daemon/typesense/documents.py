"""The documents API: imports, deletes (by filter and by id), one document read or written,
and the streamed export of a collection."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import structlog

import cdc_daemon.typesense.answers as answers
from cdc_daemon.errors import TargetError
from cdc_daemon.sink import (
    FILTER_BYTES,
    IMPORT_BYTES,
    OK,
    DocResult,
    DocumentBatch,
    EncodedLines,
    ascii_json_body,
    encode_document,
    id_problem,
)
from cdc_daemon.typesense.client import Client
from cdc_daemon.typesense.collections import CollectionsApi
from cdc_daemon.typesense.import_groups import ImportGroups

log = structlog.get_logger("cdc_daemon.sink")


class Documents:
    """Documents of the collections. Writes go to the real collection behind an alias
    (CollectionsApi.physical). Any thread (the loop; admin verify and repair): each call is its
    own requests, and a missing collection drops the shared, locked alias cache."""

    def __init__(self, client: Client, collections_api: CollectionsApi) -> None:
        self._client = client
        self._collections_api = collections_api
        self._groups = ImportGroups(self._import)

    def upsert(
        self, collection: str, documents: DocumentBatch, dirty_values: str = "reject"
    ) -> list[DocResult]:
        """JSONL imports; one result per document, in order. Reads every result line.

        A document may come already encoded (a str from encode_document), or all of them with
        their body (EncodedLines). A body larger than IMPORT_BYTES goes in several imports, in
        order; small ones from several threads to one collection may go together
        (import_groups.py)."""
        if not documents:
            return []
        collection = self._collections_api.physical(collection)
        lines: list[str]
        if isinstance(documents, EncodedLines):
            lines, body = documents, documents.body
        else:
            lines = [d if isinstance(d, str) else encode_document(d) for d in documents]
            body = ascii_json_body(lines)
        if len(body) <= IMPORT_BYTES:
            return self._groups.upsert(collection, dirty_values, body, len(lines))
        results: list[DocResult] = []
        groups = _sized_groups(lines, lambda line: len(ascii_json_body([line])) + 1, IMPORT_BYTES)
        for group in groups:
            results += self._import(collection, dirty_values, ascii_json_body(group), len(group))
        return results

    def _import(
        self, collection: str, dirty_values: str, body: bytes, count: int
    ) -> list[DocResult]:
        response = self._client.request(
            "POST",
            f"/collections/{quote(collection, safe='')}/documents/import"
            f"?action=upsert&dirty_values={dirty_values}",
            node_check=answers.import_not_ready,
            content=body,
        )
        if response.status_code != 200:
            self._collections_api.aliases.clear()
            raise answers.collection_error(collection, response)
        return answers.import_results(response.text, count)

    def delete(self, collection: str, ids: list[str]) -> list[DocResult]:
        """Delete documents by id; a document that is already gone counts as deleted.

        Ids go in `filter_by` requests sized by bytes (FILTER_BYTES); an id no filter can carry
        safely goes alone, by path (see _document_path). An id that fits neither is refused for
        its row alone."""
        if not ids:
            return []
        physical = self._collections_api.physical(collection)
        path = f"/collections/{quote(physical, safe='')}/documents"
        results: list[DocResult] = [OK] * len(ids)
        filtered: list[str] = []
        for i, doc_id in enumerate(ids):
            problem = id_problem(doc_id)
            if problem is not None:
                results[i] = DocResult(ok=False, error=problem)
            elif _filterable(doc_id):
                filtered.append(doc_id)
            else:
                results[i] = self._delete_one(path, doc_id)
        # Each id costs its encoded text, its backticks and a comma; an id over the limit alone.
        for chunk in _sized_groups(filtered, lambda i: len(quote(i, safe="")) + 9, FILTER_BYTES):
            self._delete_filtered(path, chunk)
        return results

    def _delete_filtered(self, path: str, ids: list[str]) -> None:
        """One filter_by delete. It answers 200 with a count even when Typesense could not parse
        the filter (then it deletes nothing at all). So a count above 0 proves the filter was
        read and the ids it did not match are already gone; a count of 0 is settled one id at a
        time (404 = already gone), and so is a filter the server refuses (400)."""
        response = self._client.request(
            "DELETE", path, params={"filter_by": _id_filter(ids), "batch_size": len(ids)}
        )
        if response.status_code == 404:
            self._collections_api.aliases.clear()
            raise answers.collection_error(path.split("/")[2], response)
        if response.status_code == 400:  # a filter this server can't parse: settled id by id
            error = answers.message(response)
            log.warning("filter delete refused; deleting one by one", error=error)
        elif response.status_code != 200:
            raise answers.http_error(f"DELETE {path}", response)
        else:
            answer = answers.json_object(response, f"DELETE {path}")
            if answers.count_field(answer, "num_deleted", f"DELETE {path}", missing=0) > 0:
                return
        for doc_id in ids:
            result = self._delete_one(path, doc_id)
            if not result.ok:
                raise TargetError(result.error or "delete failed")

    def _delete_one(self, path: str, doc_id: str) -> DocResult:
        """DELETE by id. Since v26 `ignore_not_found` answers 200 for a document that is gone,
        so a 404 can only mean the collection; before, a 404 about the document says so by the
        start of its message (the id it quotes may hold any words)."""
        newer = self._client.server_version() >= (26,)
        query = "?ignore_not_found=true" if newer else ""
        response = self._client.request("DELETE", f"{path}/{_document_path(doc_id)}{query}")
        if response.status_code == 404:
            if not newer and answers.message(response).startswith(answers.DOCUMENT_NOT_FOUND):
                return OK  # already gone (never there, or deleted twice)
            self._collections_api.aliases.clear()  # else the collection (or its alias) is gone
            raise answers.collection_error(path.split("/")[2], response)
        if response.status_code != 200:
            status = response.status_code
            return DocResult(ok=False, error=f"HTTP {status}: {answers.message(response)}")
        answered = answers.answered_id(response)
        if answered != doc_id:  # it deleted something else: never go on silently
            raise TargetError(
                f"DELETE {path}/...: Typesense answered for id {answered!r}, not {doc_id!r}"
            )
        return OK

    def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """The document with this id, None when there is none (or no such collection)."""
        path = f"/collections/{quote(collection, safe='')}/documents/{_document_path(doc_id)}"
        result = self._client.json_object("GET", path, ok=(200, 404))
        if result is not None and result.get("id") != doc_id:
            raise TargetError(f"GET {path}: answered id {result.get('id')!r}, not {doc_id!r}")
        return result

    def write_document(
        self, collection: str, document: dict[str, Any], replace: bool = False
    ) -> bool:
        """One document, to a collection by its real name (ownership.py's registry).
        `action=create` unless `replace`: False when that id exists already (409), which makes
        it a compare-and-set. CollectionMissing when there is no such collection."""
        response = self._client.request(
            "POST",
            f"/collections/{quote(collection, safe='')}/documents"
            f"?action={'upsert' if replace else 'create'}",
            content=encode_document(document),
        )
        if response.status_code == 409 and not replace:
            return False
        if response.status_code == 404:
            raise answers.collection_error(collection, response)
        if response.status_code not in (200, 201):
            raise answers.http_error(f"write to {collection!r}", response)
        return True

    def delete_document(self, collection: str, doc_id: str) -> None:
        """Delete one document by id; one that is gone already (or its collection) is fine."""
        path = f"/collections/{quote(collection, safe='')}/documents/{_document_path(doc_id)}"
        self._client.call("DELETE", path, (200, 404))

    def export(self, collection: str) -> Iterator[dict[str, Any]]:
        """Stream every document of a collection (JSONL), without holding them all in memory;
        none when there is no such collection (yet). Fails over to the next node only before the
        first document (Client.stream_lines)."""
        path = f"/collections/{quote(collection, safe='')}/documents/export"
        for line in self._client.stream_lines(path):
            yield answers.exported_document(line, f"GET {path}")


def _sized_groups(items: list[str], cost: Callable[[str], int], limit: int) -> Iterator[list[str]]:
    """Items in order, in groups whose costs add up to at most `limit` (a costlier item alone)."""
    group: list[str] = []
    size = 0
    for item in items:
        if group and size + cost(item) > limit:
            yield group
            group, size = [], 0
        group.append(item)
        size += cost(item)
    if group:
        yield group


def _filterable(doc_id: str) -> bool:
    """Ids a `filter_by=id:[`...`]` can match, and only those. Measured on 0.24.1: a backtick, a
    backslash or leading/trailing white space can make Typesense drop the whole filter (it then
    deletes nothing and says so). Since v28 a `*` in the list matches every document: an id with
    a `*` never goes into a filter. In v26-v28 a `[` or `]` fails the whole filter (400)."""
    return (
        bool(doc_id)
        and "`" not in doc_id
        and "\\" not in doc_id
        and "*" not in doc_id
        and "[" not in doc_id
        and "]" not in doc_id
        and doc_id == doc_id.strip()
    )


def _id_filter(ids: list[str]) -> str:
    return "id:[" + ",".join(f"`{doc_id}`" for doc_id in ids) + "]"


def _document_path(doc_id: str) -> str:
    """An id as one path segment that means exactly that id. quote() leaves `.` alone, and httpx
    removes `.` and `..` segments (`DELETE .../documents/..` became `DELETE /collections/c`);
    Typesense matches routes on the raw path and decodes an id only after, so a percent-encoded
    dot stays in the id, and so does an encoded first character: no id (`search`, `export`)
    can match a route's literal segment."""
    path = quote(doc_id, safe="").replace(".", "%2E")
    if path and (path[0].isalnum() or path[0] in "-_~"):
        path = f"%{ord(path[0]):02X}{path[1:]}"
    return path
