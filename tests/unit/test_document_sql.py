"""document_sql.py: the documents SQLite builds must be the documents documents.py builds, for
every value it accepts; every other row must be left to Python (NULL)."""

from __future__ import annotations

import json
from typing import Any

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.hypothesis_examples import examples

from cdc_daemon.database import select_values
from cdc_daemon.document_sql import document_sql, fetch_documents
from cdc_daemon.documents import build_document
from cdc_daemon.errors import DocumentError
from cdc_daemon.schema import TableMapping
from cdc_daemon.sink import ascii_json_body

from .helpers import ELEMENTS, ELEMENTS_CONFIG, mapping, same_value, table
from .test_documents import WIDE, wide

COLUMNS = [c.name for c in WIDE.columns]
DDL = 'CREATE TABLE wide ("id" INTEGER PRIMARY KEY, i64 INTEGER, i32 INTEGER, f REAL, b BOOLEAN,'
DDL += " s TEXT, d DATETIME, raw BLOB, untyped, gone BOOLEAN)"
FAST = wide(exclude=["gone"])  # `gone` is only the soft-delete column in other tests

values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.1 + 0.2, 1e20, 5e-324, 1.7976931348623157e308, 3.0]),
    st.text(),
    st.sampled_from(["", "é", "🦄", "\u2028", "\x00x", "\x7f", '"\\', "12", "1e5"]),
    st.binary(max_size=8),
)


@pytest.fixture(scope="module")
def conn() -> Any:
    connection = apsw.Connection(":memory:")
    connection.execute(DDL)
    yield connection
    connection.close()


def both_paths(conn: apsw.Connection, m: TableMapping, key: Any) -> tuple[Any, str | None]:
    """(documents.py's document, or the DocumentError; the SQL-built line)."""
    sql = document_sql(m)
    assert sql is not None
    rows = select_values(conn, m.select_list(), f"FROM {m.table} WHERE id = ?", (key,))
    try:
        expected: Any = build_document(m, rows[0])
    except DocumentError as exc:
        expected = exc
    built = fetch_documents(conn, m, sql, [(key,)], chunk=500)
    assert built is not None and set(built) == {key}
    return expected, built[key]


def assert_same_document(line: str, expected: Any) -> None:
    assert isinstance(expected, dict), f"SQLite built {line!r}, Python refused: {expected}"
    for text in (line, ascii_json_body([line]).decode("ascii")):
        document = json.loads(text)
        assert list(document) == list(expected)
        assert all(same_value(document[k], expected[k]) for k in expected), (document, expected)


def column_value(natural: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the column's own kind of value (so whole rows often take the fast path)."""
    return st.integers(0, 19).flatmap(lambda n: values if n == 0 else natural)


TEXT = st.one_of(st.text(), st.sampled_from(["é", "🦄", "\u2028", "\x00x", "\x7f", '"\\']))
ROW = st.tuples(
    column_value(st.integers(min_value=-(2**63), max_value=2**63 - 1)),  # i64
    column_value(st.integers(min_value=-(2**31), max_value=2**31 - 1)),  # i32
    column_value(st.floats(allow_nan=False, allow_infinity=False).filter(bool)
                 | st.sampled_from([0.1 + 0.2, 1e20, 5e-324, 1 / 3])),  # f
    column_value(st.sampled_from([0, 1])),  # b
    column_value(TEXT), column_value(TEXT),  # s, d
    column_value(st.none()), column_value(TEXT), column_value(st.none()),  # raw, untyped, gone
)


@settings(max_examples=examples(600), deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), ROW)
def test_sql_documents_equal_python_documents(conn: apsw.Connection, key: int,
                                              row: tuple[Any, ...]) -> None:
    conn.execute("DELETE FROM wide")
    conn.execute(f"INSERT INTO wide VALUES ({', '.join('?' * 10)})", [key, *row])
    expected, line = both_paths(conn, FAST, key)
    if line is not None:
        assert_same_document(line, expected)


# Every field of FAST as a computed field reading its column through a scalar subquery (the
# case that must be evaluated once per row), the column itself left out: the same documents.
COMPUTED = wide(
    include=[],
    fields={
        f.name: {"type": f.type, "optional": f.optional,
                 "sql": f'SELECT w."{f.column}" FROM wide AS w WHERE w.id = wide.id'}
        for f in FAST.fields
    },
)


@settings(max_examples=examples(300), deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), ROW)
def test_sql_documents_equal_python_documents_for_computed_fields(
    conn: apsw.Connection, key: int, row: tuple[Any, ...]
) -> None:
    conn.execute("DELETE FROM wide")
    conn.execute(f"INSERT INTO wide VALUES ({', '.join('?' * 10)})", [key, *row])
    expected, line = both_paths(conn, COMPUTED, key)
    if line is not None:
        assert_same_document(line, expected)


