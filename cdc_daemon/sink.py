"""The Typesense side, over HTTP (httpx). The core sees documents and results, never HTTP.

Every httpx error and HTTP status is translated here into the errors of errors.py. There are no
retries in this module: the sync loop (through retry.py) decides when to try again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from cdc_daemon.errors import (
    AuthError,
    CollectionMissing,
    TargetError,
    TargetTimeout,
    TargetUnavailable,
)
from cdc_daemon.retry import backoff_delay

IDS_PER_FILTER_DELETE = 500
NOT_READY_MARKERS = ("Not Ready or Lagging", "Could not find a leader")


@dataclass(frozen=True)
class DocResult:
    """The outcome for one document. `retryable` failures are not the document's fault."""

    ok: bool
    error: str | None = None
    retryable: bool = False


OK = DocResult(ok=True)


class _Node:
    def __init__(self, url: str) -> None:
        self.url = url
        self.failures = 0
        self.down_until = 0.0

    def healthy(self, now: float) -> bool:
        return now >= self.down_until

    def mark_failed(self) -> None:
        self.failures += 1
        self.down_until = time.monotonic() + backoff_delay(self.failures, cap=30.0)

    def mark_ok(self) -> None:
        self.failures = 0
        self.down_until = 0.0


class TypesenseSink:
    """A Typesense server or cluster. `api_key` is called for every request (keys rotate)."""

    def __init__(
        self,
        nodes: list[str],
        api_key: Callable[[], str],
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        on_auth_error: Callable[[str], None] | None = None,
    ) -> None:
        self._nodes = [_Node(url) for url in nodes]
        self._api_key = api_key
        # Called with the refused key when Typesense answers 401/403 (kms.py fetches a new one).
        self._on_auth_error = on_auth_error
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
            transport=transport,
            headers={"Content-Type": "application/json"},
        )
        self.up = False  # did the last call reach a node that answered?

    def close(self) -> None:
        self._client.close()

    # -- the request layer: node choice, error translation ---------------------------------

    def _ordered_nodes(self) -> list[_Node]:
        now = time.monotonic()
        healthy = [n for n in self._nodes if n.healthy(now)]
        return healthy or sorted(self._nodes, key=lambda n: n.down_until)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        last: TargetUnavailable | None = None
        for node in self._ordered_nodes():
            try:
                response = self._send(node, method, path, **kwargs)
            except TargetUnavailable as exc:
                node.mark_failed()
                last = exc
                continue
            node.mark_ok()
            self.up = True
            return response
        self.up = False
        assert last is not None
        raise last

    def _send(
        self, node: _Node, method: str, path: str, key_retried: bool = False, **kwargs: Any
    ) -> httpx.Response:
        key = self._api_key()
        headers = {"X-TYPESENSE-API-KEY": key}
        try:
            response = self._client.request(method, node.url + path, headers=headers, **kwargs)
        except httpx.TimeoutException:
            raise TargetTimeout(f"{node.url}: timed out ({method} {path.split('?')[0]})") from None
        except httpx.TransportError as exc:
            raise TargetUnavailable(f"{node.url}: {type(exc).__name__}: {exc}") from None
        status = response.status_code
        if status >= 500 or status == 429 or any(m in response.text for m in NOT_READY_MARKERS):
            raise TargetUnavailable(f"{node.url}: HTTP {status}: {_message(response)}")
        if status in (401, 403):
            if self._key_refused(key) and not key_retried:
                # A new key came (KMS rotation): the refused request was not applied; send it
                # again, once, with the new key.
                return self._send(node, method, path, key_retried=True, **kwargs)
            raise AuthError(f"{node.url}: HTTP {status}: the API key was refused")
        return response

    def _key_refused(self, key: str) -> bool:
        """Report a refused key; True when a different key is now available."""
        if self._on_auth_error is None:
            return False
        self._on_auth_error(key)
        return self._api_key() != key

    def _json(self, method: str, path: str, ok: tuple[int, ...] = (200, 201), **kw: Any) -> Any:
        response = self._request(method, path, **kw)
        if response.status_code not in ok:
            raise TargetError(f"{method} {path}: HTTP {response.status_code}: {_message(response)}")
        return response.json() if response.status_code != 404 else None

    # -- collections ------------------------------------------------------------------------

    def get_collection(self, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._json(
            "GET", f"/collections/{quote(name, safe='')}", ok=(200, 404)
        )
        return result

    def create_collection(self, schema: dict[str, Any]) -> None:
        self._json("POST", "/collections", content=json.dumps(schema))

    def add_fields(self, collection: str, fields: list[dict[str, Any]]) -> str | None:
        """Add fields in place (PATCH); None when done, else Typesense's reason for refusing."""
        response = self._request(
            "PATCH",
            f"/collections/{quote(collection, safe='')}",
            content=json.dumps({"fields": fields}),
        )
        return None if response.status_code == 200 else _message(response)

    def delete_collection(self, physical_name: str) -> None:
        """Drop a collection by its real name. Refuses an alias name: Typesense would drop the
        collection behind the alias instead."""
        if self.get_alias(physical_name) is not None:
            raise TargetError(f"refusing to delete {physical_name!r}: it is an alias")
        self._json("DELETE", f"/collections/{quote(physical_name, safe='')}", ok=(200, 404))

    def get_alias(self, name: str) -> str | None:
        """The collection an alias points to, or None when there is no such alias."""
        result = self._json("GET", f"/aliases/{quote(name, safe='')}", ok=(200, 404))
        return None if result is None else str(result["collection_name"])

    def set_alias(self, name: str, collection: str) -> None:
        """Point an alias at a collection; one atomic switch for searches."""
        self._json(
            "PUT",
            f"/aliases/{quote(name, safe='')}",
            content=json.dumps({"collection_name": collection}),
        )

    def health(self) -> list[str]:
        """One problem line per node that is unreachable or refuses the key."""
        problems = []
        for node in self._nodes:
            try:
                response = self._send(node, "GET", "/collections?limit=1")
                if response.status_code != 200:
                    problems.append(f"typesense node {node.url}: HTTP {response.status_code}")
            except AuthError:
                problems.append(f"typesense node {node.url}: the API key was refused (401)")
            except TargetUnavailable as exc:
                problems.append(f"typesense node {node.url}: unreachable: {exc}")
        return problems

    # -- documents --------------------------------------------------------------------------

    def _physical(self, collection: str) -> str:
        """The real collection behind an alias. Writes are addressed to it, never to the alias:
        Typesense 0.24.1 loses writes addressed to an alias when it restarts before its next
        snapshot (it replays its log without resolving the alias)."""
        return self.get_alias(collection) or collection

    def upsert(
        self, collection: str, documents: list[dict[str, Any]], dirty_values: str = "reject"
    ) -> list[DocResult]:
        """One JSONL import; one result per document, in order. Reads every result line."""
        if not documents:
            return []
        collection = self._physical(collection)
        body = "\n".join(json.dumps(d, ensure_ascii=False, allow_nan=False) for d in documents)
        response = self._request(
            "POST",
            f"/collections/{quote(collection, safe='')}/documents/import"
            f"?action=upsert&dirty_values={dirty_values}",
            content=body.encode("utf-8"),
        )
        if response.status_code != 200:
            raise _collection_error(collection, response)
        lines = [line for line in response.text.split("\n") if line.strip()]
        results = [_import_line(line) for line in lines[: len(documents)]]
        missing = DocResult(ok=False, error="no result line for this document", retryable=True)
        return results + [missing] * (len(documents) - len(results))

    def delete(self, collection: str, ids: list[str]) -> list[DocResult]:
        """Delete documents by id; a document that is already gone counts as deleted."""
        if not ids:
            return []
        path = f"/collections/{quote(self._physical(collection), safe='')}/documents"
        safe = [i for i, doc_id in enumerate(ids) if _filterable(doc_id)]
        results: list[DocResult] = [OK] * len(ids)
        for i, doc_id in enumerate(ids):
            if not _filterable(doc_id):
                results[i] = self._delete_one(path, doc_id)
        for start in range(0, len(safe), IDS_PER_FILTER_DELETE):
            chunk = [ids[i] for i in safe[start : start + IDS_PER_FILTER_DELETE]]
            self._delete_filtered(path, chunk)
        return results

    def _delete_filtered(self, path: str, ids: list[str]) -> None:
        """filter_by deletes answer 200 with a count, even for a malformed filter: when the count
        is short, halve the list until each missing id has been deleted one by one (404 = gone)."""
        if len(ids) == 1:
            self._raise_for_doc(self._delete_one(path, ids[0]))
            return
        filter_by = "id:[" + ",".join(f"`{doc_id}`" for doc_id in ids) + "]"
        response = self._request(
            "DELETE", path, params={"filter_by": filter_by, "batch_size": len(ids)}
        )
        if response.status_code == 404:
            raise _collection_error(path.split("/")[2], response)
        if response.status_code != 200:
            raise TargetError(f"DELETE {path}: HTTP {response.status_code}: {_message(response)}")
        if int(response.json().get("num_deleted", 0)) == len(ids):
            return
        middle = len(ids) // 2
        self._delete_filtered(path, ids[:middle])
        self._delete_filtered(path, ids[middle:])

    def _delete_one(self, path: str, doc_id: str) -> DocResult:
        response = self._request("DELETE", f"{path}/{quote(doc_id, safe='')}")
        if response.status_code in (200, 404):
            if response.status_code == 404 and "Collection" in response.text:
                raise _collection_error(path.split("/")[2], response)
            return OK
        return DocResult(ok=False, error=f"HTTP {response.status_code}: {_message(response)}")

    @staticmethod
    def _raise_for_doc(result: DocResult) -> None:
        if not result.ok:
            raise TargetError(result.error or "delete failed")

    def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._json(
            "GET",
            f"/collections/{quote(collection, safe='')}/documents/{quote(doc_id, safe='')}",
            ok=(200, 404),
        )
        return result

    def export(self, collection: str) -> Iterator[dict[str, Any]]:
        """Stream every document of a collection (JSONL), without holding them all in memory."""
        last = TargetUnavailable("no Typesense node to export from")
        for node in self._ordered_nodes():
            url = f"{node.url}/collections/{quote(collection, safe='')}/documents/export"
            key = self._api_key()
            headers = {"X-TYPESENSE-API-KEY": key}
            try:
                with self._client.stream("GET", url, headers=headers) as response:
                    if response.status_code in (401, 403):
                        self._key_refused(key)
                        raise AuthError(f"{node.url}: HTTP {response.status_code} on export")
                    if response.status_code == 404:
                        return  # no such collection (yet): nothing in it
                    if response.status_code != 200:
                        response.read()
                        raise TargetUnavailable(
                            f"{node.url}: export of {collection!r}: HTTP {response.status_code}"
                        )
                    for line in _jsonl_lines(response.iter_bytes()):
                        if line.strip():
                            yield json.loads(line)
                    return
            except httpx.TransportError as exc:
                node.mark_failed()
                last = TargetUnavailable(f"{node.url}: export failed: {exc}")
                continue
        raise last


def _jsonl_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """Lines of a JSONL stream, split on "\\n" only: httpx's iter_lines() also splits on the
    Unicode line breaks (U+0085, U+2028, ...) that JSON strings may hold unescaped."""
    rest = b""
    for chunk in chunks:
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            yield line.decode("utf-8")
    if rest:
        yield rest.decode("utf-8")


def _filterable(doc_id: str) -> bool:
    """Ids a `filter_by=id:[`...`]` can match (design.md: never backticks or edge spaces)."""
    return bool(doc_id) and "`" not in doc_id and doc_id == doc_id.strip()


def _import_line(line: str) -> DocResult:
    try:
        result = json.loads(line)
    except ValueError:
        return DocResult(ok=False, error=f"unreadable result line: {line[:200]}", retryable=True)
    if result.get("success"):
        return OK
    error = str(result.get("error", "rejected"))
    code = int(result.get("code") or 0)
    retryable = code >= 500 or code in (0, 429) or any(m in error for m in NOT_READY_MARKERS)
    return DocResult(ok=False, error=f"{code}: {error}" if code else error, retryable=retryable)


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text))[:300]
    except ValueError:
        return response.text[:300]


def _collection_error(collection: str, response: httpx.Response) -> TargetError:
    if response.status_code == 404:
        return CollectionMissing(f"collection {collection!r} not found: {_message(response)}")
    return TargetError(
        f"import into {collection!r}: HTTP {response.status_code}: {_message(response)}"
    )
