"""Group commit of small imports to one collection (typesense/import_groups.py), with a fake
send that blocks until the test lets it go: what goes in which request, who gets which results."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import cdc_daemon.typesense.import_groups as import_groups
from cdc_daemon.errors import TargetError
from cdc_daemon.sink import DocResult
from cdc_daemon.typesense.import_groups import GROUP_BYTES, ImportGroups


class FakeImports:
    """Records each request; a request blocks until `release` lets it answer. Each document's
    result names the body line it came from, so a caller can see it got its own."""

    def __init__(self, fail: bool = False) -> None:
        self.requests: list[tuple[str, bytes, int]] = []
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.fail = fail

    def send(self, collection: str, dirty_values: str, body: bytes, count: int) -> list[DocResult]:
        self.requests.append((collection, body, count))
        self.started.release()
        assert self.release.acquire(timeout=10)
        if self.fail:
            raise TargetError("import failed")
        lines = body.decode().split("\n")
        assert len(lines) == count
        return [DocResult(ok=False, error=line) for line in lines]


def in_thread(call: Callable[[], list[DocResult]]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def queued(groups: ImportGroups, collection: str, waiting: int) -> bool:
    group = groups._waiting.get((collection, "reject"))
    return group is not None and len(group.bodies) == waiting


def wait_for(condition: Callable[[], bool]) -> None:
    event = threading.Event()
    for _ in range(1000):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError("never happened")


def test_alone_sends_at_once() -> None:
    fake = FakeImports()
    groups = ImportGroups(fake.send)
    fake.release.release()
    assert groups.upsert("c", "reject", b"a1\na2", 2) == [
        DocResult(ok=False, error="a1"),
        DocResult(ok=False, error="a2"),
    ]
    assert fake.requests == [("c", b"a1\na2", 2)]
    assert groups._in_flight == set()


def test_callers_arriving_during_an_import_go_together_each_with_its_own_results() -> None:
    fake = FakeImports()
    groups = ImportGroups(fake.send)
    first, first_out = in_thread(lambda: groups.upsert("c", "reject", b"a1", 1))
    assert fake.started.acquire(timeout=10)  # the first import is in flight
    others = [
        in_thread(lambda body=body, n=n: groups.upsert("c", "reject", body, n))
        for body, n in ((b"b1\nb2", 2), (b"c1", 1), (b"d1\nd2\nd3", 3))
    ]
    wait_for(lambda: queued(groups, "c", 3))
    other_collection, other_out = in_thread(lambda: groups.upsert("x", "reject", b"x1", 1))
    assert fake.started.acquire(timeout=10)  # another collection does not wait
    for _ in range(3):
        fake.release.release()
    for thread, _out in [(first, first_out), *others, (other_collection, other_out)]:
        thread.join(10)
    assert [r[1] for r in fake.requests if r[0] == "c"] == [b"a1", b"b1\nb2\nc1\nd1\nd2\nd3"]
    expected = [["b1", "b2"], ["c1"], ["d1", "d2", "d3"]]
    for (_thread, out), lines in zip(others, expected, strict=True):
        assert out == [[DocResult(ok=False, error=line) for line in lines]]
    assert first_out == [[DocResult(ok=False, error="a1")]]
    assert other_out == [[DocResult(ok=False, error="x1")]]
    assert groups._in_flight == set() and groups._waiting == {}


def test_a_failed_group_import_fails_every_caller_in_it() -> None:
    fake = FakeImports()
    groups = ImportGroups(fake.send)
    first, first_out = in_thread(lambda: groups.upsert("c", "reject", b"a1", 1))
    assert fake.started.acquire(timeout=10)
    others = [in_thread(lambda b=b: groups.upsert("c", "reject", b, 1)) for b in (b"b", b"c")]
    wait_for(lambda: queued(groups, "c", 2))
    fake.fail = True
    fake.release.release()
    fake.release.release()
    for thread, _out in [(first, first_out), *others]:
        thread.join(10)
    for _thread, out in others:
        assert len(out) == 1 and isinstance(out[0], TargetError)
    assert groups._in_flight == set() and groups._waiting == {}


@pytest.mark.parametrize("dirty_values", ["reject", "coerce_or_drop"])
def test_different_dirty_values_never_share_an_import(dirty_values: str) -> None:
    fake = FakeImports()
    groups = ImportGroups(fake.send)
    first, _ = in_thread(lambda: groups.upsert("c", "reject", b"a", 1))
    assert fake.started.acquire(timeout=10)
    second, second_out = in_thread(lambda: groups.upsert("c", dirty_values, b"b", 1))
    if dirty_values == "reject":
        wait_for(lambda: queued(groups, "c", 1))
        assert len(fake.requests) == 1
    else:
        assert fake.started.acquire(timeout=10)  # its own import, beside the first
        assert len(fake.requests) == 2
    fake.release.release()
    fake.release.release()
    first.join(10)
    second.join(10)
    assert second_out == [[DocResult(ok=False, error="b")]]


def test_large_bodies_and_a_full_group_never_wait() -> None:
    fake = FakeImports()
    groups = ImportGroups(fake.send)
    first, _ = in_thread(lambda: groups.upsert("c", "reject", b"a", 1))
    assert fake.started.acquire(timeout=10)
    big = b"x" * GROUP_BYTES
    large, _ = in_thread(lambda: groups.upsert("c", "reject", big, 1))
    assert fake.started.acquire(timeout=10)  # sent beside the import in flight
    half = b"y" * (GROUP_BYTES // 2)
    joined, _ = in_thread(lambda: groups.upsert("c", "reject", half, 1))
    wait_for(lambda: queued(groups, "c", 1))
    beside, _ = in_thread(lambda: groups.upsert("c", "reject", half, 1))
    assert fake.started.acquire(timeout=10)  # the waiting group is full: sent beside it
    assert len(fake.requests) == 3
    for _ in range(4):
        fake.release.release()
    for thread in (first, large, joined, beside):
        thread.join(10)
    assert [r[1] for r in fake.requests] == [b"a", big, half, half]
    assert groups._in_flight == set() and groups._waiting == {}


def test_a_group_whose_turn_came_still_takes_callers_until_it_has_grown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under load (an import was in flight), a small group waits a moment for more callers:
    one caller arriving after its turn came still goes in its import."""
    monkeypatch.setattr(import_groups, "LINGER_SECONDS", 30.0)
    monkeypatch.setattr(import_groups, "LINGER_UNTIL", 2)
    fake = FakeImports()
    groups = ImportGroups(fake.send)
    first, _ = in_thread(lambda: groups.upsert("c", "reject", b"a", 1))
    assert fake.started.acquire(timeout=10)
    leader, leader_out = in_thread(lambda: groups.upsert("c", "reject", b"b", 1))
    wait_for(lambda: queued(groups, "c", 1))
    group = groups._waiting[("c", "reject")]
    fake.release.release()  # the first import answers: the group may be sent
    wait_for(group.may_send.is_set)
    assert len(fake.requests) == 1  # still waiting for a second caller
    late, late_out = in_thread(lambda: groups.upsert("c", "reject", b"c", 1))
    assert fake.started.acquire(timeout=10)
    fake.release.release()
    for thread in (first, leader, late):
        thread.join(10)
    assert [r[1] for r in fake.requests] == [b"a", b"b\nc"]
    assert leader_out == [[DocResult(ok=False, error="b")]]
    assert late_out == [[DocResult(ok=False, error="c")]]
