"""Computed fields end to end: a real Typesense, the app writing from its own process, the CLI.
Below the daemon (conversion rules, the fast path, expressions `check` refuses):
tests/mapping/test_computed_fields.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support import Env, app_exec

pytestmark = pytest.mark.typesense

DDL = [
    "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
    "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author_id INTEGER,"
    " published_at TEXT NOT NULL, tags_json TEXT NOT NULL DEFAULT '[]', meta TEXT,"
    " lat REAL NOT NULL DEFAULT 0, lng REAL NOT NULL DEFAULT 0)",
]
FIELDS: dict[str, Any] = {
    "published_ts": {"type": "int64", "sort": True,
                     "sql": "CAST(strftime('%s', published_at) AS INTEGER)"},
    "author_name": {"type": "string", "optional": True,
                    "sql": "SELECT name FROM authors WHERE authors.id = books.author_id"},
    "tags": {"type": "string[]", "sql": "tags_json"},
    "location": {"type": "geopoint", "sql": "json_array(lat, lng)"},
    "kind": {"type": "string", "facet": True, "sql": "'book'"},
    "pages": {"type": "int64", "optional": True, "sql": "json_extract(meta, '$.pages')"},
}
BOOKS = {"table": "books", "include": ["title"], "fields": FIELDS}


def dead_letters(env: Env) -> list[dict[str, Any]]:
    result = env.cli("dead-letters", "list", "--json", check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def setup(env: Env, fields: dict[str, Any] = FIELDS) -> None:
    app_exec(env.db, "PRAGMA journal_mode=WAL", *DDL)
    env.write_config([{**BOOKS, "fields": fields}], sync={"max_attempts": 1})
    env.cli("install", check=True)


def test_computed_fields_sync_verify_and_fail_one_row_at_a_time(env: Env) -> None:
    setup(env)
    app_exec(
        env.db,
        "INSERT INTO authors VALUES (1, 'Ann')",
        "INSERT INTO books VALUES (1, 'One', 1, '2020-01-02', '[\"sf\", \"classic\"]',"
        " '{\"pages\": 320}', 52.5, 13.4)",
        "INSERT INTO books VALUES (2, 'Two', NULL, '2021-06-01 12:00:00', '[]', NULL,"
        " -33.9, 151.2)",
        # a value that does not fit its field, and an expression that fails on its row
        "INSERT INTO books VALUES (3, 'Bad tags', 1, '2022-01-01', '[[1]]', NULL, 0, 0)",
        "INSERT INTO books VALUES (4, 'Bad meta', 1, '2022-01-01', '[]', 'not json', 0, 0)",
    )
    result = env.cli("run", "--once")
    assert result.returncode == 1 and "documents rejected" in result.stderr, result.stderr
    docs = env.documents("books")
    assert docs == {
        "1": {"id": "1", "title": "One", "published_ts": 1577923200, "author_name": "Ann",
              "tags": ["sf", "classic"], "location": [52.5, 13.4], "kind": "book", "pages": 320},
        "2": {"id": "2", "title": "Two", "published_ts": 1622548800, "tags": [],
              "location": [-33.9, 151.2], "kind": "book"},
    }
    letters = {letter["key"]: letter["error"] for letter in dead_letters(env)}
    assert set(letters) == {3, 4}, letters
    assert letters[3].startswith("field 'tags': ") and "is not a string" in letters[3]
    assert letters[4].startswith("field 'pages': its sql failed on this row: malformed JSON")

    # Range filters and sorting on the timestamp: what it is for.
    found = env.http.get(f"/collections/{env.collection('books')}/documents/search", params={
        "q": "*", "filter_by": "published_ts:>1600000000", "sort_by": "published_ts:desc"})
    assert [h["document"]["id"] for h in found.json()["hits"]] == ["2"]

    app_exec(env.db, "UPDATE books SET tags_json = '[\"x\", 7]' WHERE id = 3",
             "UPDATE books SET meta = '{}' WHERE id = 4",
             "UPDATE authors SET name = 'Ann B.' WHERE id = 1",
             "UPDATE books SET title = 'One!' WHERE id = 1")
    env.cli("run", "--once", check=True)
    docs = env.documents("books")
    assert docs["3"]["tags"] == ["x", "7"] and "pages" not in docs["4"]
    assert docs["1"]["author_name"] == "Ann B."  # read again with its row's change
    assert env.verify()["in_sync"] is True

    # verify compares the computed fields too, and --repair puts them back.
    path = f"/collections/{env.collection('books')}/documents/2"
    env.http.patch(path, json={"kind": "edited"}).raise_for_status()
    code, report = env.verify_report()
    assert code == 1 and report["tables"]["books"]["stale"] == 1, report
    env.cli("verify", "--repair", check=True)
    assert env.documents("books")["2"]["kind"] == "book"
    assert env.verify()["in_sync"] is True


def test_an_expression_failing_on_a_row_is_verifys_difference_not_a_crash(env: Env) -> None:
    setup(env)
    app_exec(env.db, "INSERT INTO books VALUES (1, 'One', NULL, '2020-01-02', '[]', '{}', 0, 0)")
    env.cli("run", "--once", check=True)
    app_exec(env.db, "UPDATE books SET meta = 'not json' WHERE id = 1")
    assert env.cli("run", "--once").returncode == 1  # dead-lettered
    code, report = env.verify_report()
    assert code == 1, report
    reason = report["tables"]["books"]["reasons"]["1"]
    assert "field 'pages': its sql failed on this row: malformed JSON" in reason, report


def three_books_synced(env: Env) -> None:
    setup(env)
    app_exec(env.db, *(
        f"INSERT INTO books (id, title, published_at) VALUES ({i}, 't{i}', '2020-01-0{i}')"
        for i in range(1, 4)))
    env.cli("run", "--once", check=True)


def test_edited_and_added_expressions_reach_every_document(env: Env) -> None:
    three_books_synced(env)
    # An edited expression (same type) re-sends every document; a new optional one is added.
    edited = {**FIELDS, "kind": {**FIELDS["kind"], "sql": "'novel'"},
              "shout": {"type": "string", "optional": True, "sql": "upper(title)"}}
    env.write_config([{**BOOKS, "fields": edited}], sync={"max_attempts": 1})
    env.cli("run", "--once", check=True)
    docs = env.documents("books")
    assert {d["kind"] for d in docs.values()} == {"novel"}
    assert {d["shout"] for d in docs.values()} == {"T1", "T2", "T3"}
    assert env.verify()["in_sync"] is True


def test_a_computed_fields_new_type_rebuilds_the_collection_behind_its_alias(env: Env) -> None:
    three_books_synced(env)
    before = env.http.get(f"/aliases/{env.collection('books')}").json()["collection_name"]
    retyped = {**FIELDS, "published_ts": {"type": "string", "sql": "published_at"}}
    env.write_config([{**BOOKS, "fields": retyped}], sync={"max_attempts": 1})
    env.cli("run", "--once", check=True)
    after = env.http.get(f"/aliases/{env.collection('books')}").json()["collection_name"]
    assert after != before  # a new collection behind the alias, the old one dropped
    assert env.http.get(f"/collections/{before}").status_code == 404
    schema = env.http.get(f"/collections/{after}").json()
    assert {f["name"]: f["type"] for f in schema["fields"]}["published_ts"] == "string"
    assert {d["published_ts"] for d in env.documents("books").values()} == {
        "2020-01-01", "2020-01-02", "2020-01-03"}
    assert env.verify()["in_sync"] is True


def test_check_and_every_command_refuse_a_bad_expression(env: Env) -> None:
    bad = {**FIELDS, "kind": {"type": "string", "sql": "upperr(title)"}}
    setup(env)
    env.write_config([{**BOOKS, "fields": bad}])
    for command in (["check"], ["run", "--once"], ["verify"]):
        result = env.cli(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert ("tables[0].fields.kind.sql: 'upperr(title)' is not a usable expression for"
                " 'books': no such function: upperr") in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
