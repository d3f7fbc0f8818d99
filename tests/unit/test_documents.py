"""documents.py: one SELECTed row → one document, by fixed conversion rules."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.hypothesis_examples import examples

from cdc_daemon.document_sql import document_sql
from cdc_daemon.documents import (
    MAX_DOCUMENT_BYTES,
    build_document,
    row_is_live,
    row_key,
    sent_size,
    size_problem,
)
from cdc_daemon.errors import DocumentError
from cdc_daemon.schema import TableMapping
from cdc_daemon.sink import ascii_json_body, encode_document

from .helpers import ELEMENTS, ELEMENTS_CONFIG, mapping, table

WIDE = table(
    "wide",
    [
        ("id", "INTEGER"),
        ("i64", "INTEGER"),
        ("i32", "INTEGER"),
        ("f", "REAL"),
        ("b", "BOOLEAN"),
        ("s", "TEXT"),
        ("d", "DATETIME"),
        ("raw", "BLOB"),
        ("untyped", ""),
        ("gone", "BOOLEAN"),
    ],
    key=("id",),
)


def wide(**config: Any) -> TableMapping:
    fields = {"i32": {"type": "int32"}, "raw": {"type": "string"}}
    fields.update(config.pop("fields", {}))
    return mapping(WIDE, fields=fields, **config)


def row_for(m: TableMapping, **values: Any) -> tuple[Any, ...]:
    """A row in `m.select_list()` order; unspecified columns are NULL."""
    flag = (m.soft_delete,) if m.soft_delete else ()
    return tuple(values.get(column) for column in (*m.key, *(f.column for f in m.fields), *flag))


def test_seed_element_document() -> None:
    m = mapping(ELEMENTS, **{k: v for k, v in ELEMENTS_CONFIG.items() if k != "table"})
    row = (7, "note", 70, 700, 1, None, "2024-01-02 03:04:05", "2024-01-02 03:04:06")
    assert build_document(m, row) == {
        "id": "7",
        "element_type": "note",
        "element_id": 70,
        "sequence_number": 700,
        "version_number": 1,
        "created_at": "2024-01-02 03:04:05",
        "updated_at": "2024-01-02 03:04:06",
    }


def test_null_leaves_the_field_out() -> None:
    m = wide()
    assert build_document(m, row_for(m, id=1)) == {"id": "1"}
    doc = build_document(m, row_for(m, id=2, s="", i64=0, f=0.0, b=0))
    assert doc == {"id": "2", "s": "", "i64": 0, "f": 0.0, "b": False}


def test_values_by_field_type() -> None:
    m = wide()
    doc = build_document(
        m,
        row_for(
            m,
            id=1,
            i64=-(2**63),
            i32=2**31 - 1,
            f=3,
            b=1,
            s="tëxt 🦄\n",
            d="2024-05-06T07:08:09Z",
            raw=b"\x00\xff\x10",
            untyped=12,
        ),
    )
    assert doc == {
        "id": "1",
        "i64": -(2**63),
        "i32": 2**31 - 1,
        "f": 3.0,
        "b": True,
        "s": "tëxt 🦄\n",
        "d": "2024-05-06T07:08:09Z",
        "raw": base64.b64encode(b"\x00\xff\x10").decode("ascii"),
        "untyped": "12",
    }
    assert isinstance(doc["f"], float)


@pytest.mark.parametrize(("value", "expected"), [(0, False), (1, True)])
def test_bool_from_integers(value: int, expected: bool) -> None:
    m = wide()
    assert build_document(m, row_for(m, id=1, b=value))["b"] is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, "42"),
        (-1, "-1"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1.5, "1.5"),
        (2**63 - 1, "9223372036854775807"),
    ],
)
def test_numbers_in_string_fields_become_their_text(value: Any, expected: str) -> None:
    m = wide()
    assert build_document(m, row_for(m, id=1, s=value))["s"] == expected


def test_integral_reals_in_integer_fields_become_ints() -> None:
    m = wide()
    doc = build_document(m, row_for(m, id=1, i64=5.0, i32=-3.0))
    assert doc["i64"] == 5 and isinstance(doc["i64"], int)
    assert doc["i32"] == -3 and isinstance(doc["i32"], int)


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**40, 2.0**31])
def test_int32_overflow_is_a_document_error(value: Any) -> None:
    m = wide()
    with pytest.raises(DocumentError, match="i32"):
        build_document(m, row_for(m, id=1, i32=value))


def test_int32_bounds_pass() -> None:
    m = wide()
    assert build_document(m, row_for(m, id=1, i32=-(2**31)))["i32"] == -(2**31)
    assert build_document(m, row_for(m, id=1, i32=2**31 - 1))["i32"] == 2**31 - 1


def test_int64_overflow_is_a_document_error() -> None:
    m = wide()
    with pytest.raises(DocumentError):
        build_document(m, row_for(m, id=1, i64=1e19))


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("column", ["f", "s", "i64", "i32", "b", "untyped"])
def test_non_finite_numbers_are_document_errors(column: str, value: float) -> None:
    m = wide()
    with pytest.raises(DocumentError, match=column):
        build_document(m, row_for(m, id=1, **{column: value}))


@pytest.mark.parametrize("column", ["i64", "i32", "f", "b"])
def test_blob_in_a_non_string_field_is_a_document_error(column: str) -> None:
    # SQLite lets any column hold a BLOB; JSON cannot carry bytes.
    m = wide()
    with pytest.raises(DocumentError, match=column):
        build_document(m, row_for(m, id=1, **{column: b"\x01"}))


def test_text_in_a_numeric_field_is_sent_for_typesense_to_judge() -> None:
    m = wide()
    assert build_document(m, row_for(m, id=1, i64="12abc"))["i64"] == "12abc"


def test_one_megabyte_of_text_passes_through_unchanged() -> None:
    m = wide()
    big = ("é🦄 quote' comma, \n" * 60_000)[: 1 << 20]
    doc = build_document(m, row_for(m, id=1, s=big))
    assert doc["s"] == big
    assert json.loads(json.dumps(doc, ensure_ascii=False))["s"] == big


def test_renamed_fields_and_composite_ids() -> None:
    info = table("t", [("a", "INTEGER"), ("b", "TEXT"), ("c", "TEXT")], key=("a", "b"))
    m = mapping(info, rename={"c": "see"})
    assert m.select_list() == ('"a"', '"b"', '"a"', '"b"', '"c"')  # key first, then the fields
    row = row_for(m, a=1, b="x,y", c="value")
    assert build_document(m, row) == {"id": '[1,"x,y"]', "a": 1, "b": "x,y", "see": "value"}
    assert row_key(m, row) == (1, "x,y")


def test_blob_single_key_id_is_hex() -> None:
    m = mapping(table("t", [("k", "BLOB"), ("v", "TEXT")], key=("k",)))
    assert build_document(m, row_for(m, k=b"\xde\xad", v="v")) == {"id": "dead", "v": "v"}


def test_null_key_is_a_document_error() -> None:
    # A nullable TEXT PRIMARY KEY can hold NULL; 'None' would be another row's document id.
    m = mapping(table("t", [("k", "TEXT"), ("v", "TEXT")], key=("k",)))
    with pytest.raises(DocumentError):
        build_document(m, row_for(m, k=None, v="v"))
    composite = mapping(table("t", [("a", "TEXT"), ("b", "TEXT")], key=("a", "b")))
    with pytest.raises(DocumentError):
        build_document(composite, row_for(composite, a="x", b=None))


# -- soft delete ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "live"),
    [
        (None, True),
        (0, True),
        (0.0, True),
        ("", True),
        ("0", True),
        ("false", True),
        (" FALSE ", True),
        ("no", True),
        ("f", True),
        ("N", True),
        (b"", True),
        (1, False),
        (2, False),
        (-1, False),
        (0.5, False),
        ("1", False),
        ("true", False),
        ("yes", False),
        ("deleted", False),
        (b"\x00", False),
    ],
)
def test_soft_delete_truthiness(flag: Any, live: bool) -> None:
    m = wide(soft_delete="gone")
    assert m.select_list()[-1] == '"gone"'
    row = row_for(m, id=1, s="x", gone=flag)
    assert row_is_live(m, row) is live


def test_without_soft_delete_every_row_is_live() -> None:
    m = wide()
    assert row_is_live(m, row_for(m, id=1, gone=1))


# -- property: only DocumentError, and what is built is valid JSON --------------------------------

sqlite_keys = st.one_of(  # every value SQLite holds but NULL
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),  # SQLite stores NaN as NULL
    st.text(),
    st.binary(max_size=64),
    st.sampled_from(['{"a": [1, {"b": null}]}', '[{"a": 1}]', "{}", "[]", '{"a": NaN}', "[{}, 2]"]),
)
sqlite_values = st.none() | sqlite_keys
FIELD_TYPES = ["string", "int32", "int64", "float", "bool", "string[]", "auto", "string*"]
FIELD_TYPES += ["object", "object[]"]


@settings(max_examples=examples(200), deadline=None)
@given(
    types=st.lists(st.sampled_from(FIELD_TYPES), min_size=1, max_size=6),
    data=st.data(),
)
def test_property_build_document_raises_only_document_errors(
    types: list[str], data: st.DataObject
) -> None:
    columns = [("id", "TEXT")] + [(f"c{i}", "") for i in range(len(types))]
    m = mapping(
        table("t", columns, key=("id",)),
        fields={f"c{i}": {"type": kind} for i, kind in enumerate(types)},
    )
    key = data.draw(sqlite_keys, label="key")
    values = data.draw(st.lists(sqlite_values, min_size=len(types), max_size=len(types)))
    try:
        doc = build_document(m, (key, *values))
    except DocumentError:
        return
    # What the sink sends: strict JSON, one line.
    line = json.dumps(doc, ensure_ascii=False, allow_nan=False)
    assert "\n" not in line
    assert isinstance(doc["id"], str)
    assert set(doc) == {"id"} | {f"c{i}" for i, v in enumerate(values) if v is not None}


# -- object fields: JSON text from a TEXT column --------------------------------------------------

OBJECTS = table("docs", [("id", "INTEGER"), ("meta", "TEXT"), ("tags", "TEXT")], key=("id",))
OBJECT_FIELDS = mapping(OBJECTS, fields={"meta": {"type": "object"}, "tags": {"type": "object[]"}})


def test_object_fields_are_the_columns_json_parsed() -> None:
    meta = '{"color": "red", "n": 3, "deep": {"ok": true, "x": [1.5, null]}, "é": "🦄"}'
    row = row_for(OBJECT_FIELDS, id=1, meta=meta, tags='[{"k": "a"}, {"k": "b"}]')
    assert build_document(OBJECT_FIELDS, row) == {
        "id": "1",
        "meta": {"color": "red", "n": 3, "deep": {"ok": True, "x": [1.5, None]}, "é": "🦄"},
        "tags": [{"k": "a"}, {"k": "b"}],
    }
    empty = row_for(OBJECT_FIELDS, id=2, meta="{}", tags="[]")
    assert build_document(OBJECT_FIELDS, empty) == {"id": "2", "meta": {}, "tags": []}
    assert build_document(OBJECT_FIELDS, row_for(OBJECT_FIELDS, id=3)) == {"id": "3"}  # NULLs


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("meta", "not json", "not valid JSON for object"),
        ("meta", '{"a": 1', "not valid JSON for object"),
        ("meta", "[1, 2]", "JSON list is not an object"),
        ("meta", '"text"', "JSON str is not an object"),
        ("meta", "null", "JSON NoneType is not an object"),
        ("meta", '{"a": NaN}', "NaN is not JSON"),
        ("meta", '{"a": -Infinity}', "-Infinity is not JSON"),
        ("meta", 7, "int is not JSON text for object"),
        ("meta", 1.5, "float is not JSON text for object"),
        ("meta", b"{}", "BLOB cannot be sent as object"),
        ("tags", '{"k": "a"}', "JSON dict is not an array of objects"),
        ("tags", '[{"k": "a"}, 1]', "JSON list is not an array of objects"),
        ("meta", '{"a":' * 101 + "1" + "}" * 101, "nested deeper than 100 levels"),
        ("meta", "[" * 5000 + "]" * 5000, "not valid JSON for object"),  # RecursionError
    ],
)
def test_a_value_that_is_not_a_json_object_is_that_rows_document_error(
    column: str, value: Any, words: str
) -> None:
    with pytest.raises(DocumentError) as excinfo:
        build_document(OBJECT_FIELDS, row_for(OBJECT_FIELDS, id=1, **{column: value}))
    assert str(excinfo.value).startswith(f"column {column!r}: "), excinfo.value
    assert words in str(excinfo.value)


def test_object_nesting_up_to_the_limit_passes() -> None:
    deepest = '{"a":' * 99 + "[1]" + "}" * 99  # 100 levels with the array
    assert build_document(OBJECT_FIELDS, row_for(OBJECT_FIELDS, id=1, meta=deepest))["meta"]


def test_object_fields_take_no_fast_path() -> None:
    # SQLite's json() differs from Python's parser (JSON5, NaN, duplicate keys, big numbers):
    # rows of such tables are built by documents.py only, so both paths can't disagree.
    assert document_sql(OBJECT_FIELDS) is None
    assert document_sql(mapping(OBJECTS)) is not None


# -- the size of one document ---------------------------------------------------------------------


@settings(max_examples=examples(300), deadline=None)
@given(st.text() | st.sampled_from(["", "é", "🦄", "\u2028", '"\\', "\ud800", "a\U0010ffff"]))
def test_sent_size_is_the_size_of_the_line_in_an_import_body(text: str) -> None:
    for line in (text, json.dumps({"id": "1", "s": text}, ensure_ascii=False)):
        assert sent_size(line) == len(ascii_json_body([line]))


def test_a_document_up_to_the_limit_is_fine_one_byte_more_is_refused() -> None:
    m = wide()
    empty = len(encode_document(build_document(m, row_for(m, id=1, s=""))))
    text = "x" * (MAX_DOCUMENT_BYTES - empty)
    fits = encode_document(build_document(m, row_for(m, id=1, s=text)))
    assert len(fits) == MAX_DOCUMENT_BYTES and size_problem(fits) is None
    over = fits[:-2] + 'x"}'
    assert size_problem(over) == (
        f"the document is {MAX_DOCUMENT_BYTES + 1} bytes of JSON, more than the"
        f" {MAX_DOCUMENT_BYTES} bytes (16 MiB) one document may have"
    )
    # Sizes count as sent: a non-ASCII character is a 6-byte escape, one beyond the BMP two.
    assert size_problem("é" * (MAX_DOCUMENT_BYTES // 6)) is None
    assert size_problem("é" * (MAX_DOCUMENT_BYTES // 6 + 1)) is not None
    assert size_problem("🦄" * (MAX_DOCUMENT_BYTES // 12 + 1)) is not None
    assert MAX_DOCUMENT_BYTES == 16 * 1024 * 1024
