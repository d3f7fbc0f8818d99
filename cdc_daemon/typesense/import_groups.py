"""Small imports to one collection that arrive together go as one request (a group commit).

A `databases:` daemon whose databases share one collection (databases.collection without
`{stem}`) imports a few documents per visit, from several worker threads. One import per visit
is what limits it (each costs the daemon ~1 ms of CPU in httpx and Typesense a request): while
an import to a collection is in flight, the small imports other threads bring for it wait and
go together in the next request, and each caller gets back its own documents' results (or the
request's error). A caller alone sends at once, as before; a large body never waits.
Per-key order is kept: a caller's documents stay in order and together, and one caller (one
database's loop) never has two imports in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cdc_daemon import turns
from cdc_daemon.sink import DocResult

GROUP_BYTES = 1024 * 1024  # a body this large or larger goes alone; a group holds at most this
# A group that was waiting (so imports are arriving faster than they are answered) waits a little
# longer for more callers when it is small: fewer, larger imports where each costs the daemon
# ~1 ms of CPU. Nothing waits when nothing is in flight.
LINGER_SECONDS = 0.01
LINGER_UNTIL = 12  # callers in the group

# (collection, dirty_values) → the import of `body` holding `count` documents: their results
Send = Callable[[str, str, bytes, int], list[DocResult]]


@dataclass
class _Group:
    """Bodies waiting for the import in flight to their collection; the first one sends them."""

    bodies: list[bytes] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    size: int = 0
    may_send: threading.Event = field(default_factory=threading.Event)  # for its leader
    grown: threading.Event = field(default_factory=threading.Event)  # LINGER_UNTIL callers
    done: threading.Event = field(default_factory=threading.Event)
    results: list[DocResult] = field(default_factory=list)
    error: BaseException | None = None


class ImportGroups:
    """One per Typesense client; any thread."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._in_flight: set[tuple[str, str]] = set()  # keys with an import under way
        self._waiting: dict[tuple[str, str], _Group] = {}  # the next import of each such key

    def upsert(
        self, collection: str, dirty_values: str, body: bytes, count: int
    ) -> list[DocResult]:
        key = (collection, dirty_values)
        if len(body) >= GROUP_BYTES:
            return self._send(collection, dirty_values, body, count)
        joined: tuple[_Group, int] | None = None
        with self._lock:
            first = key not in self._in_flight
            if first:
                self._in_flight.add(key)
            else:
                joined = self._join(key, body, count)
        if first:  # nothing in flight: at once
            try:
                return self._send(collection, dirty_values, body, count)
            finally:
                self._pass_on(key)
        if joined is None:  # the waiting group is full: sent beside the import in flight
            return self._send(collection, dirty_values, body, count)
        group, index = joined
        with turns.waiting():  # until the group's import is done: a fleet's others go on
            if index == 0:  # the group's first caller sends it once the import before is done
                group.may_send.wait()
                self._send_group(key, group)
            group.done.wait()
        if group.error is not None:
            raise group.error
        start = sum(group.counts[:index])
        return group.results[start : start + count]

    def _join(self, key: tuple[str, str], body: bytes, count: int) -> tuple[_Group, int] | None:
        """Under the lock: the group waiting for the key's import in flight, and this body's
        place in it; None when it is full."""
        group = self._waiting.get(key)
        if group is None:
            group = self._waiting[key] = _Group()
        elif group.size + len(body) > GROUP_BYTES:
            return None
        group.bodies.append(body)
        group.counts.append(count)
        group.size += len(body) + 1
        if len(group.bodies) >= LINGER_UNTIL:
            group.grown.set()
        return group, len(group.bodies) - 1

    def _send_group(self, key: tuple[str, str], group: _Group) -> None:
        """The leader sends: after a short wait for more callers when the group is small, every
        body that joined, as one import (no more can join once it is taken off `_waiting`)."""
        group.grown.wait(LINGER_SECONDS)
        with self._lock:
            del self._waiting[key]  # this group: the next caller starts a new one
            body, count = b"\n".join(group.bodies), sum(group.counts)
        try:
            group.results = self._send(*key, body, count)
        except BaseException as exc:  # every caller raises it: none of them is acknowledged
            group.error = exc
        finally:
            group.done.set()
            self._pass_on(key)

    def _pass_on(self, key: tuple[str, str]) -> None:
        """An import finished: the group waiting for it goes next, else the key is free."""
        with self._lock:
            group = self._waiting.get(key)
            if group is None:
                self._in_flight.discard(key)
            else:
                group.may_send.set()
