"""The Typesense side, over HTTP (httpx). The core sees documents and results, never HTTP.

Every httpx error and HTTP status is translated here into the errors of errors.py. There are no
retries in this module: the sync loop (through retry.py) decides when to try again.
"""

from __future__ import annotations

import codecs
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from cdc_daemon.errors import (
    AuthError,
    CollectionMissing,
    TargetError,
    TargetTimeout,
    TargetUnavailable,
)
from cdc_daemon.retry import backoff_delay

# A document id must fit in a URL (a delete by path or by filter): httpx refuses URLs over
# 64 KiB, and percent-encoding can triple an id's UTF-8 bytes. Longer ids are refused per row.
MAX_ID_BYTES = 8192
IMPORT_BYTES = 64 * 1024 * 1024  # one import's body at most; a larger batch is split
FILTER_BYTES = 32_768  # the percent-encoded filter_by of one delete request, at most
_RAW_MESSAGE = re.compile(r'\s*\{\s*"message"\s*:\s*"(.*)', re.DOTALL)
DOCUMENT_NOT_FOUND = "Could not find a document with id"  # a 404's message, every version
NOT_READY_MARKERS = ("Not Ready or Lagging", "Could not find a leader")
# 422s that say the server can't take it now, in every version up to 30: out of disk or memory
# (the whole request, never a line), and (v26+) a schema change while another one runs.
BUSY_MARKERS = ("Rejecting write: running out of resource", "Another collection update operation")
NODE_BACKOFF_CAP = 15.0  # seconds; a recovered node gets traffic again within this
HUNG_BACKOFF_CAP = 300.0  # seconds; for a node whose writes hang (each try costs a timeout)
PROBE_TIMEOUT_CAP = 5.0  # seconds for a node's /health probe (at most typesense.timeout)
log = structlog.get_logger("cdc_daemon.sink")
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
        self._version: tuple[int, ...] | None = None  # server_version(), once read

    def close(self) -> None:
        self._client.close()

    def server_version(self) -> tuple[int, ...]:
        """The server's version from `/debug` (read once): (0, 24, 1), (26, 0), ...; (0,) when
        unknown (the key lacks `debug:list`, or an unexpected answer): the oldest behaviour is
        assumed, which is correct everywhere, if less convenient."""
        if self._version is None:
            self._version = (0,)
            try:
                response = self._request("GET", "/debug", report_refused_key=False)
                answer = response.json() if response.status_code == 200 else {}
                number = re.match(r"\d+(?:\.\d+)*", str(answer.get("version", "")))
                self._version = tuple(map(int, number.group().split("."))) if number else (0,)
            except AuthError:
                pass  # a scoped key without debug:list
            except (TargetError, ValueError, AttributeError) as exc:
                self._version = None  # unreachable or odd now: read it again next time
                log.debug("typesense version not read", error=str(exc))
                return (0,)
        return self._version

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
            ok = response.status_code == 200 and _json_ok(response)
        except httpx.HTTPError as exc:
            node.mark_failed(f"{node.url}: /health: {type(exc).__name__}")
            return False
        if not ok:
            answer = f"HTTP {response.status_code} {response.text[:100]}"
            node.mark_failed(f"{node.url}: /health: {answer}")
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
        self,
        node: _Node,
        method: str,
        path: str,
        key_retried: bool = False,
        report_refused_key: bool = True,
        **kwargs: Any,
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
            or (status == 422 and any(m in response.text for m in BUSY_MARKERS))
        ):
            raise TargetUnavailable(f"{node.url}: HTTP {status}: {_message(response)} ({what})")
        if status in (401, 403):
            if report_refused_key and self._key_refused(key) and not key_retried:
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
        if response.status_code == 200:
            return None
        # A PATCH that timed out may have been applied: then the retry is refused ("... is
        # already part of the schema"), and the fields are there.
        present = {f.get("name") for f in (self.get_collection(collection) or {}).get("fields", [])}
        if all(f["name"] in present for f in fields):
            return None
        return _message(response)

    def delete_collection(self, physical_name: str) -> None:
        """Drop a collection by its real name. Refuses an alias name (Typesense would drop the
        collection behind the alias instead) and a collection any alias points to (searches use
        it: a crash after an alias switch must never cost the live collection)."""
        if self.get_alias(physical_name) is not None:
            raise TargetError(f"refusing to delete {physical_name!r}: it is an alias")
        users = self.aliases_to(physical_name)
        if users:
            raise TargetError(
                f"refusing to delete {physical_name!r}: alias {users[0]!r} points to it"
            )
        self._aliases.clear()
        self._json("DELETE", f"/collections/{quote(physical_name, safe='')}", ok=(200, 404))

    def aliases_to(self, physical_name: str) -> list[str]:
        """The aliases that point to a collection."""
        answer = self._json("GET", "/aliases") or {}
        return [
            str(alias.get("name"))
            for alias in answer.get("aliases", [])
            if alias.get("collection_name") == physical_name
        ]

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

    def delete_alias(self, name: str) -> None:
        """Remove an alias (the collection behind it stays); one that is gone is fine."""
        self._aliases.clear()
        self._json("DELETE", f"/aliases/{quote(name, safe='')}", ok=(200, 404))

    def health(self) -> list[str]:
        """For `check`: every node, in order; one problem line per node that is unreachable, not
        ready (`/health`) or refuses the key. Names each failing node."""
        problems = []
        for node in self._nodes:
            try:
                ready = self._send(node, "GET", "/health")
                if ready.status_code != 200 or not _json_ok(ready):
                    problems.append(f"typesense node {node.url}: not ready: {ready.text[:200]}")
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
        """JSONL imports; one result per document, in order. Reads every result line.

        A document may come already encoded (a str from encode_document). A body larger than
        IMPORT_BYTES goes in several imports, in order."""
        if not documents:
            return []
        collection = self._physical(collection)
        lines = [d if isinstance(d, str) else encode_document(d) for d in documents]
        body = ascii_json_body(lines)
        if len(body) <= IMPORT_BYTES:
            return self._import(collection, body, len(lines), dirty_values)
        results: list[DocResult] = []
        groups = _sized_groups(lines, lambda line: len(ascii_json_body([line])) + 1, IMPORT_BYTES)
        for group in groups:
            results += self._import(collection, ascii_json_body(group), len(group), dirty_values)
        return results

    def _import(
        self, collection: str, body: bytes, count: int, dirty_values: str
    ) -> list[DocResult]:
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
        # JSON string (or, since v28, not at all), so it never contains SUCCESS_LINE: counting
        # is exact.
        if text.count(SUCCESS_LINE) == count == text.rstrip("\n").count("\n") + 1:
            return [OK] * count
        answers = [line for line in text.split("\n") if line.strip()]
        results = [_import_line(line) for line in answers[:count]]
        missing = DocResult(ok=False, error="no result line for this document", retryable=True)
        return results + [missing] * (count - len(results))

    def delete(self, collection: str, ids: list[str]) -> list[DocResult]:
        """Delete documents by id; a document that is already gone counts as deleted.

        Ids go in `filter_by` requests sized by bytes (FILTER_BYTES); an id no filter can carry
        safely goes alone, by path (see _document_path). An id that fits neither is refused for
        its row alone."""
        if not ids:
            return []
        path = f"/collections/{quote(self._physical(collection), safe='')}/documents"
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
        response = self._request(
            "DELETE", path, params={"filter_by": _id_filter(ids), "batch_size": len(ids)}
        )
        if response.status_code == 404:
            self._aliases.clear()
            raise _collection_error(path.split("/")[2], response)
        if response.status_code == 400:  # a filter this server can't parse: settled id by id
            log.warning("filter delete refused; deleting one by one", error=_message(response))
        elif response.status_code != 200:
            raise TargetError(f"DELETE {path}: HTTP {response.status_code}: {_message(response)}")
        elif int(response.json().get("num_deleted", 0)) > 0:
            return
        for doc_id in ids:
            self._raise_for_doc(self._delete_one(path, doc_id))

    def _delete_one(self, path: str, doc_id: str) -> DocResult:
        """DELETE by id. Since v26 `ignore_not_found` answers 200 for a document that is gone,
        so a 404 can only mean the collection; before, a 404 about the document says so by the
        start of its message (the id it quotes may hold any words)."""
        newer = self.server_version() >= (26,)
        query = "?ignore_not_found=true" if newer else ""
        response = self._request("DELETE", f"{path}/{_document_path(doc_id)}{query}")
        if response.status_code == 404:
            if not newer and _message(response).startswith(DOCUMENT_NOT_FOUND):
                return OK  # already gone (never there, or deleted twice)
            self._aliases.clear()  # anything else: the collection (or its alias) is gone
            raise _collection_error(path.split("/")[2], response)
        if response.status_code != 200:
            return DocResult(ok=False, error=f"HTTP {response.status_code}: {_message(response)}")
        if _answered_id(response) != doc_id:  # it deleted something else: never go on silently
            raise TargetError(
                f"DELETE {path}/...: Typesense answered for id {_answered_id(response)!r},"
                f" not {doc_id!r}"
            )
        return OK

    @staticmethod
    def _raise_for_doc(result: DocResult) -> None:
        if not result.ok:
            raise TargetError(result.error or "delete failed")

    def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """The document with this id, None when there is none (or no such collection)."""
        path = f"/collections/{quote(collection, safe='')}/documents/{_document_path(doc_id)}"
        result: dict[str, Any] | None = self._json("GET", path, ok=(200, 404))
        if result is not None and result.get("id") != doc_id:
            raise TargetError(f"GET {path}: answered id {result.get('id')!r}, not {doc_id!r}")
        return result

    def write_document(
        self, collection: str, document: dict[str, Any], replace: bool = False
    ) -> bool:
        """One document, to a collection by its real name (ownership.py's registry).
        `action=create` unless `replace`: False when that id exists already (409), which makes
        it a compare-and-set. CollectionMissing when there is no such collection."""
        response = self._request(
            "POST",
            f"/collections/{quote(collection, safe='')}/documents"
            f"?action={'upsert' if replace else 'create'}",
            content=encode_document(document),
        )
        if response.status_code == 409 and not replace:
            return False
        if response.status_code == 404:
            raise _collection_error(collection, response)
        if response.status_code not in (200, 201):
            status = response.status_code
            raise TargetError(f"write to {collection!r}: HTTP {status}: {_message(response)}")
        return True

    def delete_document(self, collection: str, doc_id: str) -> None:
        """Delete one document by id; one that is gone already (or its collection) is fine."""
        path = f"/collections/{quote(collection, safe='')}/documents/{_document_path(doc_id)}"
        self._json("DELETE", path, ok=(200, 404))

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


