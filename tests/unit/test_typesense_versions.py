"""The sink against answers of Typesense versions that can't run here (only 0.24.1 does).

Every answer below is recorded from the server's source at that version's tag in
github.com/typesense/typesense (file and function named at each), or from its docs; the same
requests run for real against 0.24.1 in tests/sink. Each test names what would go wrong.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from cdc_daemon.errors import TargetUnavailable
from cdc_daemon.typesense import TypesenseSink

Handler = Callable[[httpx.Request], httpx.Response]


def _sink(
    handler: Handler, version: str = "0.24.1", fields: list[dict[str, object]] | None = None
) -> tuple[TypesenseSink, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if path == "/debug":  # src/core_api.cpp get_debug: {"state": 1, "version": ...}
            return httpx.Response(200, json={"state": 1, "version": version})
        if path.startswith("/aliases/"):
            return httpx.Response(404, json={"message": "Not Found"})
        if request.method == "GET" and path == "/collections/c":
            return httpx.Response(200, json={"name": "c", "fields": fields or []})
        return handler(request)

    transport = httpx.MockTransport(answer)
    return TypesenseSink(["http://127.0.0.1:1"], lambda: "k", 5, transport=transport), seen


@pytest.mark.parametrize(("text", "parsed"), [
    ("0.24.1", (0, 24, 1)), ("0.25.2", (0, 25, 2)), ("26.0", (26, 0)), ("29.0", (29, 0)),
    ("30.0.rc12", (30, 0)), ("nightly", (0,)),
])
def test_the_version_is_read_from_debug(text: str, parsed: tuple[int, ...]) -> None:
    sink, _ = _sink(lambda r: httpx.Response(500), version=text)
    assert sink.server_version() == parsed


def test_a_key_without_debug_list_means_the_oldest_behaviour_and_no_key_refresh() -> None:
    refused: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        # A scoped key (documents:* only) on /debug: 401 (route_path::_get_action "debug:list").
        return httpx.Response(401, json={"message": "Forbidden - a valid `x-typesense-api-key`"
                                                    " header must be sent."})

    transport = httpx.MockTransport(answer)
    sink = TypesenseSink(["http://127.0.0.1:1"], lambda: "k", 5, transport=transport,
                         on_auth_error=refused.append)
    assert sink.server_version() == (0,)
    assert refused == []  # a KMS-backed key is not thrown away for this


@pytest.mark.parametrize("message", [
    # src/core_api.cpp post_import_documents / HttpServer resource check, 0.24.1 .. v30: the
    # whole request, never a line.
    "Rejecting write: running out of resource type: OUT_OF_DISK",
    "Rejecting write: running out of resource type: OUT_OF_MEMORY",
])
def test_out_of_disk_is_waited_out_not_blamed_on_documents(message: str) -> None:
    sink, _ = _sink(lambda r: httpx.Response(422, json={"message": message}))
    with pytest.raises(TargetUnavailable):  # retried with backoff; never dead-letters a row
        sink.upsert("c", ['{"id":"1"}'])


def test_a_patch_during_another_alter_is_retried_not_rebuilt() -> None:
    # v26+ (src/core_api.cpp patch_update_collection): 422 while another alter runs. Taken as a
    # refusal, it would start a full rebuild of the collection.
    sink, _ = _sink(lambda r: httpx.Response(
        422, json={"message": "Another collection update operation is in progress."}))
    with pytest.raises(TargetUnavailable):
        sink.add_fields("c", [{"name": "n", "type": "string", "optional": True}])


def test_a_patch_refused_because_it_was_applied_already_counts_as_done() -> None:
    fields = [{"name": "n", "type": "string", "optional": True}]

    def answer(request: httpx.Request) -> httpx.Response:
        # a retried PATCH whose first try had been applied
        return httpx.Response(400, json={"message": "Field `n` is already part of the schema:"
                                                    " To change this field, drop it first"})

    sink, _ = _sink(answer, fields=fields)
    assert sink.add_fields("c", fields) is None
    sink, _ = _sink(answer, fields=[])  # refused, and not there: a real refusal
    assert sink.add_fields("c", fields) is not None


def test_health_with_a_resource_error_is_not_fit_for_writes() -> None:
    # v26+ src/core_api.cpp get_health: 200 {"ok": true, "resource_error": "OUT_OF_DISK"}.
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ok": True, "resource_error": "OUT_OF_DISK"})

    transport = httpx.MockTransport(answer)
    sink = TypesenseSink(["http://127.0.0.1:1"], lambda: "k", 5, transport=transport)
    assert any("OUT_OF_DISK" in problem for problem in sink.health())


@pytest.mark.parametrize(("version", "param"), [("0.24.1", None), ("0.25.2", None),
                                                 ("26.0", "true"), ("30.0", "true")])
def test_delete_by_id_uses_ignore_not_found_where_it_exists(version: str, param: str | None,
                                                            ) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        # v26+: ignore_not_found=true answers 200 {"id": ...} for a missing document.
        if request.url.params.get("ignore_not_found") == "true":
            return httpx.Response(200, json={"id": "tick`"})
        return httpx.Response(404, json={"message": "Could not find a document with id: tick`"})

    sink, seen = _sink(answer, version)
    assert sink.delete("c", ["tick`"])[0].ok
    deletes = [r for r in seen if r.method == "DELETE"]
    assert [r.url.params.get("ignore_not_found") for r in deletes] == [param]


def test_a_filter_the_server_refuses_is_settled_id_by_id() -> None:
    # v26-v28: a `[` or `]` inside a backticked id fails the filter with 400 ("Could not parse
    # the filter query"); such ids never go into a filter, and any 400 is settled one by one.
    def answer(request: httpx.Request) -> httpx.Response:
        if "filter_by" in request.url.params:
            return httpx.Response(400, json={"message": "Could not parse the filter query."})
        return httpx.Response(200, json={"id": httpx.URL(str(request.url)).path.split("/")[-1]})

    sink, seen = _sink(answer, "28.0")
    ids = ["a[1]", "b]", "plain1", "plain2"]
    assert all(r.ok for r in sink.delete("c", ids))
    filters = [r.url.params["filter_by"] for r in seen if "filter_by" in r.url.params]
    assert filters == ["id:[`plain1`,`plain2`]"]  # no bracketed id in a filter
    by_id = [r.url.path.split("/")[-1] for r in seen if r.method == "DELETE"
             and "filter_by" not in r.url.params]
    assert sorted(by_id) == sorted(ids)


@pytest.mark.parametrize("doc_id", ["search", "export", "import", ".", "..", "+1", "a b"])
def test_ids_never_match_a_route_or_a_dot_segment(doc_id: str) -> None:
    # src/http_server.cpp catch_all_handler / HttpServer::find_route: routes are matched on the
    # raw path, ids are url-decoded after (`+` becomes a space); GET .../documents/search is the
    # search route. httpx removes literal `.` and `..` segments.
    def answer(request: httpx.Request) -> httpx.Response:
        raw = request.url.raw_path.decode().split("?")[0]
        segment = raw.rsplit("/", 1)[-1]
        assert raw.startswith("/collections/c/documents/") and segment.startswith("%"), raw
        decoded = httpx.URL("http://x/" + segment).path[1:]
        return httpx.Response(200, json={"id": decoded})

    sink, _ = _sink(answer)
    assert sink.get_document("c", doc_id) == {"id": doc_id}


def test_an_error_body_that_is_not_json_is_still_read() -> None:
    # 0.24.1 (tested) .. v30: the message quotes the id unescaped: invalid JSON for `a\`.
    body = b'{"message": "Could not find a document with id: a\\"}'

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, content=body)

    sink, _ = _sink(answer)
    assert sink.delete("c", ["a\\"])[0].ok


def test_an_import_larger_than_one_request_is_split_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bodies: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        lines = request.content.split(b"\n")
        # the third document is rejected, wherever it lands
        return httpx.Response(200, text="\n".join(
            '{"code":400,"error":"bad","success":false}' if b'"id":"3"' in line
            else '{"success":true}' for line in lines))

    monkeypatch.setattr("cdc_daemon.typesense.documents.IMPORT_BYTES", 60)
    sink, _ = _sink(answer)
    documents = [f'{{"id":"{i}","t":"{"x" * 10}"}}' for i in range(6)]  # 25 bytes each
    results = sink.upsert("c", documents)
    assert [r.ok for r in results] == [True, True, True, False, True, True]
    assert len(bodies) == 3 and all(len(b) <= 60 for b in bodies)  # two documents each
