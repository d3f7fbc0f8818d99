"""The cluster client (cdc_daemon/typesense) against scripted nodes (httpx.MockTransport): node
order, failover, per-node backoff and probes, the return to a recovered node, uncertain writes,
and the re-send of their keys by the Syncer."""

from __future__ import annotations

import gc
import json
import sqlite3
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cdc_daemon.changelog import ChangeLog
from cdc_daemon.config import TableConfig
from cdc_daemon.database import Database
from cdc_daemon.errors import AuthError, CollectionMissing, TargetTimeout, TargetUnavailable
from cdc_daemon.evolution import CollectionManager, Target
from cdc_daemon.log_schema import LogTables
from cdc_daemon.sink import EncodedLines
from cdc_daemon.sync import Syncer
from cdc_daemon.triggers import install
from cdc_daemon.typesense import TypesenseSink
from cdc_daemon.wiring import mapping_from_config

A, B, C = "http://a:8108", "http://b:8108", "http://c:8108"
Handler = Callable[[httpx.Request], httpx.Response]


def ok(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/health":
        return httpx.Response(200, json={"ok": True})
    parts = request.url.path.split("/")
    if len(parts) == 3 and parts[1] == "collections":  # GET /collections/<name>
        return httpx.Response(200, json={"name": parts[2], "fields": []})
    if request.url.path.endswith("/import"):
        lines = [line for line in request.content.decode().split("\n") if line.strip()]
        return httpx.Response(200, text="\n".join('{"success":true}' for _ in lines))
    if request.method == "GET" and "/documents/" in request.url.path:  # a document by its id
        return httpx.Response(200, json={"id": request.url.path.rsplit("/", 1)[1]})
    return httpx.Response(200, json={"found": 0})


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def timed_out(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/health":
        raise httpx.ConnectTimeout("slow", request=request)
    raise httpx.ReadTimeout("slow", request=request)


def on_import(failure: Handler) -> Handler:
    """A node that answers everything but imports, which fail with `failure`."""

    def handler(request: httpx.Request) -> httpx.Response:
        return (failure if request.url.path.endswith("/import") else ok)(request)

    return handler


class Cluster:
    """Scripted nodes: `behave[host]` answers that node's requests; `seen` records them."""

    def __init__(self, **behave: Handler) -> None:
        self.behave = {"a": ok, "b": ok, "c": ok, **behave}
        self.seen: list[tuple[str, str, str]] = []
        self.bodies: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        path = request.url.path
        lookup = (
            request.method == "GET" and path.startswith("/collections/") and path.count("/") == 2
        )
        if request.url.path.startswith("/aliases/") or lookup:  # name lookups: not recorded
            response = self.behave[host](request)
            if response.status_code == 200 and not lookup:  # no aliases here
                response = httpx.Response(404, json={"message": "Not Found"})
            return response
        self.seen.append((host, request.method, request.url.path))
        response = self.behave[host](request)
        self.bodies.append((host, request.content.decode()))
        return response

    def hosts(self, path_end: str = "") -> list[str]:
        return [h for h, _m, p in self.seen if p.endswith(path_end) and p != "/health"]

    def sink(self, nodes: list[str] | None = None, **kwargs: object) -> TypesenseSink:
        return TypesenseSink(
            nodes or [A, B, C],
            lambda: "key",
            timeout=1.0,
            transport=httpx.MockTransport(self),
            **kwargs,  # type: ignore[arg-type]
        )


def backoff_over(sink: TypesenseSink) -> None:
    for node in sink.pool.nodes:
        node.down_until = 0.0


def test_requests_go_to_the_first_node_in_preference_order() -> None:
    cluster = Cluster()
    sink = cluster.sink()
    for _ in range(3):
        sink.get_document("c", "1")
    assert cluster.hosts() == ["a", "a", "a"]
    assert sink.up


def test_nearest_node_is_tried_first_and_not_twice() -> None:
    cluster = Cluster()
    sink = cluster.sink(nearest_node=C)
    sink.get_document("c", "1")
    assert cluster.hosts() == ["c"]
    assert list(sink.node_health()) == [C, A, B]


@pytest.mark.parametrize(
    "failure",
    [
        refused,
        timed_out,
        lambda r: httpx.Response(503, json={"message": "Not Ready or Lagging"}),
        lambda r: httpx.Response(500, json={"message": "Could not find a leader."}),
        lambda r: httpx.Response(502, text="bad gateway"),
        lambda r: httpx.Response(429, json={"message": "rate limited"}),
    ],
    ids=["refused", "timeout", "not-ready", "no-leader", "5xx", "429"],
)
def test_a_failing_node_is_skipped_and_marked_down(failure: Handler) -> None:
    cluster = Cluster(a=on_import(failure))
    sink = cluster.sink()
    results = sink.upsert("c", [{"id": "1"}])
    assert results[0].ok
    assert cluster.hosts("/import") == ["a", "b"]
    assert sink.node_health() == {A: False, B: True, C: True}
    sink.upsert("c", [{"id": "2"}])  # a is backing off: straight to b, no new attempt on a
    assert cluster.hosts("/import") == ["a", "b", "b"]


def test_a_document_rejection_is_not_a_node_failure() -> None:
    def reject(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, text='{"success":false,"code":400,"error":"Field `x` must be an int64."}'
        )

    cluster = Cluster(a=on_import(reject))  # its collection lookup answers a collection
    sink = cluster.sink()
    results = sink.upsert("c", [{"id": "1"}])
    assert not results[0].ok and not results[0].retryable
    assert cluster.hosts("/import") == ["a"]
    assert sink.node_health()[A]


def test_an_import_whose_every_line_says_not_ready_fails_over() -> None:
    def lagging(request: httpx.Request) -> httpx.Response:
        line = '{"success":false,"code":503,"error":"Not Ready or Lagging"}'
        return httpx.Response(200, text=line + "\n" + line)

    cluster = Cluster(a=on_import(lagging))
    sink = cluster.sink()
    assert all(r.ok for r in sink.upsert("c", [{"id": "1"}, {"id": "2"}]))
    assert cluster.hosts("/import") == ["a", "b"]


def test_a_document_that_mentions_the_marker_is_just_a_document() -> None:
    def document(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "1", "text": "Could not find a leader"})

    cluster = Cluster(a=document)
    sink = cluster.sink()
    assert sink.get_document("c", "1") == {"id": "1", "text": "Could not find a leader"}
    assert cluster.hosts() == ["a"]


def test_returns_to_the_preferred_node_after_its_backoff_once_it_answers_health() -> None:
    cluster = Cluster(a=refused)
    sink = cluster.sink()
    sink.get_document("c", "1")
    assert cluster.hosts() == ["a", "b"]
    backoff_over(sink)
    sink.get_document("c", "1")  # a still down: its probe fails, b answers
    assert [h for h, _m, p in cluster.seen[2:]] == ["a", "b"]
    assert cluster.seen[2][2] == "/health"
    cluster.behave["a"] = ok
    backoff_over(sink)
    cluster.seen.clear()
    sink.get_document("c", "1")
    assert [(h, p) for h, _m, p in cluster.seen] == [
        ("a", "/health"),
        ("a", "/collections/c/documents/1"),
    ]
    assert sink.node_health() == {A: True, B: True, C: True}


def test_a_slow_node_costs_a_probe_not_a_write() -> None:
    cluster = Cluster(a=timed_out)
    sink = cluster.sink()
    sink.upsert("c", [{"id": "1"}])
    assert sink.node_health()[A] is False
    backoff_over(sink)
    cluster.seen.clear()
    sink.upsert("c", [{"id": "2"}])
    assert [(h, p) for h, _m, p in cluster.seen] == [
        ("a", "/health"),
        ("b", "/collections/c/documents/import"),
    ]


def test_all_nodes_down_raises_and_still_tries_each() -> None:
    cluster = Cluster(a=refused, b=refused, c=timed_out)
    sink = cluster.sink()
    with pytest.raises(TargetTimeout):
        sink.upsert("c", [{"id": "1"}])
    assert not sink.up
    assert sink.node_health() == {A: False, B: False, C: False}
    # Every node is backing off: the next call tries them all anyway, soonest first.
    cluster.behave["b"] = ok
    assert sink.upsert("c", [{"id": "1"}])[0].ok
    assert sink.up and sink.node_health()[B]


def test_uncertain_writes_are_counted_only_when_the_request_may_have_arrived() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("illegal status line: HTTP/1.1 0", request=request)

    expected = {
        refused: 0,  # never sent: certainly not applied
        timed_out: 1,  # unknown outcome
        broken: 1,  # a follower may have forwarded it before the connection broke
    }
    for failure, count in expected.items():
        sink = Cluster(a=on_import(failure)).sink()
        assert sink.upsert("c", [{"id": "1"}])[0].ok  # b took it
        assert sink.uncertain_writes == count, failure.__name__
    sink = Cluster(a=timed_out, b=timed_out, c=timed_out).sink()
    with pytest.raises(TargetTimeout):
        sink.get_document("c", "1")
    assert sink.uncertain_writes == 0  # reads never count


def test_auth_errors_do_not_fail_over() -> None:
    cluster = Cluster(a=lambda r: httpx.Response(401, json={"message": "Forbidden"}))
    sink = cluster.sink()
    with pytest.raises(AuthError):
        sink.get_document("c", "1")
    assert cluster.hosts() == ["a"]


def test_health_names_every_failing_node() -> None:
    cluster = Cluster(
        b=lambda r: httpx.Response(503, json={"ok": False}),
        c=refused,
    )
    sink = cluster.sink()
    problems = sink.health()
    assert len(problems) == 2
    assert problems[0].startswith(f"typesense node {B}:")
    assert problems[1].startswith(f"typesense node {C}: unreachable")


def test_probe_idle_nodes_learns_standby_health_and_recovery() -> None:
    cluster = Cluster(c=refused)
    sink = cluster.sink()
    sink.get_document("c", "1")
    assert sink.node_health() == {A: True, B: True, C: True}  # c never asked yet
    sink.probe_idle_nodes(max_age=0)
    assert sink.node_health() == {A: True, B: True, C: False}
    cluster.behave["c"] = ok
    sink.probe_idle_nodes(max_age=3600)  # c is still backing off: not probed yet
    assert not sink.node_health()[C]
    backoff_over(sink)
    sink.probe_idle_nodes(max_age=3600)  # a standby node: its probe is enough
    assert sink.node_health()[C]


def test_a_refused_preferred_node_recovers_through_its_probe() -> None:
    cluster = Cluster(a=refused)
    sink = cluster.sink()
    sink.get_document("c", "1")
    cluster.behave["a"] = ok
    backoff_over(sink)
    sink.probe_idle_nodes()  # nothing is written meanwhile: the probe is the only sign
    assert sink.node_health()[A]


def test_a_preferred_node_whose_writes_hung_recovers_only_through_a_write() -> None:
    cluster = Cluster(a=on_import(timed_out))  # /health fine, writes hang
    sink = cluster.sink()
    sink.upsert("c", [{"id": "1"}])
    backoff_over(sink)
    sink.probe_idle_nodes()
    assert not sink.node_health()[A]  # still backing off; failures keep growing
    failures = sink.pool.nodes[0].failures
    backoff_over(sink)
    sink.upsert("c", [{"id": "1"}])
    assert sink.pool.nodes[0].failures == failures + 1


def test_export_fails_over_before_the_first_document_only() -> None:
    cluster = Cluster(a=refused)
    sink = cluster.sink()
    cluster.behave["b"] = lambda r: httpx.Response(200, text='{"id":"1"}\n{"id":"2"}\n')
    assert [d["id"] for d in sink.export("c")] == ["1", "2"]

    class Broken(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield b'{"id":"1"}\n'
            raise httpx.ReadError("connection reset")

    cluster2 = Cluster(a=lambda r: httpx.Response(200, stream=Broken()))
    sink2 = cluster2.sink()
    seen = []
    with pytest.raises(TargetUnavailable):
        for document in sink2.export("c"):
            seen.append(document["id"])
    assert seen == ["1"]  # no second copy from another node


def test_create_collection_that_exists_is_reported_not_raised() -> None:
    exists = {"message": "A collection with name `c` already exists."}
    cluster = Cluster(a=lambda r: httpx.Response(409, json=exists))
    assert cluster.sink().create_collection({"name": "c", "fields": []}) is False


# -- the Syncer: an uncertain write re-sends its keys later, even when failover succeeded --------


class _NoCollections(CollectionManager):
    def ensure(self, mappings):  # type: ignore[no-untyped-def]
        return {table: Target(m.collection) for table, m in mappings.items()}


def test_failover_after_a_timeout_acks_the_batch_and_resends_its_keys_later(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.db"
    app = sqlite3.connect(path)
    app.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    app.commit()
    db = Database(path)
    names = LogTables("change_log")
    info = db.table_info("items")
    install(db, names, [info])
    app.executemany("INSERT INTO items VALUES (?, ?)", [(1, "one"), (2, "two")])
    app.commit()
    app.close()
    cluster = Cluster(a=on_import(timed_out))
    sink = cluster.sink()
    mapping = mapping_from_config(info, TableConfig(table="items", id_prefix="h1:"))
    changelog = ChangeLog(db, names, max_attempts=3)
    collections = _NoCollections(sink, db, names, 100, keys={})
    syncer = Syncer(db, changelog, sink, {"items": mapping}, 100, collections)
    syncer.resend_delay = 60.0
    report = syncer.sync_once()
    assert report.upserted == {"items": 2}
    host, body = cluster.bodies[-1]
    assert host == "b"
    sent = [json.loads(line) for line in body.split("\n")]
    assert [d["id"] for d in sent] == ["h1:1", "h1:2"]
    pending = db.query("SELECT pk, op, next_attempt_at FROM change_log ORDER BY seq")
    assert [(pk, op) for pk, op, _due in pending] == [(1, "T"), (2, "T")]
    assert all(due > time.time() + 50 for _pk, _op, due in pending)
    db.close()


def test_a_write_is_never_addressed_to_a_name_the_node_asked_does_not_know() -> None:
    """A follower that has not applied a new alias yet answers 404 for it: the write waits
    (CollectionMissing, retried) instead of going to the alias name, which a node catching up
    by replaying its log would lose (Typesense 0.24.1)."""

    def lagging(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.startswith("/collections/"):
            return httpx.Response(404, json={"message": "Not Found"})
        return ok(request)

    cluster = Cluster(a=lagging, b=lagging, c=lagging)
    with pytest.raises(CollectionMissing):
        cluster.sink().upsert("c", [{"id": "1"}])
    assert cluster.hosts("/import") == []


def test_an_import_request_and_its_body_are_freed_without_the_cyclic_gc() -> None:
    """httpx's response and its stream refer to each other; the daemon runs the cyclic GC
    rarely, and every import's body (up to megabytes) was kept until it did."""
    requests: list[weakref.ref[httpx.Request]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/import"):
            requests.append(weakref.ref(request))
        return ok(request)

    sink = Cluster(a=handler).sink([A])
    gc.disable()
    try:
        assert all(r.ok for r in sink.upsert("c", ['{"id":"1"}', '{"id":"2"}']))
        assert len(requests) == 1 and requests[0]() is None
    finally:
        gc.enable()


def test_an_import_sends_the_body_built_with_its_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """EncodedLines carry their import body, built while the batch was read (ahead): the send
    does not build it again between two imports."""
    lines = EncodedLines(['{"id":"1","t":"caf\u00e9"}', '{"id":"2"}'])
    assert lines.body == b'{"id":"1","t":"caf\\u00e9"}\n{"id":"2"}'

    def no_second_build(_lines: object) -> bytes:
        raise AssertionError("the body was built again at send time")

    monkeypatch.setattr("cdc_daemon.typesense.documents.ascii_json_body", no_second_build)
    cluster = Cluster()
    results = cluster.sink().upsert("c", lines)
    assert [r.ok for r in results] == [True, True]
    assert cluster.bodies == [("a", lines.body.decode())]
