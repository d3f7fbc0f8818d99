"""Computed fields (`fields.<name>.sql`), below the daemon: the mapping, the row query every
path reads, value conversion, one row's failing expression, `check`'s expression problems, the
fast path and the reconfiguration record. End to end: test_computed_fields_e2e.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import app_write
from support.hypothesis_examples import examples

from cdc_daemon.config import TableConfig
from cdc_daemon.database import Database
from cdc_daemon.document_sql import document_sql, fetch_documents
from cdc_daemon.documents import ExpressionFailed, build_document
from cdc_daemon.errors import ConfigError, DocumentError
from cdc_daemon.preflight import (
    expression_problem,
    row_query_problem,
    sample_problems,
    tables_read,
)
from cdc_daemon.reconfigure import describe
from cdc_daemon.schema import FieldMap, TableMapping
from cdc_daemon.table_rows import ROW_QUERY_ERRORS, page_after, rows_by_keys
from cdc_daemon.wiring import mapping_from_config

DDL = [
    "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT)",
    "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author_id INTEGER,"
    " published_at TEXT, meta TEXT, lat REAL, lng REAL)",
    "CREATE TABLE book_tags (book_id INTEGER, tag TEXT, PRIMARY KEY (book_id, tag))",
]
ROWS = [
    "INSERT INTO authors VALUES (1, 'Ann'), (2, 'Bo')",
    "INSERT INTO books VALUES (1, 'One', 1, '2020-01-02', '{\"n\": 5}', 52.5, 13.4),"
    " (2, 'Two', 2, '2021-06-01', 'not json', 10, 20), (3, 'Three', NULL, NULL, NULL, NULL, NULL)",
    "INSERT INTO book_tags VALUES (1, 'a'), (1, 'b'), (3, 'c')",
]
FIELDS: dict[str, Any] = {
    "published_ts": {"type": "int64", "optional": True,
                     "sql": "CAST(strftime('%s', published_at) AS INTEGER)"},
    "author_name": {"type": "string", "optional": True,
                    "sql": "SELECT name FROM authors WHERE authors.id = books.author_id"},
    "tags": {"type": "string[]", "sql": "SELECT json_group_array(tag) FROM book_tags"
                                        " WHERE book_tags.book_id = books.id"},
    "location": {"type": "geopoint", "optional": True,  # [null,null] is no geopoint
                 "sql": "CASE WHEN lat IS NOT NULL AND lng IS NOT NULL"
                        " THEN json_array(lat, lng) END"},
    "kind": {"type": "string", "facet": True, "sql": "'book'"},
}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    path = tmp_path_factory.mktemp("computed") / "app.db"
    app_write(path, [[(sql, []) for sql in DDL + ROWS]])
    database = Database(path)
    yield database
    database.close()


def books(db: Database, **config: Any) -> TableMapping:
    config.setdefault("fields", FIELDS)
    table = TableConfig(table="books", **config)
    return mapping_from_config(db.table_info("books"), table, "tables[0]")


def read(db: Database, m: TableMapping, keys: list[int]) -> dict[Any, Any]:
    with db.read() as conn:
        return rows_by_keys(conn, m, [(k,) for k in keys])


# -- the mapping -------------------------------------------------------------------------------


def test_computed_fields_follow_the_columns_and_are_selected_as_expressions(db: Database) -> None:
    m = books(db)
    names = [f.name for f in m.fields]
    assert names[-5:] == list(FIELDS)  # after the columns, in config order
    tags = next(f for f in m.fields if f.name == "tags")
    assert tags == FieldMap("tags", "tags", "string[]", optional=False, sql=FIELDS["tags"]["sql"])
    assert f"({FIELDS['tags']['sql']}\n)" in m.select_list()
    kind = next(f for f in m.collection_schema()["fields"] if f["name"] == "kind")
    assert kind == {"name": "kind", "type": "string", "facet": True}  # not optional by default


def test_a_computed_field_replaces_the_column_of_its_name_in_place(db: Database) -> None:
    m = books(db, fields={"title": {"type": "string", "sql": "upper(title)"}})
    assert [f.name for f in m.fields].index("title") == 0
    assert m.select_list()[1] == "(upper(title)\n)"
    assert build_document(m, read(db, m, [1])[(1,)])["title"] == "ONE"


def test_config_errors_name_the_key(db: Database) -> None:
    with pytest.raises(ValueError, match="a field with `sql` needs its `type`"):
        TableConfig(table="books", fields={"x": {"sql": "1"}})
    with pytest.raises(ConfigError, match=r"^tables\[0\]\.fields\.id: .*document id"):
        books(db, fields={"id": {"type": "string", "sql": "'x'"}})
    with pytest.raises(ConfigError, match=r"^tables\[0\]\.fields\.x\.\*: .*pattern"):
        books(db, fields={"x.*": {"type": "string", "sql": "'x'"}})
    with pytest.raises(ConfigError, match=r"^tables\[0\]\.fields\.kind: .*renamed to 'kind'"):
        books(db, fields={"kind": {"type": "string", "sql": "'b'"}}, rename={"title": "kind"})


# -- the row query: values, one row's failure --------------------------------------------------


def test_every_read_evaluates_the_expressions_in_the_row_query(db: Database) -> None:
    m = books(db)
    docs = {k[0]: build_document(m, row) for k, row in read(db, m, [1, 3]).items()}
    assert docs[1] == {
        "id": "1", "title": "One", "author_id": 1, "published_at": "2020-01-02",
        "meta": '{"n": 5}', "lat": 52.5, "lng": 13.4, "published_ts": 1577923200,
        "author_name": "Ann", "tags": ["a", "b"], "location": [52.5, 13.4], "kind": "book"}
    assert docs[3] == {"id": "3", "title": "Three", "tags": ["c"], "kind": "book"}
    with db.read() as conn:
        page = page_after(conn, m, None, 10)
    assert [build_document(m, r) for r in page if r[0] in (1, 3)] == [docs[1], docs[3]]


def test_an_expression_failing_on_one_row_fails_that_row_alone(db: Database) -> None:
    bad = {"n": {"type": "int64", "optional": True, "sql": "json_extract(meta, '$.n')"}}
    m = books(db, fields=bad)
    rows = read(db, m, [1, 2, 3])
    assert set(rows) == {(1,), (2,), (3,)}
    assert build_document(m, rows[(1,)])["n"] == 5
    assert "n" not in build_document(m, rows[(3,)])
    failed = rows[(2,)][-1]
    assert isinstance(failed, ExpressionFailed) and "malformed JSON" in failed.error
    with pytest.raises(DocumentError, match=r"^field 'n': its sql failed on this row: malformed"):
        build_document(m, rows[(2,)])
    with db.read() as conn:  # verify and `check` read pages: the same row, the same failure
        page = page_after(conn, m, None, 10)
    assert [r[0] for r in page] == [1, 2, 3] and isinstance(page[1][-1], ExpressionFailed)


def test_without_computed_fields_a_failing_row_query_is_still_the_tables(db: Database) -> None:
    m = books(db, fields={}, where="json_extract(meta, '$.n') > 0")
    with db.read() as conn, pytest.raises(ROW_QUERY_ERRORS):
        rows_by_keys(conn, m, [(1,), (2,)])


def test_a_where_failing_on_a_row_stays_the_tables_trouble(db: Database) -> None:
    m = books(db, fields={"kind": {"type": "string", "sql": "'b'"}},
              where="json_extract(meta, '$.n') > 0")
    with db.read() as conn, pytest.raises(ROW_QUERY_ERRORS):
        rows_by_keys(conn, m, [(1,), (2,)])


# -- value conversion ---------------------------------------------------------------------------


def computed(kind: str, optional: bool = True) -> TableMapping:
    field = FieldMap("f", "f", kind, optional, sql="x")
    return TableMapping("t", "t", ("id",), ("INTEGER",), (field,), None, None, None)


@pytest.mark.parametrize(
    ("kind", "value", "sent"),
    [
        ("string[]", '["a", 1, 2.5, null]', ["a", "1", "2.5"]),
        ("int32[]", "[1, 2.0, -2147483648]", [1, 2, -(2**31)]),
        ("int64[]", "[9223372036854775807, null]", [2**63 - 1]),
        ("float[]", "[1, 2.5]", [1.0, 2.5]),
        ("bool[]", "[true, 0, 1, false]", [True, False, True, False]),
        ("string[]", "[]", []),
        ("geopoint", "[52.5, -13]", [52.5, -13]),
        ("geopoint", "[-90, 180]", [-90, 180]),
        ("object", '{"a": [1]}', {"a": [1]}),
        ("int64", 5.0, 5),
    ],
)
def test_json_values_become_arrays_geopoints_and_objects(kind: str, value: Any, sent: Any) -> None:
    document = build_document(computed(kind), (1, value))
    assert document["f"] == sent and type(document["f"]) is type(sent)


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("string[]", "not json", "not valid JSON for string[]"),
        ("string[]", '"text"', "JSON str is not an array"),
        ("string[]", "[true]", "True is not a string"),
        ("string[]", "[[1]]", "is not a string"),
        ("int32[]", "[2147483648]", "2147483648 is not an int32"),
        ("int64[]", "[1.5]", "1.5 is not an int64"),
        ("int64[]", '["1"]', "'1' is not an int64"),
        ("float[]", "[1e999]", "inf is not a finite number"),
        ("float[]", "[true]", "is not a finite number"),
        ("bool[]", "[2]", "2 is not a bool"),
        ("int64[]", 5, "int is not JSON text"),
        ("geopoint", "[1]", "is not [lat, lng]"),
        ("geopoint", "[null,null]", "is not [lat, lng]"),
        ("geopoint", '["1", 2]', "is not [lat, lng]"),
        ("geopoint", "[90.5, 0]", "out of range"),
        ("geopoint", "[0, -180.1]", "out of range"),
        ("int32", 2**31, "out of range for int32"),
    ],
)
def test_values_that_do_not_fit_are_the_rows_error_naming_the_field(
    kind: str, value: Any, reason: str
) -> None:
    with pytest.raises(DocumentError, match=rf"^field 'f': .*{re.escape(reason)}"):
        build_document(computed(kind), (1, value))


def test_null_leaves_an_optional_field_out_and_fails_a_required_one() -> None:
    assert build_document(computed("string"), (1, None)) == {"id": "1"}
    with pytest.raises(DocumentError, match=r"^field 'f' is NULL but not optional$"):
        build_document(computed("string", optional=False), (1, None))


def test_array_columns_are_converted_too(db: Database) -> None:
    m = books(db, fields={"meta": {"type": "int64[]", "optional": True}}, include=["meta"])
    with pytest.raises(DocumentError, match=r"^column 'meta': not valid JSON for int64"):
        build_document(m, (2, "not json"))
    assert build_document(m, (2, "[1, 2]")) == {"id": "2", "meta": [1, 2]}


# -- check: expressions that can't be ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("json_extractt(meta)", "no such function: json_extractt"),
        ("SELECT nope FROM authors", "no such column: nope"),
        ("1), (2", "not exactly one expression"),
        ("1) FROM books /*", "not exactly one expression"),
        ("1) FROM books; DELETE FROM authors; SELECT (1", "starts another statement"),
    ],
)
def test_check_names_the_expressions_key_and_sqlites_message(
    db: Database, sql: str, problem: str
) -> None:
    m = books(db, fields={"x": {"type": "string", "sql": sql}})
    found = row_query_problem(db, m, "tables[0]")
    assert found is not None and found.startswith(f"tables[0].fields.x.sql: {sql!r} is not a")
    assert problem in found
    assert expression_problem(db.conn, "books", FIELDS["tags"]["sql"]) is None


def test_an_expression_may_end_with_a_line_comment(db: Database) -> None:
    m = books(db, fields={"x": {"type": "string", "sql": "upper(title) -- shouted"}})
    assert row_query_problem(db, m, "tables[0]") is None
    assert build_document(m, read(db, m, [1])[(1,)])["x"] == "ONE"


def test_tables_read_lists_the_other_tables_an_expression_reads(db: Database) -> None:
    assert tables_read(db.conn, "books", FIELDS["author_name"]["sql"]) == {"authors"}
    assert tables_read(db.conn, "books", FIELDS["tags"]["sql"]) == {"book_tags"}
    assert tables_read(db.conn, "books", "json_array(lat, lng)") == set()
    both = "(SELECT count(*) FROM json_each(meta)) + (SELECT count(*) FROM authors)"
    assert tables_read(db.conn, "books", both) == {"authors"}


# -- the fast path ------------------------------------------------------------------------------

FAST_FIELDS: dict[str, Any] = {
    "published_ts": FIELDS["published_ts"],
    "author_name": FIELDS["author_name"],
    "kind": FIELDS["kind"],
    "n32": {"type": "int32", "optional": True, "sql": "author_id * 1500000000"},
    "flag": {"type": "bool", "sql": "author_id IS NOT NULL"},
    "ratio": {"type": "float", "optional": True, "sql": "lat / 4"},
}


def test_the_fast_path_builds_the_python_documents_with_computed_fields(db: Database) -> None:
    m = books(db, fields=FAST_FIELDS, exclude=["meta"])
    sql = document_sql(m)
    assert sql is not None
    rows = read(db, m, [1, 2, 3])
    built = fetch_documents(db.conn, m, sql, [(1,), (2,), (3,)])
    assert built is not None
    assert json.loads(built[1] or "") == build_document(m, rows[(1,)])
    assert built[2] is None  # n32: 3e9 is out of int32's range: Python rejects it
    with pytest.raises(DocumentError, match="out of range for int32"):
        build_document(m, rows[(2,)])
    assert json.loads(built[3] or "") == build_document(m, rows[(3,)])


def test_the_fast_path_evaluates_each_expression_once_per_row(db: Database) -> None:
    calls: list[Any] = []
    db.conn.create_scalar_function("counted", lambda v: calls.append(v) or v, 1)
    expression = "SELECT counted(name) FROM authors WHERE authors.id = books.author_id"
    fields = {"who": {"type": "string", "optional": True, "sql": expression}}
    m = books(db, exclude=["meta"], fields=fields)
    sql = document_sql(m)
    assert sql is not None
    built = fetch_documents(db.conn, m, sql, [(1,), (2,), (3,)])
    assert built is not None and json.loads(built[1] or "")["who"] == "Ann"
    assert sorted(calls) == ["Ann", "Bo"]  # once per row with an author, not per reference


def test_a_failing_expression_sends_the_lookup_to_python(db: Database) -> None:
    m = books(db, exclude=["meta"], fields={"n": {"type": "int64", "optional": True,
                                                  "sql": "json_extract(meta, '$.n')"}})
    sql = document_sql(m)
    assert sql is not None
    assert fetch_documents(db.conn, m, sql, [(1,), (2,)]) is None
    assert fetch_documents(db.conn, m, sql, [(1,)]) == {1: json.dumps(
        build_document(m, read(db, m, [1])[(1,)]), separators=(",", ":"), ensure_ascii=False)}


def test_array_and_geopoint_fields_have_no_fast_path(db: Database) -> None:
    assert document_sql(books(db, exclude=["meta"])) is None  # tags, location


@settings(max_examples=examples(300), deadline=None)
@given(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(),
                 st.binary(max_size=4), st.sampled_from([0, 1, 2**31, 0.0, -0.0, 2.0])),
       st.sampled_from(["string", "int64", "int32", "bool", "float"]), st.booleans())
def test_fast_path_equals_python_for_any_computed_value(
    db: Database, value: Any, kind: str, optional: bool
) -> None:
    fields = {"v": {"type": kind, "optional": optional, "sql": "SELECT value FROM probe"}}
    m = books(db, include=["title"], fields=fields)
    conn = db.conn
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS probe (value)")
    conn.execute("DELETE FROM probe")
    conn.execute("INSERT INTO probe VALUES (?)", (value,))
    sql = document_sql(m)
    assert sql is not None
    built = fetch_documents(conn, m, sql, [(1,)])
    assert built is not None
    try:
        expected: Any = build_document(m, read(db, m, [1])[(1,)])
    except DocumentError:
        expected = None
    if built[1] is not None:
        assert expected is not None and json.loads(built[1]) == expected
        assert [type(v) for v in json.loads(built[1]).values()] == [
            type(v) for v in expected.values()]


# -- the reconfiguration record -----------------------------------------------------------------


def test_an_edited_expression_changes_the_record_and_a_column_record_does_not(
    db: Database,
) -> None:
    plain = describe(books(db, fields={}))
    assert plain["fields"][0] == ["title", "title", "string"]  # as recorded before sql existed
    one = describe(books(db, fields={"kind": {"type": "string", "sql": "'book'"}}))
    two = describe(books(db, fields={"kind": {"type": "string", "sql": "'novel'"}}))
    assert one["fields"][-1] == ["kind", "kind", "string", "'book'"]
    assert one != two


def test_check_samples_name_a_failing_expression_at_its_key(db: Database) -> None:
    m = books(db, fields={"n": {"type": "int64", "sql": "json_extract(meta, '$.n')"}})
    problems = sample_problems(db, m, "tables[0]")
    assert len(problems) == 1 and problems[0].startswith("tables[0].fields.n: "), problems
    assert "key 2: field 'n': its sql failed on this row: malformed JSON" in problems[0]
    assert "key 3: field 'n' is NULL but not optional" not in problems[0]  # the first example
