"""Every Typesense answer becomes one of the project's errors (cdc_daemon/typesense/answers.py),
including a 200 whose body is not what the request expects: a TargetError with one line naming
the request, never a ValueError or KeyError that would end the daemon with a traceback. And the
export goes through the same failover loop and key refresh as every other request.

Scripted answers (httpx.MockTransport), and a real HTTP server on 127.0.0.1 for the stream."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from cdc_daemon.errors import AuthError, TargetError
from cdc_daemon.typesense import TypesenseSink

A, B = "http://a:8108", "http://b:8108"
Handler = Callable[[httpx.Request], httpx.Response]


def _sink(handler: Handler, nodes: list[str] | None = None, **kwargs: object) -> TypesenseSink:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"ok": True})
        return handler(request)

    return TypesenseSink(nodes or [A], lambda: "k", 5, transport=httpx.MockTransport(answer),
                         **kwargs)  # type: ignore[arg-type]


def _one_line_target_error(call: Callable[[], object], names: str) -> str:
    with pytest.raises(TargetError) as caught:
        call()
    assert type(caught.value) is TargetError  # not retryable, and not ValueError/KeyError
    text = str(caught.value)
    assert "\n" not in text and names in text, text
    return text


def _always(status: int, body: str) -> Handler:
    return lambda request: httpx.Response(status, text=body)


@pytest.mark.parametrize("body", ["<html>proxy error</html>", "[1, 2]", ""])
def test_a_collection_answer_that_is_not_a_json_object(body: str) -> None:
    sink = _sink(_always(200, body))
    _one_line_target_error(lambda: sink.get_collection("c"), "GET /collections/c")


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "c", "fields": [{"type": "string"}]}',
        '{"name": "c", "fields": [{"name": "title"}]}',
        '{"name": "c", "fields": [{"name": 5, "type": "string"}]}',
        '{"name": "c", "fields": [{"name": "title", "type": null}]}',
        '{"name": "c", "fields": null}',
        '{"name": "c", "fields": ["x"]}',
        '{"name": "c"}',
        '{"name": null, "fields": []}',
        '{"fields": []}',
    ],
)
def test_a_collection_answer_without_named_typed_fields(body: str) -> None:
    """The schema comparisons (schema.py) read every field's name and type, in the loop: an
    answer they would trip over is refused where it is read."""
    sink = _sink(_always(200, body))
    _one_line_target_error(lambda: sink.get_collection("c"), "GET /collections/c")


def test_a_write_never_goes_to_a_collection_named_by_an_odd_answer() -> None:
    """No alias `c` on the node asked: the collection's own answer names the write's target."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/aliases/"):
            return httpx.Response(404, json={"message": "Not Found"})
        if request.method == "GET":
            return httpx.Response(200, json={"name": 5, "fields": []})
        return httpx.Response(200, text='{"success":true}')

    sink = _sink(answer)
    _one_line_target_error(lambda: sink.upsert("c", [{"id": "1"}]), "GET /collections/c")


@pytest.mark.parametrize("body", ['{"name": "x"}', '{"collection_name": null}', "[]", "oops"])
def test_an_alias_answer_without_its_collection(body: str) -> None:
    sink = _sink(_always(200, body))
    _one_line_target_error(lambda: sink.get_alias("x"), "GET /aliases/x")


def test_an_alias_list_that_is_not_a_list() -> None:
    sink = _sink(_always(200, '{"aliases": "none"}'))
    _one_line_target_error(lambda: sink.aliases_to("c"), "GET /aliases")


def test_a_document_answer_that_is_not_json() -> None:
    sink = _sink(_always(200, "not json\nat all"))
    text = _one_line_target_error(lambda: sink.get_document("c", "1"), "GET /collections/c")
    assert "not JSON" in text


def test_a_filter_delete_whose_answer_is_not_a_count() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/aliases/"):
            return httpx.Response(200, json={"name": "c", "collection_name": "c_v1"})
        if "filter_by" in request.url.params:
            return httpx.Response(200, text="deleted some")
        return httpx.Response(200, json={"num_deleted": "many"})

    sink = _sink(answer)
    _one_line_target_error(lambda: sink.delete("c", ["a", "b"]), "DELETE /collections/c_v1")


def test_an_import_line_that_is_not_an_object_is_retried_not_raised() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/aliases/"):
            return httpx.Response(404, json={"message": "Not Found"})
        if request.method == "GET":
            return httpx.Response(200, json={"name": "c", "fields": []})
        return httpx.Response(200, text='[1]\n{"success": false, "code": "x"}')

    results = _sink(answer).upsert("c", [{"id": "1"}, {"id": "2"}])
    assert [(r.ok, r.retryable) for r in results] == [(False, True), (False, True)]


