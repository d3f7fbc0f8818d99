"""Turns: one fleet worker at a time runs Python and SQLite; a worker gives its turn up while it
waits (HTTP, another worker's import, a locked database).

Why: APSW lets go of the GIL around every SQLite call. With a dozen workers busy at once, each
of those calls handed the GIL to another worker and back: ~60 thread switches per commit, half
of the daemon's CPU at a thousand commits a second (measured: fleet.py's benchmark). Workers
that wait for a turn sleep until it is theirs, so the GIL changes hands only at a turn's end or
a wait. Threads that never take a turn (a single-database daemon, admin requests, the fleet's
main loop) are not held back: `waiting()` does nothing for them.

A worker holding a lock must not wait for its turn (the turn's holder may want that lock):
`waiting()` is only used where no lock is held. Should a turn still not come within
`TURN_WAIT`, the worker runs without one, as every worker did before.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

TURN_WAIT = 2.0  # seconds: far beyond any turn (a step's CPU is a few ms), a deadlock's guard

_turn = threading.Lock()
_mine = threading.local()  # .held: this thread has the turn
_END = object()  # waiting_for_each: no more items


@contextmanager
def turn() -> Iterator[None]:
    """Run the body as the one worker with a turn (fleet.py: each member's step)."""
    _mine.held = _turn.acquire(timeout=TURN_WAIT)
    try:
        yield
    finally:
        if _mine.held:
            _mine.held = False
            _turn.release()


@contextmanager
def waiting() -> Iterator[None]:
    """Give the turn up for the body (a wait), and take it back after."""
    if not getattr(_mine, "held", False):
        yield
        return
    _mine.held = False
    _turn.release()
    try:
        yield
    finally:
        _mine.held = _turn.acquire(timeout=TURN_WAIT)


def waiting_for_each(items: Iterator[T]) -> Iterator[T]:
    """`items`, each one waited for without the turn (a long export read from the network)."""
    while True:
        with waiting():
            item = next(items, _END)
        if item is _END:
            return
        yield item  # type: ignore[misc]

