"""Which file events wake a fleet member (fleet.Fleet._on_events), on real files: every event on
its files, its own acknowledgement's included (they can't be told apart from an app's write just
after it). And the looks a wake leads to (Member.step, with a stand-in daemon)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import inotify_simple
import pytest

from cdc_daemon import turns
from cdc_daemon.database import file_identity
from cdc_daemon.fleet import Fleet, Folder
from cdc_daemon.fleet_member import IDLE_LOOK, SETTLE_DELAYS, Member, Shared
from cdc_daemon.notify import Notifier
from cdc_daemon.sync import BatchReport

MODIFY = inotify_simple.flags.MODIFY
MOVED_TO = inotify_simple.flags.MOVED_TO


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    database = tmp_path / "a.db"
    database.write_bytes(b"db")
    folder = Folder(
        glob=str(tmp_path / "*.db"),
        path=tmp_path,
        files=lambda: ({"a": database}, []),
        matches=lambda name: name.endswith(".db"),
        workers=4,
    )
    fleet = Fleet(folder, cast(Any, None), cast(Any, None), threading.Event(), Notifier({}))
    member = Member("a", database, state="syncing", started=True)
    fleet._members = {"a": member}
    fleet._by_file = {"a.db": member}
    fleet._next_rescan = 1e18  # no listing of the folder in these tests
    yield fleet
    fleet._wake.close()


def woken(fleet: Fleet) -> list[str]:
    names = []
    while not fleet._work.empty():
        member = fleet._work.get_nowait()
        assert member is not None
        names.append(member.name)
        member.scheduled = False
    return names


def test_every_write_to_its_files_wakes_it_and_asks_for_looks(fleet: Fleet) -> None:
    fleet._on_events([("a.db-wal", MODIFY)])
    assert woken(fleet) == ["a"]
    assert fleet._members["a"].settle == len(SETTLE_DELAYS)


@pytest.mark.parametrize("event", [("a.db", MODIFY), ("a.db-wal", MOVED_TO), ("a.db", MOVED_TO)])
def test_a_file_moved_over_it_wakes_it(fleet: Fleet, event: tuple[str, int]) -> None:
    fleet._on_events([event])
    assert woken(fleet) == ["a"]


def test_a_wake_that_finds_nothing_yet_keeps_its_settle_looks(tmp_path: Path) -> None:
    """Woken by an app's write whose commit does not show yet, while data_version moved for an
    earlier commit this member already synced: the iteration reads nothing, and the member must
    look again shortly (it waited the 30 s idle look before: a hostile run's repro)."""
    database = tmp_path / "a.db"
    database.write_bytes(b"db")
    db = SimpleNamespace(data_version=lambda: 2, replaced=lambda: False, scalar=lambda _sql: None)
    runtime = SimpleNamespace(
        db=db,
        names=SimpleNamespace(log="change_log"),
        syncer=SimpleNamespace(broken={}),
        settings=SimpleNamespace(poll_interval=0.5),
    )
    daemon = SimpleNamespace(
        runtime=runtime,
        owed=False,
        busy=False,
        consecutive_failures=0,
        triggers=SimpleNamespace(problems={}),
        iteration=lambda: BatchReport(),  # nothing to read yet
    )
    member = Member("a", database, state="syncing", started=True, daemon=cast(Any, daemon))
    member.version, member.identity = 1, file_identity(database)
    member.settle = len(SETTLE_DELAYS)  # as fleet.py sets it for an event
    shared = Shared(cast(Any, None), cast(Any, None), threading.Event())
    assert member.step(shared) == SETTLE_DELAYS[0]
    assert member.step(shared) == SETTLE_DELAYS[1]  # data_version unchanged: a plain look
    assert member.step(shared) == IDLE_LOOK


def test_a_worker_runs_each_step_in_its_turn(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker at a time runs Python and SQLite (turns.py); the turn ends with the step."""
    member = fleet._members["a"]
    held: list[bool] = []

    def step(_shared: Shared) -> float | None:
        held.append(turns._turn.locked())
        return None

    monkeypatch.setattr(member, "step", step)
    fleet._submit(member)
    fleet._work.put(None)  # then the worker ends
    fleet._worker()
    assert held == [True]
    assert not turns._turn.locked()
