"""Ids that are not plain words (issue 12, item 1): every id reaches Typesense as exactly that id,
or is refused for its row alone; requests are sized by bytes.

End to end: the app (a separate stdlib-sqlite3 process) writes rows keyed `.`, `..`, `*`, ids
that hold the words of Typesense's 404 messages, hundreds of long URLs and CJK keys; the daemon
(`run --once`) syncs them and their deletes against the real Typesense. Unit: the requests the
sink sends for such ids, recorded by a transport that answers like Typesense (0.24.1, and v28+
where a `*` in `id:[...]` matches every document)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from support import Env, app_write

from cdc_daemon.errors import CollectionMissing
from cdc_daemon.sink import FILTER_BYTES, MAX_ID_BYTES
from cdc_daemon.typesense import TypesenseSink

DOTS = [".", "..", "...", "%2E", "%2E%2E", "a/..", "../x", "./", "x/y"]
STARS = ["*", "a*", "*b", "**"]
MESSAGE_WORDS = ["Collection", "Not Found", "Collection not found", "Could not find a collection"]
URLS = [f"https://example.com/{'path/' * 20}{i:05d}?q={i}" for i in range(600)]  # ~140 chars
CJK = [f"{i:04d}中文字符的文档标识符号" for i in range(500)]  # 16 characters, 40+ bytes
PLAIN = [f"p{i}" for i in range(50)]


def _run_once(env: Env, rejected: bool = False) -> None:
    """`run --once`; exit 1 when documents were rejected (issue 13: said at once)."""
    result = env.cli("run", "--once", timeout=300)
    assert result.returncode == (1 if rejected else 0), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def _keys(env: Env) -> set[str]:
    return set(env.documents("items"))


def test_odd_ids_sync_and_delete_exactly_themselves(env: Env) -> None:
    app_write(env.db, [[("CREATE TABLE items (k TEXT PRIMARY KEY, v TEXT)", [])]])
    env.write_config([{"table": "items"}], sync={"batch_size": 2000})
    env.cli("install", check=True)
    # Rows inserted and deleted before the daemon saw them: deletes of documents Typesense never
    # had (a filter deletes 0, so each is settled by id), keyed `.`, `..` and with the words of
    # a missing collection's 404.
    app_write(env.db, [[("INSERT INTO items VALUES (?, 'v')", [k]) for k in PLAIN]])
    _run_once(env)
    ghosts = [".", "..", "Collection not found", "Not Found ghost"]
    app_write(env.db, [
        [("INSERT INTO items VALUES (?, 'ghost')", [g]) for g in ghosts]
        + [("DELETE FROM items WHERE v = 'ghost'", [])]
    ])
    _run_once(env)
    assert _keys(env) == set(PLAIN)  # the collection survived `..`

    odd = DOTS + STARS + MESSAGE_WORDS
    everything = odd + URLS + CJK + PLAIN
    app_write(env.db, [[("INSERT INTO items VALUES (?, 'v')", [k]) for k in odd + URLS + CJK]])
    _run_once(env)
    assert _keys(env) == set(everything)
    # Delete the odd ones and every long key: hundreds of ids whose filter would not fit in one
    # URL; `*` deletes only itself.
    app_write(env.db, [[("DELETE FROM items WHERE k = ?", [k]) for k in odd + URLS + CJK]])
    _run_once(env)
    assert _keys(env) == set(PLAIN)
    assert env.status()["backlog"] == 0
    assert env.verify()["in_sync"] is True


def test_an_id_too_long_for_a_url_is_refused_for_its_row_alone(env: Env) -> None:
    app_write(env.db, [[("CREATE TABLE items (k TEXT PRIMARY KEY, v TEXT)", [])]])
    env.write_config([{"table": "items"}], sync={"max_attempts": 1})
    env.cli("install", check=True)
    too_long = "é" * (MAX_ID_BYTES // 2 + 1)  # 2 bytes a character
    app_write(env.db, [[("INSERT INTO items VALUES (?, 'v')", [k]) for k in [too_long, *PLAIN]]])
    _run_once(env, rejected=True)
    assert _keys(env) == set(PLAIN)
    letters = [json.loads(line) for line in env.cli(
        "dead-letters", "list", "--json", check=True).stdout.splitlines()]
    assert [(d["key"], str(MAX_ID_BYTES) in d["error"]) for d in letters] == [(too_long, True)]


# -- the requests sent (pure: a transport that answers like Typesense) -------------------------


class FakeTypesense(httpx.BaseTransport):
    """Answers deletes as Typesense does (docs/typesense-versions.md, and the server's source at
    each version's tag: src/core_api.cpp del_remove_document / del_remove_documents): by id, 404
    'Could not find a document with id: X' for a missing one, or 200 with `ignore_not_found`
    (v26+); by filter, `{"num_deleted": N}`, where since v28 a `*` matches every document."""

    def __init__(self, ids: set[str], version: int = 28) -> None:
        self.ids = set(ids)
        self.version = version
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.raw_path.decode().split("?")[0]
        if request.method == "GET" and path.startswith("/aliases"):
            return httpx.Response(404, json={"message": "Not Found"})
        if request.method == "GET" and path == "/collections/c":
            return httpx.Response(200, json={"name": "c", "fields": []})
        if path == "/debug":  # /debug's answer: "0.24.1" before v26, then "26.0", "28.0", ...
            name = f"0.{self.version}.1" if self.version < 26 else f"{self.version}.0"
            return httpx.Response(200, json={"state": 1, "version": name})
        assert request.method == "DELETE", request
        if path == "/collections/c/documents":
            return self._delete_filtered(request)
        segment = path.removeprefix("/collections/c/documents/")
        assert "/" not in segment and segment not in (".", ".."), path  # never a path trick
        doc_id = httpx.URL("http://x/" + segment).path[1:]  # percent-decoded
        if doc_id not in self.ids and request.url.params.get("ignore_not_found") == "true":
            assert self.version >= 26  # the parameter is new in v26 (0.24/0.25 ignore it)
            return httpx.Response(200, json={"id": doc_id})
        if doc_id not in self.ids:
            message = f"Could not find a document with id: {doc_id}"
            return httpx.Response(404, json={"message": message})
        self.ids.discard(doc_id)
        return httpx.Response(200, json={"id": doc_id})

    def _delete_filtered(self, request: httpx.Request) -> httpx.Response:
        filter_by = parse_qs(urlsplit(str(request.url)).query)["filter_by"][0]
        assert filter_by.startswith("id:[`") and filter_by.endswith("`]"), filter_by
        wanted = filter_by[5:-2].split("`,`")
        matched = set(self.ids) if self.version >= 28 and "*" in wanted else set(wanted) & self.ids
        self.ids -= matched
        return httpx.Response(200, json={"num_deleted": len(matched)})


def _fake_sink(transport: FakeTypesense) -> TypesenseSink:
    return TypesenseSink(["http://127.0.0.1:1"], lambda: "key", 5, transport=transport)


@pytest.mark.parametrize("version", [24, 28, 30])
def test_a_star_never_goes_into_a_filter(version: int) -> None:
    keep = {f"keep{i}" for i in range(10)}
    transport = FakeTypesense(keep | {"*", "a*", "x", "y"}, version)
    results = _fake_sink(transport).delete("c", ["*", "a*", "x", "y", "never"])
    assert all(r.ok for r in results)
    assert transport.ids == keep  # on v28+ a `*` in a filter would have taken these too
    filters = [r for r in transport.requests if r.url.path.endswith("/documents")]
    assert filters and all("*" not in str(r.url.params) for r in filters)


def test_dot_ids_go_by_encoded_path_and_gone_ones_count_as_deleted() -> None:
    transport = FakeTypesense({".", ".."})
    results = _fake_sink(transport).delete("c", [".", "..", "Collection not found"])
    assert all(r.ok for r in results) and transport.ids == set()


def test_filters_are_sized_by_bytes() -> None:
    ids = URLS + CJK
    transport = FakeTypesense(set(ids))
    assert all(r.ok for r in _fake_sink(transport).delete("c", ids))
    assert transport.ids == set()
    queries = [r.url.query for r in transport.requests if r.url.path.endswith("/documents")]
    assert len(queries) > 1 and all(len(q) <= FILTER_BYTES + 100 for q in queries)


def test_a_404_that_is_not_about_the_document_is_a_missing_collection() -> None:
    class CollectionGone(FakeTypesense):
        """The collection vanished between the alias lookup and the delete."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.method != "DELETE":
                return super().handle_request(request)
            self.requests.append(request)
            # v29+ says "Collection not found"; before, "Not Found" (docs/typesense-versions.md).
            return httpx.Response(404, json={"message": "Collection not found"})

    with pytest.raises(CollectionMissing):  # by id (a backtick: no filter) and by filter
        _fake_sink(CollectionGone(set())).delete("c", ["tick`"])
    with pytest.raises(CollectionMissing):
        _fake_sink(CollectionGone(set())).delete("c", ["a", "b"])
