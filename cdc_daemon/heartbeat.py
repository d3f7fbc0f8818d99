"""Feeds the systemd watchdog while the sync loop waits on Typesense.

One batch is several HTTP requests (an import per collection, deletes), each allowed up to
`typesense.timeout` per read; the loop's heartbeat between iterations alone would need a
WatchdogSec of several timeouts. This httpx transport (and plain_http.py, the same way) beats
before each request, when the response headers arrive and for each chunk of the body, so a
batch that makes progress keeps the watchdog fed and the longest silence is one stalled socket
operation (bounded by the timeout). It beats only on the thread that built it (the loop's):
other threads' traffic never hides a hung loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx


class _BeatingStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, beat: Callable[[], None]) -> None:
        self._inner = inner
        self._beat = beat

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._beat()
            yield chunk

    def close(self) -> None:
        self._inner.close()


def on_this_thread(beat: Callable[[], None]) -> Callable[[], None]:
    """`beat`, done only when called on the thread that made it (the loop's)."""
    owner = threading.get_ident()

    def maybe_beat() -> None:
        if threading.get_ident() == owner:
            beat()

    return maybe_beat


class HeartbeatTransport(httpx.BaseTransport):
    def __init__(
        self, beat: Callable[[], None], inner: httpx.BaseTransport | None = None
    ) -> None:
        self._maybe_beat = on_this_thread(beat)
        self._inner = inner if inner is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._maybe_beat()
        response = self._inner.handle_request(request)
        self._maybe_beat()
        if isinstance(response.stream, httpx.SyncByteStream):
            response.stream = _BeatingStream(response.stream, self._maybe_beat)
        return response

    def close(self) -> None:
        self._inner.close()
