"""row_keys.py: the log-key encoding of composite keys and the document ids."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.hypothesis_examples import examples

from cdc_daemon.row_keys import (
    affinity,
    document_id,
    key_from_document_id,
    log_key_to_key,
    parse_quoted_key,
)

from .helpers import same_key, same_value, sqlite_key_text

TRICKY_TEXTS = [
    "",
    "plain",
    "it's",
    "''",
    "'",
    "a,b",
    "',',",
    "1,2",
    " leading and trailing ",
    "new\nline\r\n",
    "tab\there",
    "NULL",
    "X'00ff'",
    "Inf",
    "-1",
    "é ß 中文 🦄 \u200b",
    'double "quotes"',
    "back\\slash",
    "\x00nul",
]

TRICKY_NUMBERS = [
    0,
    1,
    -1,
    2**31,
    -(2**31) - 1,
    2**63 - 1,
    -(2**63),
    0.1 + 0.2,
    1e-320,  # subnormal
    5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -0.5,
    3.0,
    1e16,
    123456789012345678.0,
    math.inf,
    -math.inf,
]

BLOBS = [b"", b"\x00", b"\x00\xff", b"'", b",", bytes(range(256))]


@pytest.mark.parametrize("value", TRICKY_TEXTS + TRICKY_NUMBERS + BLOBS, ids=repr)
def test_one_value_round_trips_alone_and_between_others(value: object) -> None:
    for key in [(value,), (value, 7), ("x", value), (value, value, b"\x01", "y,'z'")]:
        text = sqlite_key_text(key)
        assert same_key(log_key_to_key(text, len(key)), key), (key, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # What SQLite's quote() writes (3.40 and 3.54 differ for reals: both must parse).
        ("1,'a'", (1, "a")),
        ("'a''b','c,d'", ("a'b", "c,d")),
        ("X'00FF',X''", (b"\x00\xff", b"")),
        ("x'0a',-5", (b"\n", -5)),
        ("3.00000000000000044408e-01,1", (0.1 + 0.2, 1)),  # 3.40
        ("0.30000000000000004,1", (0.1 + 0.2, 1)),  # 3.54
        ("9.99988867182683e-321,2", (1e-320, 2)),
        ("Inf,-Inf", (math.inf, -math.inf)),  # 3.40
        ("9.0e+999,-9.0e+999", (math.inf, -math.inf)),  # 3.54
        ("1.0e+301,3.0", (1e301, 3.0)),
        ("-9223372036854775808,9223372036854775807", (-(2**63), 2**63 - 1)),
        ("'line\nbreak','🦄'", ("line\nbreak", "🦄")),
    ],
)
def test_parse_sqlite_quote_output(text: str, expected: tuple[object, ...]) -> None:
    assert same_key(parse_quoted_key(text), expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A TEXT part holding a NUL: its UTF-8 bytes (quote() would stop at the NUL).
        ("tX'610062',1", ("a\x00b", 1)),
        ("1,tx'00',tX'C3A900'", (1, "\x00", "é\x00")),
        ("tX'',X''", ("", b"")),
        ("'t',tX'7427'", ("t", "t'")),
    ],
)
def test_parse_text_with_a_nul(text: str, expected: tuple[object, ...]) -> None:
    assert same_key(parse_quoted_key(text), expected)


def test_a_text_part_with_a_nul_that_is_not_utf8_is_an_unreadable_key() -> None:
    with pytest.raises(ValueError, match="not valid UTF-8"):
        log_key_to_key("1,tX'ff00'", 2)


@pytest.mark.parametrize(
    "text",
    ["NULL,1", "1,NULL", "'unterminated", "1,,2", "abc", "'a'b'", "X'0g'", "1;2", "tX'0'", "t'a'"],
)
def test_parse_rejects_malformed_keys_and_nulls(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quoted_key(text)


key_values = st.one_of(  # what SQLite can hold in a key (no -0.0: quote() writes 0.0)
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False).filter(lambda f: not (f == 0 and math.copysign(1, f) < 0)),
    st.text(),
    st.text(alphabet="',\n X01 \"\\"),
    st.binary(),
)
composite_keys = st.lists(key_values, min_size=2, max_size=5).map(tuple)


@settings(max_examples=examples(200), deadline=None)
@given(composite_keys)
def test_property_log_key_round_trip(key: tuple[object, ...]) -> None:
    log_key = sqlite_key_text(key)
    assert isinstance(log_key, str)
    assert same_key(log_key_to_key(log_key, len(key)), key)


@pytest.mark.parametrize("value", [42, "it's, a key", 0.1 + 0.2, b"\x00\xff"], ids=repr)
def test_single_column_log_key_is_the_value_itself(value: object) -> None:
    assert same_value(sqlite_key_text((value,)), value)
    assert same_key(log_key_to_key(value, 1), (value,))


def test_a_null_single_column_log_key_is_unreadable() -> None:
    # A nullable TEXT PRIMARY KEY can hold NULL; it has no document id ('None' is a real key).
    with pytest.raises(ValueError):
        log_key_to_key(None, 1)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ((42,), "42"),
        ((-7,), "-7"),
        ((2**63 - 1,), "9223372036854775807"),
        (("hello world",), "hello world"),
        (('it\'s, "quoted"\n',), 'it\'s, "quoted"\n'),
        (("🦄",), "🦄"),
        ((0.1 + 0.2,), "0.30000000000000004"),
        ((1.0,), "1.0"),
        ((b"\x00\xff",), "00ff"),
        ((42, "eu"), '[42,"eu"]'),
        ((1, "é🦄"), '[1,"é🦄"]'),
        (("a,b", 'c"d'), '["a,b","c\\"d"]'),
        ((1, b"\x00\xff"), '[1,{"hex":"00ff"}]'),
        ((0.5, -1), "[0.5,-1]"),
    ],
)
def test_document_id(key: tuple[object, ...], expected: str) -> None:
    assert document_id(key) == expected


def test_composite_document_ids_are_unambiguous() -> None:
    keys = [(1, "2"), ("1", 2), (1, 2), (1.0, 2), ("1,2", ""), ("1", ",2"), (b"\x01", 2), ("01", 2)]
    ids = [document_id(k) for k in keys]
    assert len(set(ids)) == len(ids)
    for doc_id in ids:
        json.loads(doc_id)  # always a JSON array


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ("INTEGER", "INTEGER"),
        ("BIGINT", "INTEGER"),
        ("int", "INTEGER"),
        ("VARCHAR(20)", "TEXT"),
        ("CLOB", "TEXT"),
        ("text", "TEXT"),
        ("BLOB", "BLOB"),
        ("", "BLOB"),
        ("REAL", "REAL"),
        ("DOUBLE PRECISION", "REAL"),
        ("FLOAT", "REAL"),
        ("NUMERIC", "NUMERIC"),
        ("DECIMAL(10,5)", "NUMERIC"),
        ("BOOLEAN", "NUMERIC"),
        ("DATETIME", "NUMERIC"),
        ("CHARINT", "INTEGER"),  # rule 1 wins over rule 2, as in SQLite
    ],
)
def test_affinity_follows_sqlite_rules(declared: str, expected: str) -> None:
    assert affinity(declared) == expected


@pytest.mark.parametrize(
    ("doc_id", "column_affinity", "expected"),
    [
        ("42", "INTEGER", (42,)),
        ("-7", "INTEGER", (-7,)),
        ("9223372036854775807", "INTEGER", (2**63 - 1,)),
        ("abc", "INTEGER", ("abc",)),  # text stored in an INTEGER column stays text
        ("42", "TEXT", ("42",)),
        ("0.30000000000000004", "REAL", (0.1 + 0.2,)),
        ("1.0", "REAL", (1.0,)),
        ("inf", "REAL", (math.inf,)),
        ("1.5", "NUMERIC", (1.5,)),
        ("7", "NUMERIC", (7,)),
        ("12", "BLOB", (12,)),
        ("1.5", "BLOB", ("1.5",)),
    ],
)
def test_key_from_single_document_id(
    doc_id: str, column_affinity: str, expected: tuple[object, ...]
) -> None:
    assert same_key(key_from_document_id(doc_id, (column_affinity,)), expected)


def test_key_from_composite_document_id() -> None:
    assert key_from_document_id('[42,"eu"]', ("INTEGER", "TEXT")) == (42, "eu")
    assert key_from_document_id('[1,{"hex":"00ff"}]', ("INTEGER", "BLOB")) == (1, b"\x00\xff")
    with pytest.raises(ValueError):
        key_from_document_id("[1,2,3]", ("INTEGER", "INTEGER"))
    with pytest.raises(ValueError):
        key_from_document_id('{"a":1}', ("INTEGER", "INTEGER"))
    with pytest.raises(ValueError):
        key_from_document_id("not json", ("INTEGER", "INTEGER"))


single_by_affinity = st.one_of(
    st.tuples(st.just("INTEGER"), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.tuples(st.just("TEXT"), st.text()),
    st.tuples(st.just("REAL"), st.floats(allow_nan=False)),
)


@settings(max_examples=examples(200), deadline=None)
@given(single_by_affinity)
def test_property_document_id_inverse_for_single_keys(case: tuple[str, object]) -> None:
    column_affinity, value = case
    key = (value,)
    assert same_key(key_from_document_id(document_id(key), (column_affinity,)), key)


@settings(max_examples=examples(200), deadline=None)
@given(composite_keys)
def test_property_document_id_inverse_for_composite_keys(key: tuple[object, ...]) -> None:
    doc_id = document_id(key)
    assert same_key(key_from_document_id(doc_id, ("BLOB",) * len(key)), key)
