"""turns.py: a fleet's workers run one at a time and give their turn up while they wait; and
the places that wait (a locked database, an export read from the network) give it up."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import cdc_daemon.database as database
from cdc_daemon import turns
from cdc_daemon.database import BUSY_TIMEOUT_MS, Database, wait_while_busy
from cdc_daemon.errors import DatabaseBusy
from cdc_daemon.kms import KmsKey, KmsSource
from cdc_daemon.typesense.nodes import NodePool


def run(target: object) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


def test_a_turn_is_held_for_its_body_and_given_up_while_waiting() -> None:
    seen = []
    with turns.turn():
        seen.append(turns._turn.locked())
        with turns.waiting():
            seen.append(turns._turn.locked())
            with turns.waiting():  # nested: still without it, and no second release
                seen.append(turns._turn.locked())
            seen.append(turns._turn.locked())
        seen.append(turns._turn.locked())
    seen.append(turns._turn.locked())
    assert seen == [True, False, False, False, True, False]


def test_waiting_without_a_turn_leaves_the_holders_turn_alone() -> None:
    """A thread that never took a turn (the single-database loop, an admin request)."""
    assert turns._turn.acquire()
    try:
        seen = []

        def other() -> None:
            with turns.waiting():
                seen.append(turns._turn.locked())

        thread = run(other)
        thread.join(10)
        assert not thread.is_alive() and seen == [True]
        assert turns._turn.locked()
    finally:
        turns._turn.release()


def test_a_turn_not_granted_in_time_runs_anyway_and_releases_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(turns, "TURN_WAIT", 0.01)
    assert turns._turn.acquire()  # a holder that never lets go (a deadlock's stand-in)
    try:
        ran = []

        def worker() -> None:
            with turns.turn():
                ran.append(True)

        thread = run(worker)
        thread.join(10)
        assert ran == [True]
        assert turns._turn.locked()  # still the holder's
    finally:
        turns._turn.release()


def test_another_worker_runs_while_one_waits() -> None:
    a_waiting, b_done = threading.Event(), threading.Event()
    order: list[str] = []

    def a() -> None:
        with turns.turn():
            with turns.waiting():
                a_waiting.set()
                assert b_done.wait(10)
            order.append("a back")

    def b() -> None:
        assert a_waiting.wait(10)
        with turns.turn():
            order.append("b")
        b_done.set()

    threads = [run(a), run(b)]
    for thread in threads:
        thread.join(10)
    assert order == ["b", "a back"]


def test_each_item_is_waited_for_without_the_turn() -> None:
    def items() -> Iterator[bool]:
        for _ in range(3):
            yield turns._turn.locked()

    with turns.turn():
        assert list(turns.waiting_for_each(items())) == [False, False, False]
        assert turns._turn.locked()


def test_the_busy_wait_is_sqlites_schedule_and_gives_the_turn_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[tuple[float, bool]] = []
    monkeypatch.setattr(database.time, "sleep", lambda s: slept.append((s, turns._turn.locked())))
    tries = 0
    with turns.turn():
        while wait_while_busy(tries):
            tries += 1
    assert [s for s, _ in slept[:4]] == [0.001, 0.002, 0.005, 0.010]
    assert sum(s for s, _ in slept) == pytest.approx(BUSY_TIMEOUT_MS / 1000)
    assert not any(locked for _, locked in slept)


# The app, in a process of its own (POSIX locks don't keep a process from itself): holds its
# write lock until a line comes on stdin.
HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def test_a_worker_waiting_for_a_locked_database_lets_the_others_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app holding its write lock: the worker writing waits for it (busy timeout) without
    its turn, and another worker's turn comes meanwhile, well before that wait ends."""
    monkeypatch.setattr(turns, "TURN_WAIT", 60.0)  # no running without the turn here
    path = tmp_path / "app.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    app = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert app.stdin is not None and app.stdout is not None
    db = Database(path)
    in_turn, other_ran = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    threads: list[threading.Thread] = []

    def writer() -> None:
        with turns.turn():
            in_turn.set()
            try:
                with db.write() as conn:
                    conn.execute("INSERT INTO t VALUES (1)")
            except DatabaseBusy as exc:
                errors.append(exc)

    def other() -> None:
        assert in_turn.wait(10)
        with turns.turn():
            other_ran.set()

    try:
        assert app.stdout.readline().strip() == "locked"
        threads += [run(writer), run(other)]
        assert other_ran.wait(BUSY_TIMEOUT_MS / 1000 * 0.8)
    finally:
        app.stdin.write("\n")
        app.stdin.close()
        app.wait(10)
        for thread in threads:
            thread.join(10)
        db.close()
    assert not errors  # the lock went before the busy timeout: the write went through
    assert sqlite3.connect(path).execute("SELECT x FROM t").fetchall() == [(1,)]


# -- the other waits of a step, each done without the turn ---------------------------------------


def turn_held_during(record: list[bool]) -> httpx.MockTransport:
    """A transport that notes, for each request, whether the turn was held while it was sent."""

    def handler(request: httpx.Request) -> httpx.Response:
        record.append(turns._turn.locked())
        if request.url.path == "/health":
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(200, json={"api_key": "k1"})

    return httpx.MockTransport(handler)


def test_a_node_health_probe_is_waited_for_without_the_turn() -> None:
    held: list[bool] = []
    pool = NodePool(["http://a:8108"], httpx.Client(transport=turn_held_during(held)), 1.0)
    with turns.turn():
        assert pool._probe(pool.nodes[0]) is None
    assert held == [False]


def test_a_kms_key_fetch_is_waited_for_without_the_turn(tmp_path: Path) -> None:
    """Its lock is taken after the turn is given up: the turn's next holder may want it."""
    held: list[bool] = []
    token = tmp_path / "token"
    token.write_text("a-token")
    source = KmsSource("http://kms.invalid", "svc", token, 3600, name="test.kms")
    key = KmsKey(source, timeout=1, transport=turn_held_during(held))
    try:
        with turns.turn():
            assert key() == "k1"
            key.rejected("k1")
            assert turns._turn.locked()
    finally:
        key.close()
    assert held == [False, False]


def test_a_commit_is_waited_for_without_the_turn(tmp_path: Path) -> None:
    """A COMMIT may wait for the app's readers or an fsync: its locks go before the turn comes
    back."""
    path = tmp_path / "app.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    db = Database(path)
    held: list[bool] = []

    def commit_hook() -> bool:
        held.append(turns._turn.locked())
        return False  # go on with the commit

    db.conn.set_commit_hook(commit_hook)
    try:
        with turns.turn(), db.write() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
    finally:
        db.close()
    assert held == [False]
