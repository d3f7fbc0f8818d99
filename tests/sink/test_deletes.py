"""Deletes against the real Typesense: ids a filter can't match, already-gone documents, and how
many requests it takes (a count above 0 proves the filter was read; 0 is settled one by one)."""

from __future__ import annotations

import httpx
from support import API_KEY

from cdc_daemon.localserver import LocalTypesense
from cdc_daemon.typesense import TypesenseSink


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.deletes: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            self.deletes.append(str(request.url))
        return super().handle_request(request)


def _sink(typesense: LocalTypesense) -> tuple[TypesenseSink, CountingTransport]:
    transport = CountingTransport()
    return TypesenseSink([typesense.url], lambda: API_KEY, 10, transport=transport), transport


def _collection(sink: TypesenseSink, name: str, ids: list[str]) -> None:
    sink.delete_collection(name)
    sink.create_collection({"name": name, "fields": [{"name": "v", "type": "string"}]})
    assert all(r.ok for r in sink.upsert(name, [{"id": i, "v": "x"} for i in ids]))


def test_awkward_ids_are_deleted_and_gone_ones_count_as_deleted(
    typesense: LocalTypesense,
) -> None:
    sink, _ = _sink(typesense)
    awkward = ["back\\slash", " lead", "trail ", "tick`", "b]", "c,d", "ü文", "n\nl", "q'", 'r"']
    plain = [f"p{i}" for i in range(20)]
    _collection(sink, "sink_deletes_awkward", awkward + plain)
    results = sink.delete("sink_deletes_awkward", [*awkward, *plain, "never-existed", "nope\\"])
    assert all(r.ok for r in results)
    assert list(sink.export("sink_deletes_awkward")) == []
    sink.delete_collection("sink_deletes_awkward")
    sink.close()


def test_request_count(typesense: LocalTypesense) -> None:
    sink, transport = _sink(typesense)
    existing = [f"e{i}" for i in range(100)]
    _collection(sink, "sink_deletes_count", existing)
    transport.deletes.clear()
    # half of them never existed: one filter delete suffices (it matched some, so it was read)
    sink.delete("sink_deletes_count", existing[:50] + [f"gone{i}" for i in range(50)])
    assert len(transport.deletes) == 1
    # none exist: 0 deleted could also mean an unreadable filter, so each id is settled alone
    transport.deletes.clear()
    assert all(r.ok for r in sink.delete("sink_deletes_count", [f"gone{i}" for i in range(10)]))
    assert len(transport.deletes) == 1 + 10
    assert {d["id"] for d in sink.export("sink_deletes_count")} == set(existing[50:])
    sink.delete_collection("sink_deletes_count")
    sink.close()
