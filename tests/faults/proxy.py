"""A small loopback HTTP proxy in front of Typesense that injects faults.

Each request is read whole, then `before(request)` may delay it, answer 503 or drop the
connection without forwarding; otherwise it is forwarded, and `after(request, status)` may delay
the answer, replace it with a 503, drop the connection (the write was applied, the client never
learns it), or run a callback such as killing the daemon before or right after the answer is
sent. The hooks are plain attributes, swapped by the tests while traffic flows.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
               "accept-encoding", "content-encoding"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str

    @property
    def is_import(self) -> bool:
        return "/documents/import" in self.path

    @property
    def is_write(self) -> bool:
        return self.is_import or self.method == "DELETE"

    @property
    def kind(self) -> str:
        """import, delete-filter, delete-id, health, read or other: for the figures."""
        path = self.path.split("?", 1)[0]
        if self.is_import:
            return "import"
        if self.method == "DELETE" and path.endswith("/documents"):
            return "delete-filter"
        if self.method == "DELETE" and "/documents/" in path:
            return "delete-id"
        if path == "/health":
            return "health"
        return "read" if self.method == "GET" else "other"


@dataclass
class Verdict:
    """What to do with a request: `delay` seconds first, then one of "forward" (default),
    "503" or "drop"; `then` runs after the answer was sent (or instead of it, when dropped)."""

    action: str = "forward"
    delay: float = 0.0
    then: Callable[[], None] | None = None


Hook = Callable[[Request], Verdict | None]
AfterHook = Callable[[Request, int], Verdict | None]


@dataclass
class ProxyCounts:
    requests: int = 0
    imports: int = 0
    forwarded: int = 0
    delayed: int = 0
    errors_503: int = 0
    dropped: int = 0
    by_action: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.before: Hook | None = None
        self.after: AfterHook | None = None
        self.counts = ProxyCounts()
        self.journal: list[str] = []  # one line per request and outcome, for post-mortems
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls per answer

            def log_message(self, *_args: Any) -> None:
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients killed mid-request (that is the point): not worth a traceback

        self.server = Server(("127.0.0.1", 0), Handler)  # a free port, bound at once
        self.port = int(self.server.server_address[1])
        # shutdown() waits for the serving loop's next look (0.5 s by default): look often.
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def count(self, action: str) -> None:
        with self._lock:
            self.counts.by_action[action] = self.counts.by_action.get(action, 0) + 1

    def note(self, request: Request, outcome: str) -> None:
        with self._lock:
            self.journal.append(f"{time.time():.3f} {request.method} {request.path} {outcome}")

    def dump(self, path: Path) -> None:
        with self._lock:
            path.write_text("\n".join(self.journal) + "\n")

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        request = Request(handler.command, handler.path)
        with self._lock:
            self.counts.requests += 1
            self.counts.imports += request.is_import
            self.counts.by_kind[request.kind] = self.counts.by_kind.get(request.kind, 0) + 1
        verdict = (self.before(request) if self.before else None) or Verdict()
        if self._apply(handler, verdict, before=True):
            self.note(request, f"{verdict.action} before forwarding")
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_HEADERS}
        upstream = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            upstream.request(request.method, request.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            status, reason = response.status, response.reason
            response_headers = [(k, v) for k, v in response.getheaders()
                                if k.lower() not in HOP_HEADERS]
        except OSError as exc:
            # Typesense itself is down: answer like a dead node would (connection closed).
            handler.close_connection = True
            with self._lock:
                self.counts.dropped += 1
            self.note(request, f"upstream failed: {exc}")
            return
        finally:
            upstream.close()
        with self._lock:
            self.counts.forwarded += 1
        verdict = (self.after(request, status) if self.after else None) or Verdict()
        if self._apply(handler, verdict, before=False):
            self.note(request, f"{status} from Typesense, then {verdict.action}")
            return
        try:
            handler.send_response(status, reason)
            for key, value in response_headers:
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True  # the client gave up (its timeout) meanwhile
            self.note(request, f"{status}, but the client was gone")
        else:
            self.note(request, str(status))
        if verdict.then is not None:
            verdict.then()

    def _apply(self, handler: BaseHTTPRequestHandler, verdict: Verdict, before: bool) -> bool:
        """Delay, then answer 503 or drop: True when the request is finished here."""
        if verdict.delay > 0:
            with self._lock:
                self.counts.delayed += 1
            threading.Event().wait(verdict.delay)  # the injected slowness itself
        if verdict.action == "forward":
            return False
        self.count(f"{verdict.action}-{'before' if before else 'after'}")
        if verdict.action == "503":
            with self._lock:
                self.counts.errors_503 += 1
            body = b'{"message": "injected: service unavailable"}'
            try:
                handler.send_response(503)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)
                handler.wfile.flush()
            except OSError:
                handler.close_connection = True
        else:  # drop: close without an answer
            with self._lock:
                self.counts.dropped += 1
            handler.close_connection = True
        if verdict.then is not None:
            verdict.then()
        return True


class Gate:
    """A `before` hook that holds imports while closed (up to `limit` seconds)."""

    def __init__(self, limit: float = 60.0) -> None:
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self.limit = limit
        self.waiting = 0

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def before(self, request: Request) -> Verdict | None:
        if request.is_import and not self._open.is_set():
            with self._lock:
                self.waiting += 1
            self._open.wait(self.limit)
            with self._lock:
                self.waiting -= 1
        return None
