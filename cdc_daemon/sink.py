"""The Typesense side, over HTTP (httpx). The core sees documents and results, never HTTP.

Every httpx error and HTTP status is translated here into the errors of errors.py. There are no
retries in this module: the sync loop (through retry.py) decides when to try again.
"""

from __future__ import annotations

import codecs
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
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
NODE_BACKOFF_CAP = 15.0  # seconds; a recovered node gets traffic again within this
HUNG_BACKOFF_CAP = 300.0  # seconds; for a node whose writes hang (each try costs a timeout)
PROBE_TIMEOUT_CAP = 5.0  # seconds for a node's /health probe (at most typesense.timeout)
ALIAS_TTL = 1.0  # seconds a write may use an alias lookup (one GET per batch was ~10% of one)


@dataclass(frozen=True)
class DocResult:
    """The outcome for one document. `retryable` failures are not the document's fault."""

    ok: bool
    error: str | None = None
    retryable: bool = False


OK = DocResult(ok=True)
SUCCESS_LINE = '{"success":true}'  # what Typesense 0.24 answers for an accepted document
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


class _Node:
    """One node's health: failures in a row, and until when it is left alone (backoff).

    A node where a write hung or its connection broke after sending is healthy again only after
    a write succeeds there: answering reads (or `/health`) proves little when its writes hang
    (a follower cut off from the leader), and resetting its backoff on a read would cost a
    timeout on every batch."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.failures = 0
        self.down_until = 0.0
        self.last_error = ""
        self.last_contact = 0.0  # monotonic time of the last answer or failure
        self.write_failed = False

    @property
    def up(self) -> bool:
        return self.failures == 0

    def due(self, now: float) -> bool:
        """Healthy, or its backoff is over (it gets a /health probe before real traffic)."""
        return self.failures == 0 or now >= self.down_until

    def mark_failed(self, error: str, write: bool = False, hung_initial: float = 10.0) -> None:
        """`write`: a write hung or broke there. Such a node is left alone much longer (from
        `hung_initial` seconds, doubling up to HUNG_BACKOFF_CAP): each try costs a timeout and
        a re-send of the batch."""
        self.last_contact = time.monotonic()
        self.failures += 1
        self.last_error = error
        self.write_failed = self.write_failed or write
        if self.write_failed:
            delay = backoff_delay(self.failures, initial=hung_initial, cap=HUNG_BACKOFF_CAP)
        else:
            delay = backoff_delay(self.failures, initial=0.5, cap=NODE_BACKOFF_CAP)
        self.down_until = time.monotonic() + delay

    def mark_ok(self, write: bool = False) -> None:
        self.last_contact = time.monotonic()
        if self.write_failed and not write:
            return
        self.failures = 0
        self.down_until = 0.0
        self.last_error = ""
        self.write_failed = False


class TypesenseSink:
    """A Typesense server or cluster. `api_key` is called for every request (keys rotate).

    Cluster client: `nodes` in order of preference (`nearest_node`, when given, first). Each
    request goes to the first node that is healthy; a node that fails (connection error, timeout,
    5xx, 429, "Not Ready or Lagging", "Could not find a leader") is marked down with backoff and
    the request moves on to the next node. A node whose backoff is over gets a cheap `/health`
    probe before real traffic, so a slow or dead node costs a probe, not a write. When every node
    is backing off, all are tried anyway (soonest first): the caller's own backoff paces that.

    Writes whose outcome is unknown (the request may have reached a node: a timeout or a
    connection lost after sending) are counted in `uncertain_writes`; a cluster can apply such a
    write later, after newer ones, so the caller re-sends those keys after a safe delay.
    """

    def __init__(
        self,
        nodes: list[str],
        api_key: Callable[[], str],
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        nearest_node: str | None = None,
        on_auth_error: Callable[[str], None] | None = None,
    ) -> None:
        urls = ([nearest_node] if nearest_node else []) + nodes
        self._nodes = [_Node(url) for url in dict.fromkeys(urls)]  # order kept, no duplicates
        self._api_key = api_key
        # Called with the refused key when Typesense answers 401/403 (kms.py fetches a new one).
        self._on_auth_error = on_auth_error
        self._timeout = timeout
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
            transport=transport,
            headers={"Content-Type": "application/json"},
        )
        self.up = False  # did the last call reach a node that answered?
        self.uncertain_writes = 0  # writes that may have been applied although they failed
        self._aliases: dict[str, tuple[str | None, float]] = {}  # name → (collection, when)

    def close(self) -> None:
        self._client.close()

    def node_health(self) -> dict[str, bool]:
        """Each node (preference order) → False while its last request or probe failed."""
        return {node.url: node.up for node in self._nodes}

    def probe_idle_nodes(self, max_age: float = 30.0) -> None:
        """Between batches: a `/health` probe for each healthy node nobody asked for `max_age`
        seconds (a standby node that died is known before it is needed) and for each failed
        node whose backoff is over. A failed *standby* node (one after a healthy node in the
        order, so it gets no traffic) or one that was refused or not ready counts as recovered
        when its probe passes; a preferred node whose writes hung only when a write passes
        (`/health` can be ok on a node whose writes hang)."""
        now = time.monotonic()
        standby = False
        for node in self._nodes:
            was_up = node.up
            wanted = node.due(now) and (not was_up or now - node.last_contact >= max_age)
            if wanted and self._probe(node):
                node.mark_ok(write=was_up or standby)
            standby = standby or node.up

    # -- the request layer: node choice, failover, error translation ------------------------

    def _candidates(self) -> list[tuple[_Node, bool]]:
        """Nodes to try, in order, each with whether it needs a probe first."""
        now = time.monotonic()
        due = [(n, not n.up) for n in self._nodes if n.due(now)]
        if due:
            return due
        return [(n, False) for n in sorted(self._nodes, key=lambda n: n.down_until)]

    def _probe(self, node: _Node) -> bool:
        """GET /health with a short timeout: is a node that failed before worth a request?"""
        try:
            response = self._client.get(
                node.url + "/health", timeout=min(self._timeout, PROBE_TIMEOUT_CAP)
            )
            ok = response.status_code == 200 and response.json().get("ok") is True
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            node.mark_failed(f"{node.url}: /health: {type(exc).__name__}")
            return False
        if not ok:
            node.mark_failed(f"{node.url}: /health: HTTP {response.status_code}")
        return ok

    def _request(
        self,
        method: str,
        path: str,
        node_check: Callable[[httpx.Response], str | None] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send to the first healthy node; fail over to the next on node-level failures.

        `node_check` may call an answered request a node-level failure (its text), e.g. an
        import whose every line says the node is not ready: the next node is tried."""
        last: TargetUnavailable | None = None
        for node, probe in self._candidates():
            if probe and not self._probe(node):
                last = TargetUnavailable(node.last_error)
                continue
            uncertain = self.uncertain_writes
            try:
                response = self._send(node, method, path, **kwargs)
                failure = node_check(response) if node_check is not None else None
                if failure is not None:
                    raise TargetUnavailable(f"{node.url}: {failure}")
            except TargetUnavailable as exc:
                # A write that reached the node and hung or broke: /health proves little there.
                node.mark_failed(
                    str(exc),
                    write=self.uncertain_writes != uncertain,
                    hung_initial=max(10.0, 2 * self._timeout),
                )
                last = exc
                continue
            node.mark_ok(write=method != "GET")
            self.up = True
            return response
        self.up = False
        raise last or TargetUnavailable("no Typesense node configured")

    def _send(
        self, node: _Node, method: str, path: str, key_retried: bool = False, **kwargs: Any
    ) -> httpx.Response:
        key = self._api_key()
        headers = {"X-TYPESENSE-API-KEY": key}
        what = f"{method} {path.split('?')[0]}"
        try:
            response = self._client.request(method, node.url + path, headers=headers, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Never reached the node: certainly not applied.
            raise TargetUnavailable(f"{node.url}: {type(exc).__name__}: {exc} ({what})") from None
        except httpx.TimeoutException:
            self._note_uncertain(method)
            raise TargetTimeout(f"{node.url}: timed out ({what})") from None
        except httpx.TransportError as exc:
            # Sent, then the connection broke (e.g. a follower whose leader just died answers
            # "HTTP/1.1 0"): the node may still have forwarded or applied it.
            self._note_uncertain(method)
            raise TargetUnavailable(f"{node.url}: {type(exc).__name__}: {exc} ({what})") from None
        status = response.status_code
        if (
            status >= 500
            or status == 429
            or (status >= 400 and any(m in response.text for m in NOT_READY_MARKERS))
        ):
            raise TargetUnavailable(f"{node.url}: HTTP {status}: {_message(response)} ({what})")
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

    def _note_uncertain(self, method: str) -> None:
        if method != "GET":
            self.uncertain_writes += 1

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

    def create_collection(self, schema: dict[str, Any]) -> bool:
        """False when a collection of that name exists already (another host created it at the
        same time, or an earlier create timed out but was applied)."""
        response = self._request("POST", "/collections", content=json.dumps(schema))
        if response.status_code == 409:
            return False
        if response.status_code not in (200, 201):
            status = response.status_code
            raise TargetError(f"POST /collections: HTTP {status}: {_message(response)}")
        return True

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
        self._aliases.clear()
        self._json("DELETE", f"/collections/{quote(physical_name, safe='')}", ok=(200, 404))

    def get_alias(self, name: str) -> str | None:
        """The collection an alias points to, or None when there is no such alias."""
        result = self._json("GET", f"/aliases/{quote(name, safe='')}", ok=(200, 404))
        collection = None if result is None else str(result["collection_name"])
        self._aliases[name] = (collection, time.monotonic())
        return collection

    def set_alias(self, name: str, collection: str) -> None:
        """Point an alias at a collection; one atomic switch for searches."""
        self._aliases.pop(name, None)
        self._json(
            "PUT",
            f"/aliases/{quote(name, safe='')}",
            content=json.dumps({"collection_name": collection}),
        )

    def health(self) -> list[str]:
        """For `check`: every node, in order; one problem line per node that is unreachable, not
        ready (`/health`) or refuses the key. Names each failing node."""
        problems = []
        for node in self._nodes:
            try:
                ready = self._send(node, "GET", "/health")
                if ready.status_code != 200 or not _json_ok(ready):
                    problems.append(f"typesense node {node.url}: not ready: {_message(ready)}")
                    continue
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
        snapshot (it replays its log without resolving the alias).

        A lookup is reused for ALIAS_TTL seconds. Every get_alias() refreshes it, and set_alias(),
        delete_collection() and a missing collection drop it, so the daemon's own alias switches
        (and a following host's look at a shared collection) take effect at once; only a switch
        made by someone else can be missed, for at most ALIAS_TTL."""
        cached = self._aliases.get(collection)
        if cached is not None and time.monotonic() - cached[1] < ALIAS_TTL:
            return cached[0] or self._no_alias(collection)
        return self.get_alias(collection) or self._no_alias(collection)

    def _no_alias(self, name: str) -> str:
        """The collection a write goes to when the node asked knows no alias `name`: GET
        /collections/<name> resolves an alias too, so a follower that has not applied a new
        alias yet answers 404 here (retried later) instead of the write being addressed to the
        alias name, which a node catching up by replaying its log would lose."""
        found = self.get_collection(name)
        if found is None:
            raise CollectionMissing(f"collection {name!r} not found (yet) on the node asked")
        return str(found.get("name") or name)

    def upsert(
        self,
        collection: str,
        documents: Sequence[dict[str, Any] | str],
        dirty_values: str = "reject",
    ) -> list[DocResult]:
        """One JSONL import; one result per document, in order. Reads every result line.

        A document may come already encoded (a str from encode_document)."""
        if not documents:
            return []
        collection = self._physical(collection)
        body = ascii_json_body(d if isinstance(d, str) else encode_document(d) for d in documents)
        response = self._request(
            "POST",
            f"/collections/{quote(collection, safe='')}/documents/import"
            f"?action=upsert&dirty_values={dirty_values}",
            node_check=_import_not_ready,
            content=body,
        )
        if response.status_code != 200:
            self._aliases.clear()
            raise _collection_error(collection, response)
        text = response.text
        # Nearly always every line succeeded. A failed line quotes its document as an escaped
        # JSON string, so it can never contain SUCCESS_LINE itself: counting is exact.
        if text.count(SUCCESS_LINE) == len(documents) == text.rstrip("\n").count("\n") + 1:
            return [OK] * len(documents)
        lines = [line for line in text.split("\n") if line.strip()]
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
        """One filter_by delete. It answers 200 with a count even when Typesense could not parse
        the filter (then it deletes nothing at all). So a count above 0 proves the filter was
        read and the ids it did not match are already gone; a count of 0 is settled one id at a
        time (404 = already gone)."""
        if len(ids) == 1:
            self._raise_for_doc(self._delete_one(path, ids[0]))
            return
        filter_by = "id:[" + ",".join(f"`{doc_id}`" for doc_id in ids) + "]"
        response = self._request(
            "DELETE", path, params={"filter_by": filter_by, "batch_size": len(ids)}
        )
        if response.status_code == 404:
            self._aliases.clear()
            raise _collection_error(path.split("/")[2], response)
        if response.status_code != 200:
            raise TargetError(f"DELETE {path}: HTTP {response.status_code}: {_message(response)}")
        if int(response.json().get("num_deleted", 0)) > 0:
            return
        for doc_id in ids:
            self._raise_for_doc(self._delete_one(path, doc_id))

    def _delete_one(self, path: str, doc_id: str) -> DocResult:
        response = self._request("DELETE", f"{path}/{quote(doc_id, safe='')}")
        if response.status_code in (200, 404):
            if response.status_code == 404 and "Collection" in response.text:
                self._aliases.clear()
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
        """Stream every document of a collection (JSONL), without holding them all in memory.

        Fails over to the next node only before the first document: a stream broken half-way
        raises TargetUnavailable (starting again elsewhere would repeat documents)."""
        last: TargetUnavailable | None = None
        for node, probe in self._candidates():
            if probe and not self._probe(node):
                last = TargetUnavailable(node.last_error)
                continue
            url = f"{node.url}/collections/{quote(collection, safe='')}/documents/export"
            started = False
            key = self._api_key()
            headers = {"X-TYPESENSE-API-KEY": key}
            try:
                with self._client.stream("GET", url, headers=headers) as response:
                    if response.status_code in (401, 403):
                        self._key_refused(key)
                        raise AuthError(f"{node.url}: HTTP {response.status_code} on export")
                    if response.status_code != 404 and response.status_code != 200:
                        response.read()
                        raise TargetUnavailable(
                            f"{node.url}: export of {collection!r}: HTTP {response.status_code}"
                        )
                    if response.status_code == 200:  # 404: no such collection (yet): empty
                        for line in _jsonl_lines(response.iter_bytes()):
                            if line.strip():
                                started = True
                                yield json.loads(line)
                node.mark_ok()
                self.up = True
                return
            except (httpx.TransportError, TargetUnavailable) as exc:
                error = TargetUnavailable(f"{node.url}: export of {collection!r} failed: {exc}")
                node.mark_failed(str(error))
                if started:
                    raise error from None
                last = error
        self.up = False
        raise last or TargetUnavailable("no Typesense node to export from")


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
    """Ids a `filter_by=id:[`...`]` can match. Measured on 0.24.1: a backtick, a backslash or
    leading/trailing white space makes Typesense drop the whole filter."""
    return (
        bool(doc_id)
        and "`" not in doc_id
        and "\\" not in doc_id
        and doc_id == doc_id.strip()
    )


def _import_line(line: str) -> DocResult:
    if line == SUCCESS_LINE:  # nearly every line: no need to parse it
        return OK
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


def _import_not_ready(response: httpx.Response) -> str | None:
    """An import answered 200 whose every line says the node is not ready: a node failure."""
    if response.status_code != 200 or not any(m in response.text for m in NOT_READY_MARKERS):
        return None
    lines = [line for line in response.text.split("\n") if line.strip()]
    if not lines or not any(m in lines[0] for m in NOT_READY_MARKERS):
        return None
    if all(any(m in line for m in NOT_READY_MARKERS) for line in lines):
        return f"import refused: {lines[0][:200]}"
    return None


def _json_ok(response: httpx.Response) -> bool:
    try:
        return response.json().get("ok") is True
    except (ValueError, AttributeError):
        return False


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