@pytest.mark.parametrize("code", ["1e999", "-1e999"])  # JSON's infinity: no int
def test_an_import_line_whose_code_is_too_big_is_retried_not_raised(code: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/aliases/"):
            return httpx.Response(200, json={"name": "c", "collection_name": "c_v1"})
        return httpx.Response(200, text=f'{{"success": false, "code": {code}}}')

    results = _sink(answer).upsert("c", [{"id": "1"}])
    assert [(r.ok, r.retryable) for r in results] == [(False, True)]


def test_an_odd_debug_answer_means_the_oldest_behaviour_for_now() -> None:
    sink = _sink(_always(200, "[]"))
    assert sink.server_version() == (0,)


def test_a_version_read_on_one_thread_is_kept_when_another_thread_could_not_read_it() -> None:
    """server_version() is called from the loop and from admin threads (verify --repair's
    deletes): a read that failed on one thread must not throw away another thread's answer."""
    debug_calls: list[int] = []
    first_waiting, release_first = threading.Event(), threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/debug":
            return httpx.Response(404, json={"message": "Not Found"})
        debug_calls.append(1)
        if len(debug_calls) == 1:  # the admin thread's: answered after the loop's, refused
            first_waiting.set()
            assert release_first.wait(timeout=5)
            return httpx.Response(503, json={"message": "Not Ready or Lagging"})
        return httpx.Response(200, json={"state": 1, "version": "26.0"})

    sink = _sink(answer)
    versions: list[tuple[int, ...]] = []
    admin = threading.Thread(target=lambda: versions.append(sink.server_version()))
    admin.start()
    assert first_waiting.wait(timeout=5)
    assert sink.server_version() == (26, 0)
    release_first.set()
    admin.join(timeout=5)
    assert versions == [(0,)]  # it could not read it: the oldest behaviour, this time
    assert sink.server_version() == (26, 0)
    assert len(debug_calls) == 2  # read once, not again


@pytest.mark.parametrize("body", [b'{"id":"1"}\nnot json\n', b'{"id":"1"}\n[2]\n',
                                  b'{"id":"1"}\n\xff\xfe\n'])
def test_an_export_line_that_is_not_a_document(body: bytes) -> None:
    sink = _sink(lambda request: httpx.Response(200, content=body))
    seen: list[str] = []

    def read() -> None:
        seen.extend(d["id"] for d in sink.export("c"))

    _one_line_target_error(read, "GET /collections/c/documents/export")
    assert seen == ["1"]


@pytest.mark.parametrize("line", [b'{"name": "x"}', b'{"id": 5}', b'{"id": null}'])
def test_an_export_document_without_a_text_id(line: bytes) -> None:
    """verify reads every exported document's id."""
    sink = _sink(lambda request: httpx.Response(200, content=b'{"id":"1"}\n' + line + b"\n"))
    seen: list[dict[str, object]] = []
    _one_line_target_error(lambda: seen.extend(sink.export("c")),
                           "GET /collections/c/documents/export")
    assert seen == [{"id": "1"}]


def test_an_export_fails_over_through_the_same_loop_as_requests() -> None:
    exports: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if request.url.path.endswith("/export"):
            exports.append(host)
            if host == "a":
                return httpx.Response(503, json={"message": "Not Ready or Lagging"})
            return httpx.Response(200, text='{"id":"1"}\n{"id":"2"}')
        return httpx.Response(200, json={"id": "1"})

    sink = _sink(answer, nodes=[A, B])
    assert [d["id"] for d in sink.export("c")] == ["1", "2"]
    assert exports == ["a", "b"]
    assert sink.node_health() == {A: False, B: True} and sink.up
    assert sink.get_document("c", "1") == {"id": "1"}  # a is backing off for requests too
    assert [d["id"] for d in sink.export("c")] == ["1", "2"]
    assert exports == ["a", "b", "b"]


def test_an_export_refused_for_a_rotated_key_is_sent_again_with_the_new_key() -> None:
    keys = ["old"]
    refused: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["X-TYPESENSE-API-KEY"] != keys[-1]:
            return httpx.Response(401, json={"message": "Forbidden"})
        return httpx.Response(200, text='{"id":"1"}\n')

    def rotate(key: str) -> None:
        refused.append(key)
        keys.append("new")

    transport = httpx.MockTransport(answer)
    current = iter(["stale", "new", "new"])
    sink = TypesenseSink([A], lambda: next(current), 5, transport=transport, on_auth_error=rotate)
    assert [d["id"] for d in sink.export("c")] == ["1"]
    assert refused == ["stale"]
    with pytest.raises(AuthError):  # refused again, no newer key: not sent a third time
        list(_sink(lambda request: httpx.Response(401, json={})).export("c"))


def test_node_health_answers_while_a_request_is_in_flight() -> None:
    """Metrics scrapes read node health on their own threads: the pool's lock is never held
    during a request (a scrape would otherwise wait for a slow import)."""
    scraped: list[dict[str, bool]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        scrape = threading.Thread(target=lambda: scraped.append(sink.node_health()))
        scrape.start()
        scrape.join(timeout=5)
        return httpx.Response(200, json={"id": "1"})

    sink = _sink(answer)
    assert sink.get_document("c", "1") == {"id": "1"}
    assert scraped == [{A: True}]


# -- a real HTTP server on 127.0.0.1: the stream read as it arrives -------------------------------


class _Node(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if self.path != "/health":
            self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def node() -> Iterator[tuple[str, type[_Node]]]:
    handler = type("Handler", (_Node,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # shutdown() waits for serve_forever's next look: 0.5 s by default
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_a_real_export_stream_with_a_line_that_is_not_json(node: tuple[str, type[_Node]]) -> None:
    url, handler = node
    handler.body = b'{"id":"1"}\n{"id":"2"}\n{"id":\n'
    sink = TypesenseSink([url], lambda: "k", 5)
    seen: list[str] = []

    def read() -> None:
        seen.extend(d["id"] for d in sink.export("c"))

    _one_line_target_error(read, "GET /collections/c/documents/export")
    assert seen == ["1", "2"]
    sink.close()