# JSON array text (and text that is not one) in `s`, read as each array type, as a column and as
# a computed field: SQLite sends the arrays whose elements all fit as they are, Python the rest.
ELEMENT = st.one_of(
    st.text(max_size=4), st.integers(min_value=-(2**70), max_value=2**70), st.booleans(),
    st.none(), st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["é", "\x00"]),
)
JSON_TEXT = st.one_of(
    st.lists(ELEMENT, max_size=4).map(json.dumps),
    st.lists(st.lists(ELEMENT, max_size=2), max_size=2).map(json.dumps),  # nested: Python's
    st.sampled_from(["[]", "[1,", "{}", '"a"', "[1e2]", "[ 1 , 2 ]", "[true,1]", '["\\u00e9"]']),
)
ARRAY_TYPES = ["string[]", "int64[]", "int32[]", "bool[]"]


@settings(max_examples=examples(300), deadline=None)
@given(st.sampled_from(ARRAY_TYPES), st.booleans(), JSON_TEXT)
def test_sql_documents_equal_python_documents_for_arrays(
    conn: apsw.Connection, kind: str, computed: bool, text: str
) -> None:
    field = {"type": kind, "optional": True, **({"sql": "s"} if computed else {})}
    m = wide(include=[] if computed else ["s"], fields={"arr" if computed else "s": field})
    conn.execute("DELETE FROM wide")
    conn.execute("INSERT INTO wide (id, s) VALUES (1, ?)", [text])
    expected, line = both_paths(conn, m, 1)
    if line is not None:
        assert_same_document(line, expected)


def test_arrays_of_fitting_elements_take_the_fast_path(conn: apsw.Connection) -> None:
    conn.execute("DELETE FROM wide")
    conn.execute("""INSERT INTO wide (id, s) VALUES (1, '["a", "é"]')""")
    tags = wide(include=[], fields={"tags": {"type": "string[]", "sql": "s"}})
    assert both_paths(conn, tags, 1)[1] == '{"id":"1","tags":["a","é"]}'


def test_common_rows_take_the_fast_path(conn: apsw.Connection) -> None:
    conn.execute("DELETE FROM wide")
    conn.execute(
        "INSERT INTO wide VALUES (1, -5, 7, 2.5, 1, 'ünï 🦄 \"q\"', '2024-01-02', NULL, 'x', 0)"
    )
    expected, line = both_paths(conn, FAST, 1)
    assert line is not None and not line.isascii()  # raw UTF-8: the sink escapes it
    assert_same_document(line, expected)
    assert json.loads(line)["b"] is True and "raw" not in json.loads(line)


@pytest.mark.parametrize(
    ("column", "value"),
    [("raw", b"\x00\xff"), ("i32", 2**31), ("untyped", 5), ("f", 0.0), ("f", -0.0),
     ("i64", 2.5), ("b", 2), ("f", float("inf")), ("s", b"blob")],
)
def test_values_that_need_converting_are_left_to_python(
    conn: apsw.Connection, column: str, value: Any
) -> None:
    conn.execute("DELETE FROM wide")
    conn.execute(f"INSERT INTO wide (id, {column}) VALUES (1, ?)", (value,))
    assert both_paths(conn, FAST, 1)[1] is None


def test_text_that_is_not_utf8_sends_every_row_to_python(conn: apsw.Connection) -> None:
    conn.execute("DELETE FROM wide")
    conn.execute("INSERT INTO wide (id, s) VALUES (1, CAST(X'61ff' AS TEXT)), (2, 'fine')")
    sql = document_sql(FAST)
    assert sql is not None
    assert fetch_documents(conn, FAST, sql, [(1,), (2,)], chunk=500) is None


def test_text_keys_id_prefix_and_the_seed_table() -> None:
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE t (code TEXT PRIMARY KEY, n INTEGER)")
    conn.execute("INSERT INTO t VALUES ('ключ \"1\"', 3), ('k2', NULL)")
    info = table("t", [("code", "TEXT"), ("n", "INTEGER")], key=("code",))
    m = mapping(info, id_prefix="host-1:")
    sql = document_sql(m)
    assert sql is not None
    built = fetch_documents(conn, m, sql, [("ключ \"1\"",), ("k2",), ("absent",)], chunk=1)
    assert built is not None
    assert json.loads(built['ключ "1"'] or "") == {
        "id": 'host-1:ключ "1"', "code": 'ключ "1"', "n": 3}
    assert json.loads(built["k2"] or "") == {"id": "host-1:k2", "code": "k2"}
    assert "absent" not in built  # no row: a delete
    seed = mapping(ELEMENTS, **{k: v for k, v in ELEMENTS_CONFIG.items() if k != "table"})
    assert document_sql(seed) is not None


def test_mappings_without_a_fast_path() -> None:
    assert document_sql(wide(soft_delete="gone")) is None
    composite = table("c", [("a", "TEXT"), ("b", "INTEGER")], key=("a", "b"))
    assert document_sql(mapping(composite)) is None
    geopoints = wide(include=[], fields={"at": {"type": "geopoint", "sql": "s"}})
    assert document_sql(geopoints) is None
