"""Which file events wake a fleet member (fleet.Fleet._on_events), on real files: the events of
its own acknowledgement's write to the -wal are skipped (its own look comes OWN_WRITE_LOOK
later), anything else wakes it."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import inotify_simple
import pytest

from cdc_daemon.fleet import Fleet, Folder
from cdc_daemon.fleet_member import Member, wal_signature
from cdc_daemon.notify import Notifier

MODIFY = inotify_simple.flags.MODIFY
MOVED_TO = inotify_simple.flags.MOVED_TO


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    database = tmp_path / "a.db"
    database.write_bytes(b"db")
    Path(f"{database}-wal").write_bytes(b"wal frames")
    folder = Folder(
        glob=str(tmp_path / "*.db"),
        path=tmp_path,
        files=lambda: ({"a": database}, []),
        matches=lambda name: name.endswith(".db"),
    )
    fleet = Fleet(folder, cast(Any, None), cast(Any, None), threading.Event(), Notifier({}))
    member = Member("a", database, state="syncing", started=True)
    fleet._members = {"a": member}
    fleet._by_file = {"a.db": member}
    fleet._next_rescan = 1e18  # no listing of the folder in these tests
    yield fleet
    os.close(fleet._wake_read)
    os.close(fleet._wake_write)


def woken(fleet: Fleet) -> list[str]:
    names = []
    while not fleet._work.empty():
        member = fleet._work.get_nowait()
        assert member is not None
        names.append(member.name)
        member.scheduled = False
    return names


def test_its_own_acknowledgement_does_not_wake_it(fleet: Fleet) -> None:
    member = fleet._members["a"]
    member.own_write = wal_signature(member.wal)
    fleet._on_events([("a.db-wal", MODIFY), ("a.db-wal", MODIFY)])
    assert woken(fleet) == []


def test_an_app_write_after_it_wakes_it(fleet: Fleet) -> None:
    member = fleet._members["a"]
    member.own_write = wal_signature(member.wal)
    with open(member.wal, "ab") as wal:
        wal.write(b" and the app's commit")
    fleet._on_events([("a.db-wal", MODIFY)])
    assert woken(fleet) == ["a"]
    assert member.settle > 0  # and looks again while the commit may not show yet


@pytest.mark.parametrize("event", [("a.db", MODIFY), ("a.db-wal", MOVED_TO), ("a.db", MOVED_TO)])
def test_any_other_event_wakes_it_even_with_the_wal_as_it_left_it(
    fleet: Fleet, event: tuple[str, int]
) -> None:
    """A backup moved over the database leaves the -wal as it was: its event must wake."""
    member = fleet._members["a"]
    member.own_write = wal_signature(member.wal)
    fleet._on_events([("a.db-wal", MODIFY), event])
    assert woken(fleet) == ["a"]


def test_without_an_acknowledgement_of_its_own_every_write_wakes_it(fleet: Fleet) -> None:
    fleet._on_events([("a.db-wal", MODIFY)])
    assert woken(fleet) == ["a"]
