"""Values and names Typesense can't take, end to end (real Typesense, the app writing through
stdlib sqlite3 in its own process, the CLI as a subprocess): field names it can't hold are
refused before anything runs, JSON columns become searchable object fields, and a document too
large for one import fails for its row alone."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from support import (
    Env,
    app_exec,
    app_write,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.config import TableConfig
from cdc_daemon.database import Database
from cdc_daemon.document_sql import document_sql, fetch_documents
from cdc_daemon.documents import MAX_DOCUMENT_BYTES
from cdc_daemon.wiring import mapping_from_config


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def dead_letters(env: Env) -> list[dict[str, Any]]:
    result = env.cli("dead-letters", "list", "--json", check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def search(env: Env, table: str, **params: str) -> set[str]:
    response = env.http.get(f"/collections/{env.collection(table)}/documents/search",
                            params={"q": "*", "per_page": "250", **params})
    assert response.status_code == 200, response.text
    return {hit["document"]["id"] for hit in response.json()["hits"]}


# -- field names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "why"),
    [
        # Before: the collection got a catch-all `.*` field and Typesense rejected every
        # document ("duplicate field names") while `run --once` exited 0.
        (".*", "pattern for dynamic fields"),
        # v0.25+ leaves it out of the schema it reports: a rebuild on every start.
        ("parent_sequence_id", "_sequence_id"),
        # 0.24.1 answers the whole import 400 "Bad request.".
        (".flat", "for itself"),
    ],
)
def test_a_column_typesense_cant_hold_is_refused_by_check_and_run(
    env: Env, column: str, why: str
) -> None:
    quoted = '"' + column.replace('"', '""') + '"'
    app_exec(env.db, "PRAGMA journal_mode=WAL",
             f"CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, {quoted} TEXT)",
             f"INSERT INTO items (id, name, {quoted}) VALUES (1, 'one', 'x'), (2, 'two', 'y')")
    env.write_config([{"table": "items"}])
    expected = (f"cdc-daemon: error: tables[0].table: column {column!r} of 'items' cannot be a"
                " Typesense field name (")
    for command in (("check",), ("install",), ("run", "--once")):
        result = env.cli(*command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        line = one_error_line(result.stderr)
        assert line.startswith(expected) and why in line, line
        assert line.endswith("exclude it or rename it (tables[0].rename)"), line

    # Excluded, or renamed, the column is fine; a rename to such a name is refused in turn.
    env.write_config([{"table": "items", "rename": {"name": column}, "exclude": [column]}])
    line = one_error_line(env.cli("check").stderr)
    assert line.startswith(f"cdc-daemon: error: tables[0].rename.name: {column!r} cannot"), line
    env.write_config([{"table": "items", "exclude": [column]}])
    env.cli("install", check=True)
    app_exec(env.db, f"UPDATE items SET {quoted} = 'z'")  # logs both rows
    env.cli("run", "--once", check=True)
    assert env.documents("items") == {"1": {"id": "1", "name": "one"},
                                      "2": {"id": "2", "name": "two"}}
    env.write_config([{"table": "items", "rename": {column: "renamed"}}])
    check = env.cli("check")  # the config is valid; the collection differs now (exit 1 is fine)
    assert check.returncode in (0, 1) and "cannot be a Typesense field name" not in check.stderr


# -- object fields --------------------------------------------------------------------------------

DOCS_DDL = ("CREATE TABLE docs (id INTEGER PRIMARY KEY, title TEXT NOT NULL, meta TEXT,"
            " tags TEXT)")
OBJECT_FIELDS = {"meta": {"type": "object"}, "tags": {"type": "object[]"}}


def test_json_columns_become_object_fields_searchable_and_filterable(env: Env) -> None:
    app_exec(env.db, "PRAGMA journal_mode=WAL", DOCS_DDL)
    # First without the JSON columns: a collection without nested fields, which Typesense
    # can't PATCH an object field into.
    env.write_config([{"table": "docs", "exclude": ["meta", "tags"]}])
    env.cli("install", check=True)
    app_write(env.db, [[
        ("INSERT INTO docs VALUES (?, ?, ?, ?)",
         [1, "one", json.dumps({"color": "red", "size": 3, "dims": {"w": 2}}),
          json.dumps([{"k": "a"}, {"k": "b"}])]),
        ("INSERT INTO docs VALUES (?, ?, ?, ?)",
         [2, "two", json.dumps({"color": "blue", "size": 1, "dims": {"w": 5}}), "[]"]),
        ("INSERT INTO docs VALUES (?, ?, ?, ?)", [3, "three", None, None]),
    ]])
    env.cli("run", "--once", check=True)
    alias = env.collection("docs")
    assert env.http.get(f"/collections/{alias}").json()["enable_nested_fields"] is False

    env.write_config([{"table": "docs", "fields": OBJECT_FIELDS}])
    env.cli("run", "--once", check=True)  # rebuilds with nested fields, backfills, swaps
    collection = env.http.get(f"/collections/{alias}").json()
    assert collection["name"] == f"{alias}__v2" and collection["enable_nested_fields"] is True
    docs = env.documents("docs")
    assert docs["1"]["meta"] == {"color": "red", "size": 3, "dims": {"w": 2}}
    assert docs["1"]["tags"] == [{"k": "a"}, {"k": "b"}]
    assert docs["3"] == {"id": "3", "title": "three"}
    assert search(env, "docs", q="red", query_by="meta.color") == {"1"}
    assert search(env, "docs", filter_by="meta.size:>2") == {"1"}
    assert search(env, "docs", filter_by="meta.dims.w:=5") == {"2"}
    assert search(env, "docs", filter_by="tags.k:=b") == {"1"}

    # Typesense now lists the nested fields it found (meta.color, ...) in the schema: that is
    # no difference, so a restart neither rebuilds nor complains.
    nested = {f["name"] for f in collection["fields"]} - {"title", "meta", "tags"}
    assert {"meta.color", "meta.size", "meta.dims.w", "tags.k"} <= nested
    check = env.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    app_exec(env.db, "UPDATE docs SET meta = json_set(meta, '$.color', 'green') WHERE id = 1")
    env.cli("run", "--once", check=True)
    assert env.http.get(f"/aliases/{alias}").json()["collection_name"] == f"{alias}__v2"
    assert search(env, "docs", filter_by="meta.color:=green") == {"1"}
    assert env.verify()["in_sync"] is True


def test_a_value_that_is_not_a_json_object_is_dead_lettered_for_its_row(env: Env) -> None:
    app_exec(env.db, "PRAGMA journal_mode=WAL", DOCS_DDL)
    env.write_config([{"table": "docs", "fields": OBJECT_FIELDS}])
    env.cli("install", check=True)
    app_write(env.db, [[
        ("INSERT INTO docs VALUES (?, ?, ?, ?)", [1, "good", '{"color": "red"}', None]),
        ("INSERT INTO docs VALUES (?, ?, ?, ?)", [2, "array", "[1, 2]", None]),
        ("INSERT INTO docs VALUES (?, ?, ?, ?)", [3, "broken", '{"color": ', None]),
        ("INSERT INTO docs VALUES (?, ?, ?, ?)", [4, "good too", None, '[{"k": "x"}]']),
    ]])
    daemon = start_daemon_logged(env)
    try:
        wait_for(lambda: env.status()["dead_letters"] == 2 or daemon.poll() is not None,
                 timeout=60, interval=0.3, message="the two bad rows dead-lettered")
        assert daemon.poll() is None, read_daemon_log(env)
    finally:
        assert stop_process(daemon) == 0, read_daemon_log(env)
    assert set(env.documents("docs")) == {"1", "4"}
    errors = {str(letter["key"]): letter["error"] for letter in dead_letters(env)}
    assert set(errors) == {"2", "3"}, errors
    assert errors["2"] == "column 'meta': JSON list is not an object", errors
    assert errors["3"].startswith("column 'meta': not valid JSON for object ("), errors


# -- a document larger than one import carries ----------------------------------------------------

PAGES_DDL = "CREATE TABLE pages (id INTEGER PRIMARY KEY, body TEXT, extra)"


def test_a_document_over_the_size_limit_fails_for_its_row_alone(env: Env) -> None:
    app_exec(env.db, "PRAGMA journal_mode=WAL", PAGES_DDL)
    env.write_config([{"table": "pages"}])  # max_attempts: 3
    env.cli("install", check=True)
    over = MAX_DOCUMENT_BYTES + 1  # the text alone: the document is larger still
    insert = "INSERT INTO pages VALUES (?, ?, ?)"
    app_write(env.db, [[
        *[(insert, [i, f"page {i} fine", None]) for i in range(1, 21)],
        # SQLite builds this one's document (plain text: the fast path) ...
        ("INSERT INTO pages VALUES (100, printf('%.*c', ?, 'x'), NULL)", [over]),
        # ... and Python this one's (an integer in the untyped, string field needs converting).
        ("INSERT INTO pages VALUES (101, printf('%.*c', ?, 'y'), 7)", [over]),
        *[(insert, [i, f"page {i} fine", None]) for i in range(21, 41)],
    ]])
    assert_paths(env, fast=100, python=101)

    daemon = start_daemon_logged(env)
    try:
        wait_for(lambda: env.status()["dead_letters"] == 2 or daemon.poll() is not None,
                 timeout=90, interval=0.3, message="the two large rows dead-lettered")
        assert daemon.poll() is None, read_daemon_log(env)
        # Every other row was searchable meanwhile, and later changes keep flowing.
        assert search(env, "pages", q="fine", query_by="body") == {str(i) for i in range(1, 41)}
        app_exec(env.db, "UPDATE pages SET body = 'changed later' WHERE id = 7")
        wait_for(lambda: search(env, "pages", q="later", query_by="body") == {"7"},
                 message="a later change synced")
    finally:
        assert stop_process(daemon) == 0, read_daemon_log(env)

    letters = {str(letter["key"]): letter for letter in dead_letters(env)}
    assert set(letters) == {"100", "101"}
    for letter in letters.values():
        assert letter["attempts"] == 3, letter
        assert f"more than the {MAX_DOCUMENT_BYTES} bytes (16 MiB)" in letter["error"], letter
        assert letter["error"].startswith("the document is 167772"), letter  # its size
    assert "100" not in env.documents("pages") and "101" not in env.documents("pages")
    # Nothing piled up in Typesense: it never received the large documents.
    result = env.cli("verify", "--json", timeout=120)  # finishes (the rows are just missing)
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["in_sync"] is False, result.stdout
    assert report["tables"]["pages"]["missing"] == 2, result.stdout


def assert_paths(env: Env, fast: int, python: int) -> None:
    """`fast` gets its document from SQLite (a line), `python` from documents.py (None)."""
    db = Database(env.db)
    try:
        config = yaml.safe_load(env.config_path.read_text())["tables"][0]
        mapping = mapping_from_config(db.table_info("pages"), TableConfig(**config))
        sql = document_sql(mapping)
        assert sql is not None
        with db.read() as conn:
            built = fetch_documents(conn, mapping, sql, [(fast,), (python,)], chunk=10)
    finally:
        db.close()
    assert built is not None and built[python] is None
    assert built[fast] is not None and len(built[fast]) > MAX_DOCUMENT_BYTES