def id_problem(doc_id: str) -> str | None:
    """Why an id can't be a Typesense document id this daemon can also delete (None: it can)."""
    if not doc_id:
        return "the document id is empty"
    size = len(doc_id.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        return f"the document id is {size} bytes; at most {MAX_ID_BYTES} fit in a delete request"
    return None


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


def _answered_id(response: httpx.Response) -> str | None:
    """The id of the document a DELETE or GET by id answered with."""
    try:
        found = response.json().get("id")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


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
    """A /health answer of a node fit for writes. Since v26 a node out of disk or memory answers
    200 `{"ok": true, "resource_error": "OUT_OF_DISK"}` while it refuses every write."""
    try:
        answer = response.json()
        return answer.get("ok") is True and not answer.get("resource_error")
    except (ValueError, AttributeError):
        return False


def _message(response: httpx.Response) -> str:
    """The `message` of an error answer. 0.24.1 quotes ids into it unescaped (an id ending in
    a backslash makes the body invalid JSON): then the raw text after `"message": "`."""
    try:
        return str(response.json().get("message", response.text))[:300]
    except (ValueError, AttributeError):
        raw = _RAW_MESSAGE.match(response.text)
        return (raw.group(1) if raw else response.text)[:300]


def _collection_error(collection: str, response: httpx.Response) -> TargetError:
    if response.status_code == 404:
        return CollectionMissing(f"collection {collection!r} not found: {_message(response)}")
    return TargetError(
        f"import into {collection!r}: HTTP {response.status_code}: {_message(response)}"
    )
