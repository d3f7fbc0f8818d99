"""Requests to plain-HTTP nodes over stdlib http.client connections, without httpx's machinery.

Every request to Typesense but a streamed export goes through here when its node is `http://`:
httpx (URL parsing, its models, cookies, its connection pool's lock and socket scans) costs
~400 µs of CPU per one-document import here, this ~180 µs (benchmarks/README.md). A thousand
databases committing once a second each send a thousand imports a second: with httpx, most of
the one core the daemon's Python threads share (the GIL). The answer is an httpx.Response all
the same (what answers.py reads), and a failure the httpx exception of the same meaning
(answers.py decides from it whether a write may have arrived): ConnectError/ConnectTimeout
before anything was sent, WriteError/WriteTimeout while sending, ReadError/ReadTimeout/
RemoteProtocolError after.
HTTPS nodes, exports (streamed), nodes with credentials in their URL and any node while a proxy
is set in the environment keep httpx: TLS, Basic auth and proxies stay its own.

Connections are kept alive and shared by all threads, one request at a time each: an idle one is
kept for KEEPALIVE_EXPIRY seconds, and one the server closed meanwhile (readable while idle) is
never used again.
"""

from __future__ import annotations

import http.client
import select
import threading
import time
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's default)
MAX_IDLE = 20  # idle connections kept per node (httpx's default)
CHUNK = 65536  # bytes of a body sent, or of an answer read, at a time (a beat each)

Address = tuple[str, int]


class PlainHttp:
    def __init__(
        self, timeout: float, connect_timeout: float, beat: Callable[[], None] | None = None
    ) -> None:
        """`beat`: called before each request and as each part of it goes and of its answer
        comes (heartbeat.py)."""
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._beat = beat or _no_beat
        self._idle: dict[Address, list[tuple[float, http.client.HTTPConnection]]] = {}
        self._lock = threading.Lock()
        self._nodes: dict[str, tuple[Address, str] | None] = {}  # _node()

    def handles(self, url: str) -> bool:
        """A plain-HTTP node without credentials in its URL (httpx sends them as Basic auth)
        while no proxy is set in the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY: httpx
        decides then, by its own rules)."""
        return self._node(url) is not None

    def request(
        self,
        method: str,
        node_url: str,
        path: str,
        headers: dict[str, str],
        content: bytes | str | None = None,
        params: dict[str, str | int] | None = None,
    ) -> httpx.Response:
        node = self._node(node_url)
        assert node is not None, "handles() first"
        address, prefix = node
        target = prefix + path
        if params:
            target += ("&" if "?" in target else "?") + str(httpx.QueryParams(params))
        body = content.encode("utf-8") if isinstance(content, str) else content
        self._beat()
        conn = self._take(address) or self._connect(address)
        try:
            status, answer, data, reusable = _exchange(
                conn, method, target, headers, body, self._beat
            )
        except BaseException:
            conn.close()
            raise
        if reusable:
            self._give_back(address, conn)
        else:
            conn.close()
        return httpx.Response(status, headers=answer, content=data)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for _since, conn in connections:
                conn.close()

    def _node(self, url: str) -> tuple[Address, str] | None:
        """Where a node's requests go (its address, the path its URL starts with); None when
        it is not for this class (handles())."""
        if url not in self._nodes:
            parts = urlsplit(url)
            proxies = urllib.request.getproxies_environment()
            ours = parts.scheme == "http" and not (parts.username or parts.password) and not (
                {"http", "https", "all"} & set(proxies)
            )
            self._nodes[url] = (
                ((parts.hostname or "", parts.port or 80), parts.path.rstrip("/")) if ours else None
            )
        return self._nodes[url]

    def _connect(self, address: Address) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(*address, timeout=self._connect_timeout)
        try:
            conn.connect()  # also sets TCP_NODELAY
        except TimeoutError as exc:
            conn.close()
            raise httpx.ConnectTimeout(str(exc) or "timed out") from None
        except OSError as exc:
            conn.close()
            raise httpx.ConnectError(str(exc)) from None
        assert conn.sock is not None
        conn.sock.settimeout(self._timeout)
        return conn

    def _take(self, address: Address) -> http.client.HTTPConnection | None:
        """An idle connection to `address` that is still open, the most recent first. Each is
        looked at outside the lock: the other threads' requests never wait for a system call."""
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(address)
                if not idle:
                    return None
                since, conn = idle.pop()
            if now - since < KEEPALIVE_EXPIRY and not _readable(conn):
                return conn
            conn.close()  # expired, or closed by the server (or it sent what nobody asked)

    def _give_back(self, address: Address, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(address, [])
            if len(idle) < MAX_IDLE:
                idle.append((time.monotonic(), conn))
                return
        conn.close()


def _exchange(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes | None,
    beat: Callable[[], None],
) -> tuple[int, list[tuple[str, str]], bytes, bool]:
    """One request and its whole answer: status, headers, body, and whether the connection can
    take the next request. `beat` as each part goes and comes."""
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)  # Host: added
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Accept-Encoding", "identity")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders()
        view = memoryview(body or b"")
        for start in range(0, len(view), CHUNK):  # the timeout bounds each part, as httpx's:
            conn.send(view[start : start + CHUNK])  # a big import to a slow node goes on
            beat()
    except TimeoutError as exc:
        raise httpx.WriteTimeout(str(exc) or "timed out") from None
    except (OSError, http.client.HTTPException) as exc:
        # A server may answer before it read the whole body (a refused key), then close: that
        # answer counts, as with httpx. Without one, the write failed (and may have arrived).
        try:
            status, answer, data, _reusable = _receive(conn, beat)
        except httpx.TransportError:
            raise httpx.WriteError(f"{type(exc).__name__}: {exc}") from None
        return status, answer, data, False
    return _receive(conn, beat)


def _receive(
    conn: http.client.HTTPConnection, beat: Callable[[], None]
) -> tuple[int, list[tuple[str, str]], bytes, bool]:
    try:
        response = conn.getresponse()
        if response.status < 200:  # an informational answer other than 100 Continue
            raise http.client.HTTPException(f"unexpected answer {response.status}")
        beat()
        chunks = []
        while chunk := response.read1(CHUNK):  # what arrived: a beat each
            chunks.append(chunk)
            beat()
        if response.length:  # a Content-Length body cut short: read1() does not say so
            raise http.client.IncompleteRead(b"".join(chunks), response.length)
        response.close()  # done (read1() leaves a whole Content-Length answer open)
    except TimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "timed out") from None
    except http.client.RemoteDisconnected:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.") from None
    except http.client.HTTPException as exc:  # a bad status line ("HTTP/1.1 0"), a cut body
        raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise httpx.ReadError(str(exc)) from None
    return response.status, response.getheaders(), b"".join(chunks), not response.will_close


def _no_beat() -> None:
    pass


def _readable(conn: http.client.HTTPConnection) -> bool:
    """An idle connection with something to read: the server closed it. poll(), not select():
    a fleet holds descriptors above 1024."""
    if conn.sock is None:
        return True
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    return bool(poller.poll(0))
