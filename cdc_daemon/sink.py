"""What the core needs of the search side: the `Sink` protocol (sync, evolution, verify, sweep,
ownership and reconfigure depend on it, never on HTTP), a document's result, how documents are
encoded, and the limits on ids and request sizes. The Typesense implementation is
cdc_daemon.typesense (TypesenseSink); tests/support/fake_sink.py is one in memory.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, Protocol

# A document id must fit in a URL (a delete by path or by filter): httpx refuses URLs over
# 64 KiB, and percent-encoding can triple an id's UTF-8 bytes. Longer ids are refused per row.
MAX_ID_BYTES = 8192
IMPORT_BYTES = 64 * 1024 * 1024  # one import's body at most; a larger batch is split
FILTER_BYTES = 32_768  # the percent-encoded filter_by of one delete request, at most


@dataclass(frozen=True)
class DocResult:
    """The outcome for one document. `retryable` failures are not the document's fault."""

    ok: bool
    error: str | None = None
    retryable: bool = False


OK = DocResult(ok=True)
DocumentBatch = Sequence[dict[str, Any] | str]  # documents, or ones encoded by encode_document
# One encoder for every document: json.dumps() with options builds a new one per call.
# ASCII only (non-ASCII as \uXXXX escapes): Typesense 0.24.1 can drop a multi-byte UTF-8
# character that straddles a buffer boundary of a large import (seen: one emoji lost from a
# 1 MiB text under load); escapes have no bytes to split.
encode_document = json.JSONEncoder(ensure_ascii=True, allow_nan=False).encode


def _escape_non_ascii(error: UnicodeError) -> tuple[str, int]:
    """A codec error handler: a run of non-ASCII characters (only ever inside JSON strings)
    becomes the \\uXXXX escapes json.dumps(ensure_ascii=True) writes for it."""
    assert isinstance(error, UnicodeEncodeError)
    run = error.object[error.start : error.end]
    return encode_basestring_ascii(run)[1:-1], error.end


codecs.register_error("cdc-json-ascii", _escape_non_ascii)


def ascii_json_body(lines: Iterable[str]) -> bytes:
    """JSONL lines as an ASCII-only body (lines built by SQLite may hold raw UTF-8; see above).
    An ASCII body costs one encode; the handler runs only for non-ASCII characters."""
    return "\n".join(lines).encode("ascii", "cdc-json-ascii")


class EncodedLines(list[str]):
    """Documents already encoded, with their import body (ascii_json_body) built at once: a
    batch read ahead (sync.py) has its body ready when its import is due, so the loop's thread
    does not build it between two imports (while the read-ahead thread holds the GIL). The
    documents are held twice until the batch is sent: MAX_BATCH_BYTES bounds the body."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(lines)
        self.body = ascii_json_body(lines)


def id_problem(doc_id: str) -> str | None:
    """Why an id can't be a Typesense document id this daemon can also delete (None: it can)."""
    if not doc_id:
        return "the document id is empty"
    size = len(doc_id.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        return f"the document id is {size} bytes; at most {MAX_ID_BYTES} fit in a delete request"
    return None


class Sink(Protocol):
    """The search side as the core uses it (TypesenseSink, or a fake in tests). Every method may
    raise the errors of errors.py (TargetUnavailable and its kin: retried by the caller); none
    retries itself. Collections are named by their real name or an alias unless said.

    Threads: the daemon loop calls every method; admin requests (verify and its repair: reads of
    aliases, collections and documents, exports, deletes) call it on worker threads at the same
    time, so the daemon's must allow that (TypesenseSink does; FakeSink is for tests)."""

    @property
    def uncertain_writes(self) -> int:
        """Writes so far whose outcome is unknown (may be applied later, after newer ones)."""
        ...

    def upsert(
        self, collection: str, documents: DocumentBatch, dirty_values: str = "reject"
    ) -> list[DocResult]:
        """One result per document (a str is one already encoded by encode_document), in order;
        written to the real collection behind an alias."""
        ...

    def delete(self, collection: str, ids: list[str]) -> list[DocResult]:
        """One result per id; a document already gone counts as deleted."""
        ...

    def export(self, collection: str) -> Iterator[dict[str, Any]]:
        """Every document, streamed; none when there is no such collection."""
        ...

    def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None: ...

    def write_document(
        self, collection: str, document: dict[str, Any], replace: bool = False
    ) -> bool:
        """Create (False when the id exists), or replace; CollectionMissing without it."""
        ...

    def delete_document(self, collection: str, doc_id: str) -> None: ...

    def get_collection(self, name: str) -> dict[str, Any] | None: ...

    def create_collection(self, schema: dict[str, Any]) -> bool:
        """False when a collection of that name exists already."""
        ...

    def add_fields(self, collection: str, fields: list[dict[str, Any]]) -> str | None:
        """None when added (or there already), else the server's reason for refusing."""
        ...

    def delete_collection(self, physical_name: str) -> None:
        """By its real name; refused (TargetError) for an alias or a collection aliased."""
        ...

    def aliases_to(self, physical_name: str) -> list[str]: ...

    def get_alias(self, name: str) -> str | None: ...

    def set_alias(self, name: str, collection: str) -> None: ...

    def delete_alias(self, name: str) -> None: ...
