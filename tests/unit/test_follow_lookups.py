"""One look at a shared collection serves every database of a process that follows it
(evolution.FollowLookups): a thousand followers cost one alias and collection read per
FOLLOW_REUSE seconds, not two or three GETs each every FOLLOW_INTERVAL."""

from __future__ import annotations

from typing import Any, cast

import pytest

import cdc_daemon.evolution as evolution
from cdc_daemon.evolution import FOLLOW_REUSE, FollowLookups
from cdc_daemon.sink import Sink


class Reads:
    """The two reads a look makes, counted."""

    def __init__(self, aliases: dict[str, str], collections: dict[str, dict[str, Any]]) -> None:
        self.aliases = aliases
        self.collections = collections
        self.calls: list[str] = []

    def get_alias(self, name: str) -> str | None:
        self.calls.append(f"alias {name}")
        return self.aliases.get(name)

    def get_collection(self, name: str) -> dict[str, Any] | None:
        self.calls.append(f"collection {name}")
        return self.collections.get(name)


def sink_of(reads: Reads) -> Sink:
    return cast(Sink, reads)


def test_databases_of_one_process_share_a_look_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(evolution.time, "monotonic", lambda: now[0])
    reads = Reads({"books": "books__v1"}, {"books__v1": {"name": "books__v1"}})
    lookups = FollowLookups()
    first = lookups.look(sink_of(reads), "books")
    assert reads.calls == ["alias books", "collection books__v1", "collection books__v2"]
    assert (first.alias, first.collection, first.upcoming, first.rebuild) == (
        "books__v1",
        {"name": "books__v1"},
        "books__v2",
        None,
    )
    now[0] += FOLLOW_REUSE - 0.1
    assert [lookups.look(sink_of(reads), "books") for _ in range(999)] == [first] * 999
    assert len(reads.calls) == 3  # a thousand followers: one look
    now[0] += 0.2
    reads.collections["books__v2"] = {"name": "books__v2"}  # the manager's rebuild
    later = lookups.look(sink_of(reads), "books")
    assert len(reads.calls) == 6
    assert later.rebuild == {"name": "books__v2"}


def test_a_fresh_look_when_asked_and_per_alias() -> None:
    reads = Reads({}, {"books": {"name": "books"}})
    lookups = FollowLookups()
    lookups.look(sink_of(reads), "books")
    lookups.look(sink_of(reads), "books", reuse=0)  # check: never an old look
    other = lookups.look(sink_of(reads), "authors")
    # no alias: the collection of that name, and no rebuild to look for
    assert reads.calls == ["alias books", "collection books"] * 2 + [
        "alias authors",
        "collection authors",
    ]
    assert (other.alias, other.collection, other.upcoming) == (None, None, None)
