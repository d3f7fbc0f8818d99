"""Several `tables` entries in one collection: what the config accepts and refuses, and the
union schema `cdc-daemon schema` shows (no server reached: the CLI in the test's process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import Env, app_exec

UNREACHABLE = "http://127.0.0.1:9"  # `schema` reaches no server
DDL = (
    "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, pages INTEGER NOT NULL,"
    " year INTEGER NOT NULL)",
    "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL, title TEXT,"
    " year INTEGER NOT NULL)",
)


@pytest.fixture
def offline(tmp_path: Path) -> Env:
    env = Env(tmp_path, UNREACHABLE, "shared", in_process=True)
    app_exec(env.db, *DDL)
    return env


def _tables(books: dict[str, Any] | None = None,
            authors: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [
        {"table": "books", "collection": "search", "id_prefix": "b:", **(books or {})},
        {"table": "authors", "collection": "search", "id_prefix": "a:", **(authors or {})},
    ]


def _refusal(env: Env, tables: list[dict[str, Any]]) -> str:
    """The one line `schema` refuses this config with (exit 2, no traceback)."""
    env.write_config(tables)
    result = env.cli("schema")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.strip()


def test_union_schema_fields_missing_somewhere_are_optional(offline: Env) -> None:
    offline.write_config(_tables())
    result = offline.cli("schema", check=True)
    plan = json.loads(result.stdout)
    assert set(plan) == {"books", "authors"}
    assert plan["books"]["alias"] == plan["authors"]["alias"] == "search"
    assert plan["books"]["schema"] == plan["authors"]["schema"]  # one collection, one schema
    fields = {f["name"]: f for f in plan["books"]["schema"]["fields"]}
    assert set(fields) == {"title", "pages", "year", "name"}
    assert not fields["year"].get("optional")  # required in both
    assert fields["pages"]["optional"] is True  # books only
    assert fields["name"]["optional"] is True  # authors only
    assert fields["title"]["optional"] is True  # NOT NULL in books, nullable in authors
    assert plan["books"]["schema"]["name"] == "search__v1"


def test_shared_collection_needs_a_prefix_on_every_entry(offline: Env) -> None:
    tables = _tables()
    del tables[1]["id_prefix"]
    line = _refusal(offline, tables)
    assert "tables[1].collection: collection 'search' is used by two tables" in line
    assert "each need their own id_prefix" in line


def test_prefix_that_starts_another_is_refused(offline: Env) -> None:
    line = _refusal(offline, _tables(books={"id_prefix": "a:b:"}))
    assert line.endswith(
        "tables[1].id_prefix: 'a:' and tables[0]'s 'a:b:' in shared collection 'search': no"
        " prefix may start another (an id would be both tables'); choose e.g. 'b:' and 'a:'"
    ), line


def test_same_prefix_twice_is_refused(offline: Env) -> None:
    line = _refusal(offline, _tables(books={"id_prefix": "a:"}))
    assert "tables[1].id_prefix: 'a:' and tables[0]'s 'a:'" in line


def test_managing_and_following_entries_are_not_mixed(offline: Env) -> None:
    line = _refusal(offline, _tables(authors={"manage_collection": False}))
    assert "tables[1].manage_collection: differs from tables[0]'s" in line


def test_conflicting_types_name_both_entries(offline: Env) -> None:
    line = _refusal(offline, _tables(authors={"fields": {"title": {"type": "int64"}}}))
    assert line.endswith(
        "tables[1].fields.title: type int64 differs from tables[0]'s string in shared"
        " collection 'search'"
    ), line


def test_conflicting_facet_is_refused(offline: Env) -> None:
    line = _refusal(offline, _tables(books={"fields": {"year": {"facet": True}}}))
    assert line.endswith(
        "tables[1].fields.year: facet False differs from tables[0]'s True in shared"
        " collection 'search'"
    ), line


def test_default_sorting_field_must_be_named_by_every_member(offline: Env) -> None:
    line = _refusal(offline, _tables(books={"default_sorting_field": "year"}))
    assert "tables[1].default_sorting_field: none differs from tables[0]'s 'year'" in line
    line = _refusal(offline, _tables(books={"default_sorting_field": "pages"},
                                     authors={"default_sorting_field": "year"}))
    assert "tables[1].default_sorting_field: 'year' differs from tables[0]'s 'pages'" in line


def test_default_sorting_field_named_by_every_member(offline: Env) -> None:
    offline.write_config(_tables(books={"default_sorting_field": "year"},
                                 authors={"default_sorting_field": "year"}))
    plan = json.loads(offline.cli("schema", check=True).stdout)
    assert plan["authors"]["schema"]["default_sorting_field"] == "year"


def test_default_sorting_field_must_be_required_in_every_member(offline: Env) -> None:
    # `year` is nullable in authors here: it can't sort the shared collection
    app_exec(offline.db, "CREATE TABLE people (id INTEGER PRIMARY KEY, year INTEGER)")
    tables = _tables(books={"default_sorting_field": "year"})
    tables[1] = {"table": "people", "collection": "search", "id_prefix": "p:",
                 "default_sorting_field": "year"}
    line = _refusal(offline, tables)
    assert "tables[1].default_sorting_field: 'year' must be a required numeric field" in line


def test_separate_collections_are_unchanged(offline: Env) -> None:
    offline.write_config([{"table": "books"}, {"table": "authors"}])
    plan = json.loads(offline.cli("schema", check=True).stdout)
    assert "pages" not in {f["name"] for f in plan["authors"]["schema"]["fields"]}
