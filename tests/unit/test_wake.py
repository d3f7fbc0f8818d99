"""How ChangeWaiter (wake.py) waits after a file event: short looks at data_version while the
commit may not show yet, and a new event (an app's commit just after our own acknowledgement's
write) ends a look's wait at once. The inotify reads are scripted: which timeouts were asked."""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import wait_for

from cdc_daemon.wake import SETTLE_DELAYS, ChangeWaiter, Nudge


class ScriptedEvents:
    """Each read returns the next scripted batch of file names, and records its timeout."""

    def __init__(self, batches: list[list[str]], on_read: list[object]) -> None:
        self.batches = batches
        self.on_read = on_read  # called after the read of the same index, if any
        self.timeouts: list[int] = []

    def read(self, timeout: int) -> list[SimpleNamespace]:
        index = len(self.timeouts)
        self.timeouts.append(timeout)
        names = self.batches[index] if index < len(self.batches) else []
        action = self.on_read[index] if index < len(self.on_read) else None
        if callable(action):
            action()
        return [SimpleNamespace(name=name) for name in names]

    def close(self) -> None:
        pass


def waiter_with(tmp_path: Path, version: list[int], events: ScriptedEvents) -> ChangeWaiter:
    database = tmp_path / "app.db"
    database.write_bytes(b"")
    waiter = ChangeWaiter(database, lambda: version[0], 60.0, threading.Event())
    waiter.close()
    waiter._inotify = events  # type: ignore[assignment]
    return waiter


def commit(version: list[int]) -> object:
    def bump() -> None:
        version[0] += 1

    return bump


def test_an_event_during_the_looks_ends_the_wait_at_once(tmp_path: Path) -> None:
    """Our acknowledgement's write (no new data_version), then the app's commit during the first
    short look: seen after that read, not after the looks' schedule."""
    version = [1]
    events = ScriptedEvents([["app.db-wal"], ["app.db-wal"]], [None, commit(version)])
    waiter = waiter_with(tmp_path, version, events)
    waiter.wait()
    assert events.timeouts == [250, round(SETTLE_DELAYS[0] * 1000)]


def test_after_an_event_the_looks_follow_the_schedule_then_the_long_wait(tmp_path: Path) -> None:
    version = [1]
    looks = len(SETTLE_DELAYS)
    events = ScriptedEvents([["app.db-wal"]], [None] * (looks + 1) + [commit(version)])
    waiter = waiter_with(tmp_path, version, events)
    waiter.wait()
    assert events.timeouts == [250, *(max(1, round(d * 1000)) for d in SETTLE_DELAYS), 250]


def test_other_files_events_start_no_looks(tmp_path: Path) -> None:
    version = [1]
    events = ScriptedEvents([["other.db-wal"]], [None, commit(version)])
    waiter = waiter_with(tmp_path, version, events)
    waiter.wait()
    assert events.timeouts == [250, 250]


def _asleep(thread: threading.Thread) -> bool:
    """The thread sleeps in the kernel (state S in /proc): here, blocked in poll()."""
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "S"


def test_a_nudge_ends_a_real_wait_at_once(tmp_path: Path) -> None:
    """Real inotify, nothing written: only the nudge (another thread) can end the 60 s wait."""
    database = tmp_path / "app.db"
    database.write_bytes(b"")
    nudge = Nudge()
    waiter = ChangeWaiter(database, lambda: 1, 60.0, threading.Event(), nudge=nudge)
    waiting = threading.Thread(target=waiter.wait)
    try:
        waiting.start()
        wait_for(lambda: _asleep(waiting), 10, message="the wait blocked in poll()")
        nudge()
        waiting.join(timeout=20)
        assert not waiting.is_alive()
        assert not nudge.taken()  # the wait took the nudge: the next wait sleeps again
    finally:
        waiter.close()
        nudge.close()
        waiting.join()


def test_a_nudge_after_close_does_nothing() -> None:
    """The loop stopped before an admin resume came: no error, and nothing is written to the
    descriptors, which a new pipe may have taken over by then."""
    nudge = Nudge()
    numbers = (nudge.fileno(), nudge._write)
    nudge.close()
    read, write = os.pipe()  # the lowest free numbers: the ones just closed
    try:
        assert (read, write) == numbers
        os.set_blocking(read, False)
        nudge()
        nudge.close()
        with pytest.raises(BlockingIOError):  # nothing written into the new pipe
            os.read(read, 1)
    finally:
        os.close(read)
        os.close(write)


def test_a_nudge_works_past_descriptor_1024(tmp_path: Path) -> None:
    """select() refuses descriptor numbers from 1024 on; a daemon with many connections open
    gets such numbers for the waiter it makes on a reload."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1200, hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    database = tmp_path / "app.db"
    database.write_bytes(b"")
    nudge = Nudge()
    waiter = ChangeWaiter(database, lambda: 1, 60.0, threading.Event(), nudge=nudge)
    try:
        assert nudge.fileno() >= 1024
        nudge()
        waiter.wait()  # returns at once: nudged
        assert not nudge.taken()
    finally:
        waiter.close()
        nudge.close()
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_nudge_on_the_thread_that_is_closing_it_does_not_hang() -> None:
    """fleet.py nudges its main thread from the SIGHUP handler, which runs on that same thread,
    possibly while it is inside close(): the nudge's lock must let it in."""
    nudge = Nudge()
    done = threading.Event()

    def signal_during_close() -> None:
        with nudge._lock:  # as close() holds it when the handler runs
            nudge()
        done.set()

    threading.Thread(target=signal_during_close, daemon=True).start()
    assert done.wait(5), "a nudge inside close() hung"
    assert nudge.taken()
    nudge.close()
