"""The request layer: every request to Typesense goes through `Client`, over the pool's one
failover loop, with its answer read by answers.py. A refused key is reported (`on_auth_error`)
and the request sent once more with the new key. There are no retries beyond that: the sync
loop (through retry.py) decides when to try again."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import structlog

import cdc_daemon.typesense.answers as answers
from cdc_daemon import turns
from cdc_daemon.errors import AuthError, TargetError, TargetUnavailable
from cdc_daemon.typesense.nodes import Node, NodeFailed, NodePool
from cdc_daemon.typesense.plain_http import PlainHttp

log = structlog.get_logger("cdc_daemon.sink")
NodeCheck = Callable[[httpx.Response], str | None]
HEADERS = {"Content-Type": "application/json"}  # every request's, by either way


class Client:
    """Sends requests to the cluster's nodes. `api_key` is called for every request (keys
    rotate); `on_auth_error` is called with a key Typesense refused (401/403).

    Writes whose outcome is unknown (the request may have reached a node: a timeout or a
    connection lost after sending) are counted in `uncertain_writes`; a cluster can apply such a
    write later, after newer ones, so the caller re-sends those keys after a safe delay.

    Threads: safe for the daemon loop and admin worker threads at once (httpx.Client is; the
    count has a lock; the version cache needs none, see server_version). The count is shared: a
    write an admin repair lost during a batch makes the loop treat that batch as uncertain too,
    which only re-sends its keys once more."""

    def __init__(
        self,
        pool: NodePool,
        http: httpx.Client,
        api_key: Callable[[], str],
        on_auth_error: Callable[[str], None] | None = None,
        plain: PlainHttp | None = None,
    ) -> None:
        """`plain`: how requests to `http://` nodes go (plain_http.py); else through `http`."""
        self.pool = pool
        self._http = http
        self._plain = plain
        self._api_key = api_key
        self._on_auth_error = on_auth_error
        self._uncertain = 0
        self._uncertain_lock = threading.Lock()
        self._version: tuple[int, ...] | None = None  # server_version(), once read (any thread)

    @property
    def uncertain_writes(self) -> int:
        return self._uncertain

    # -- requests with failover --------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        node_check: NodeCheck | None = None,
        report_refused_key: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send to the first healthy node; fail over to the next on node-level failures.

        `node_check` may call an answered request a node-level failure (its text), e.g. an
        import whose every line says the node is not ready: the next node is tried."""

        def attempt(node: Node) -> httpx.Response:
            response = self._send(
                node, method, path, report_refused_key=report_refused_key, **kwargs
            )
            failure = node_check(response) if node_check is not None else None
            if failure is not None:
                raise NodeFailed(TargetUnavailable(f"{node.url}: {failure}"))
            return response

        return self.pool.failover(attempt, write=method != "GET")

    def call(
        self, method: str, path: str, ok: tuple[int, ...] = (200, 201), **kwargs: Any
    ) -> httpx.Response:
        """A request whose status must be one of `ok` (else TargetError)."""
        response = self.request(method, path, **kwargs)
        if response.status_code not in ok:
            raise answers.http_error(f"{method} {path}", response)
        return response

    def json_object(
        self, method: str, path: str, ok: tuple[int, ...] = (200, 201), **kwargs: Any
    ) -> dict[str, Any] | None:
        """The JSON object a request answers (TargetError when it is not one); None on 404
        when 404 is `ok`."""
        response = self.call(method, path, ok, **kwargs)
        if response.status_code == 404:
            return None
        return answers.json_object(response, f"{method} {path.split('?')[0]}")

    def stream_lines(self, path: str) -> Iterator[str]:
        """The non-empty lines of a GET that answers JSONL (split on "\\n" only), read as they
        arrive, not held in memory; none when it answers 404.

        Fails over to the next node only before the first line: a stream broken half-way raises
        TargetUnavailable (starting again elsewhere would repeat lines)."""
        what = f"GET {path.split('?')[0]}"
        node, response, lines = self.pool.failover(
            lambda node: self._open_stream(node, path, what), write=False
        )
        try:
            yield from lines
        except httpx.RequestError as exc:
            error = TargetUnavailable(f"{node.url}: {what} failed: {exc}")
            self.pool.mark_failed(node, str(error))
            raise error from None
        finally:
            response.close()

    def _open_stream(
        self, node: Node, path: str, what: str
    ) -> tuple[Node, httpx.Response, Iterator[str]]:
        """Open the stream and read up to its first line: until then a failure is the node's."""
        try:
            response = self._send(node, "GET", path, stream=True)
        except NodeFailed as failed:  # always a plain TargetUnavailable, as it always was
            raise NodeFailed(TargetUnavailable(str(failed.error))) from None
        if response.status_code == 404:  # nothing there (yet)
            return node, response, iter(())
        if response.status_code != 200:
            raise NodeFailed(TargetUnavailable(f"{node.url}: {what}: HTTP {response.status_code}"))
        chunks = turns.waiting_for_each(response.iter_bytes())  # a fleet's other workers go on
        lines = (line for line in _jsonl_lines(chunks, what) if line.strip())
        try:
            first = next(lines, None)
        except BaseException as exc:
            response.close()
            if isinstance(exc, httpx.RequestError):
                error = TargetUnavailable(f"{node.url}: {what} failed: {exc}")
                raise NodeFailed(error) from None
            raise
        return node, response, itertools.chain(() if first is None else (first,), lines)

    # -- one node ----------------------------------------------------------------------------

    def _send(
        self,
        node: Node,
        method: str,
        path: str,
        key_retried: bool = False,
        report_refused_key: bool = True,
        stream: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request to one node: NodeFailed when the node can't take it now, AuthError when
        the key is refused (after one re-send with a new key, when one came)."""
        key = self._api_key()
        response = self._exchange(node, method, path, key, stream, **kwargs)
        if not answers.key_refused(response):
            return response
        if report_refused_key and self._key_refused(key) and not key_retried:
            # A new key came (KMS rotation): the refused request was not applied; send it again,
            # once, with the new key.
            return self._send(node, method, path, True, report_refused_key, stream, **kwargs)
        raise answers.auth_error(response, node.url)

    def _exchange(
        self, node: Node, method: str, path: str, key: str, stream: bool, **kwargs: Any
    ) -> httpx.Response:
        what = f"{method} {path.split('?')[0]}"
        headers = {"X-TYPESENSE-API-KEY": key}
        plain = self._plain
        if stream or plain is None or not plain.handles(node.url):
            plain = None  # httpx's way: a streamed export, HTTPS, a proxy (plain_http.py)
        try:
            if plain is not None:
                with turns.waiting():
                    response = plain.request(
                        method, node.url, path, {**HEADERS, **headers}, **kwargs
                    )
            else:
                url = node.url + path
                request = self._http.build_request(method, url, headers=headers, **kwargs)
                with turns.waiting():
                    response = self._http.send(request, stream=stream)
            if not stream and plain is None:
                # httpx's response and its stream refer to each other: only the cyclic GC
                # (rare here, daemon.py) would free them and the request's body (an import's
                # megabyte) with them. Read in full, the response needs no stream of its own.
                response.stream = httpx.ByteStream(response.content)
            if stream and response.status_code != 200:
                try:
                    response.read()  # an error answer is short, and what it says decides
                finally:
                    response.close()
        except httpx.RequestError as exc:
            error, arrived = answers.transport_failure(exc, node.url, what)
            hung = arrived and method != "GET"
            if hung:
                with self._uncertain_lock:
                    self._uncertain += 1
            raise NodeFailed(error, write_hung=hung) from None
        # Typesense answers UTF-8 JSON: no charset detection from the Content-Type header (httpx
        # parses it with the email package, ~3% of a fleet's CPU at a thousand imports a second).
        response.encoding = "utf-8"
        refusal = answers.node_refusal(response, node.url, what)
        if refusal is not None:
            response.close()
            raise NodeFailed(refusal)
        return response

    def _key_refused(self, key: str) -> bool:
        """Report a refused key; True when a different key is now available."""
        if self._on_auth_error is None:
            return False
        self._on_auth_error(key)
        return self._api_key() != key

    # -- the server --------------------------------------------------------------------------

    def server_version(self) -> tuple[int, ...]:
        """The server's version from `/debug` (read once): (0, 24, 1), (26, 0), ...; (0,) when
        unknown (the key lacks `debug:list`, or an unexpected answer): the oldest behaviour is
        assumed, which is correct everywhere, if less convenient. Read again next time when the
        cluster could not be asked.

        Any thread (the loop; admin threads' deletes for verify --repair), without a lock: two
        threads may both send the one `/debug` request, to the same effect, and only a version
        read is kept (a read that failed never replaces another thread's answer)."""
        version = self._version
        if version is None:
            version = self._read_version()
            if version is not None:
                self._version = version
        return version or (0,)

    def _read_version(self) -> tuple[int, ...] | None:
        try:
            response = self.request("GET", "/debug", report_refused_key=False)
            ok = response.status_code == 200
            answer = answers.json_object(response, "GET /debug") if ok else {}
        except AuthError:
            return (0,)  # a scoped key without debug:list
        except TargetError as exc:
            log.debug("typesense version not read", error=str(exc))
            return None  # unreachable or odd now: read it again next time
        number = re.match(r"\d+(?:\.\d+)*", str(answer.get("version", "")))
        return tuple(map(int, number.group().split("."))) if number else (0,)

    def health(self) -> list[str]:
        """For `check`: every node, in order; one problem line per node that is unreachable, not
        ready (`/health`) or refuses the key. Names each failing node."""
        problems = []
        for node in self.pool.nodes:
            try:
                ready = self._send(node, "GET", "/health")
                if not answers.health_ok(ready):
                    problems.append(f"typesense node {node.url}: not ready: {ready.text[:200]}")
                    continue
                response = self._send(node, "GET", "/collections?limit=1")
                if response.status_code != 200:
                    problems.append(f"typesense node {node.url}: HTTP {response.status_code}")
            except AuthError:
                problems.append(f"typesense node {node.url}: the API key was refused (401)")
            except NodeFailed as failed:
                problems.append(f"typesense node {node.url}: unreachable: {failed.error}")
        return problems


def _jsonl_lines(chunks: Iterator[bytes], what: str) -> Iterator[str]:
    """Lines of a JSONL stream, split on "\\n" only: httpx's iter_lines() also splits on the
    Unicode line breaks (U+0085, U+2028, ...) that JSON strings may hold unescaped."""
    rest = b""
    for chunk in chunks:
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            yield answers.utf8_line(line, what)
    if rest:
        yield answers.utf8_line(rest, what)
