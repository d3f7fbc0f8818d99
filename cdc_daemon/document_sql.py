"""The fast path: SQLite builds each row's document as JSON text in the row query itself.

Building documents in Python costs ~5 us each, a large share of the daemon's CPU when it catches
up. The SQL expression here produces the same document (the same fields, the same values) for
rows whose values need none of documents.py's conversions, and NULL for any other row: that
row takes the Python path (rows_by_keys + build_document). A BLOB, a number in a string field, an
integral REAL in an integer field, an int32 out of range, a zero or non-finite REAL: all NULL.
Mappings with a composite key or a soft-delete column have no fast path at all, nor those with
a field of another type (arrays, geopoint, objects).

Computed fields (`sql:`) are evaluated once per row: the row query runs as a MATERIALIZED common
table expression and the document is built from its columns (each referenced several times here;
referenced in place, a correlated subquery would run once per reference). A field that must not
be NULL makes a NULL row take the Python path, which rejects it. An expression that fails on a
row sends the whole lookup to the Python path, which fails that row alone (table_rows).

The text may hold non-ASCII characters as UTF-8 (json_quote() does not escape them): the sink
escapes them when it encodes the import body (sink.ascii_json_body).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache

import apsw

from cdc_daemon.database import quote_ident, quote_literal
from cdc_daemon.row_keys import Key, KeyValue
from cdc_daemon.schema import FieldMap, TableMapping
from cdc_daemon.table_rows import KEYS_PER_SELECT, ROW_QUERY_ERRORS, key_chunks

INT32 = "BETWEEN -2147483648 AND 2147483647"
FINITE = "BETWEEN -1.7976931348623157e308 AND 1.7976931348623157e308"  # Inf is 9.0e+999


@cache
def _sqlite_writes_exact_reals() -> bool:
    """json_quote() of a REAL must read back as the same double (older SQLite used 15 digits)."""
    probes = (0.1 + 0.2, 1 / 3, 5e-324, 1.7976931348623157e308, 123456789.12345679, -2.5e-10)
    conn = apsw.Connection(":memory:")
    try:
        return all(
            float(str(conn.execute("SELECT json_quote(?)", (value,)).fetchall()[0][0])) == value
            for value in probes
        )
    finally:
        conn.close()


# Array type → the condition each element (json_each's `type` and `value`) meets as it is.
ARRAY_ELEMENTS = {
    "string[]": "type = 'text'",
    # `true` is an integer value too; a literal beyond int64 is read as a REAL.
    "int64[]": "type = 'integer' AND typeof(value) = 'integer'",
    "int32[]": f"type = 'integer' AND typeof(value) = 'integer' AND value {INT32}",
    "bool[]": "type IN ('true', 'false')",
}


def _value_sql(field: FieldMap, c: str) -> tuple[str, str] | None:
    """(condition under which the value `c` (SQL) needs no conversion, its JSON text), or
    None."""
    kind = field.type
    if kind in ARRAY_ELEMENTS:  # JSON array text whose elements all fit: sent as it is
        when = (
            f"typeof({c}) = 'text' AND json_valid({c}) AND json_type({c}) = 'array'"
            f" AND NOT EXISTS (SELECT 1 FROM json_each({c}) WHERE NOT ({ARRAY_ELEMENTS[kind]}))"
        )
        return when, f"json({c})"
    if kind == "string":
        return f"typeof({c}) = 'text'", f"json_quote({c})"
    if kind == "int64":
        return f"typeof({c}) = 'integer'", f"{c}"
    if kind == "int32":
        return f"typeof({c}) = 'integer' AND {c} {INT32}", f"{c}"
    if kind == "bool":
        when = f"typeof({c}) = 'integer' AND {c} IN (0, 1)"
        return when, f"CASE {c} WHEN 1 THEN 'true' ELSE 'false' END"
    if kind == "float" and _sqlite_writes_exact_reals():
        # Zero is left to Python: json_quote(-0.0) loses the sign.
        return f"typeof({c}) = 'real' AND {c} <> 0 AND {c} {FINITE}", f"json_quote({c})"
    return None


def document_sql(mapping: TableMapping) -> str | None:
    """SQL for the document of the row, as JSON text, or NULL when a value needs converting;
    None when the mapping has no fast path."""
    if len(mapping.key) != 1 or mapping.soft_delete is not None:
        return None
    key, values = _references(mapping)
    conditions = [f"typeof({key}) IN ('integer', 'text')"]  # a REAL or BLOB id: documents.py
    parts = [f"'{{\"id\":' || json_quote({quote_literal(mapping.id_prefix)} || {key})"]
    for field, c in zip(mapping.fields, values, strict=True):
        value = _value_sql(field, c)
        if value is None:
            return None
        when, text = value
        conditions.append(f"({c} IS NULL OR ({when}))" if field.optional else f"({when})")
        name = quote_literal("," + json.dumps(field.name) + ":")
        parts.append(f"CASE WHEN {c} IS NULL THEN '' ELSE {name} || {text} END")  # NULL: left out
    # CASE evaluates the THEN branch only when every condition holds: json_quote() never sees
    # a BLOB (it would fail the whole statement).
    return f"CASE WHEN {' AND '.join(conditions)} THEN {' || '.join(parts)} || '}}' END"


def _references(mapping: TableMapping) -> tuple[str, list[str]]:
    """How the document's SQL names the key and each field's value: the table's columns, or,
    with computed fields, the columns `k`, `v0`, `v1`... of the materialized row query."""
    if not mapping.computed_fields:
        return quote_ident(mapping.key[0]), [quote_ident(f.column) for f in mapping.fields]
    return "k", [f"v{i}" for i in range(len(mapping.fields))]


def _lookup_sql(mapping: TableMapping, sql: str, rest: str) -> str:
    """`SELECT <key>, <document> <rest>`, the row query materialized first when it computes
    fields (MATERIALIZED: never flattened into the outer query, so never evaluated twice)."""
    if not mapping.computed_fields:
        return f"SELECT {quote_ident(mapping.key[0])}, {sql} {rest}"
    values = ", ".join(f"{f.selected} AS v{i}" for i, f in enumerate(mapping.fields))
    key = quote_ident(mapping.key[0])
    return f"WITH r AS MATERIALIZED (SELECT {key} AS k, {values} {rest}) SELECT k, {sql} FROM r"


def fetch_documents(
    conn: apsw.Connection,
    mapping: TableMapping,
    sql: str,
    keys: Sequence[Key],
    chunk: int = KEYS_PER_SELECT,
) -> dict[KeyValue, str | None] | None:
    """The key's value → its document's JSON text, or None for a row that takes the Python
    path; keys with no (matching) row are left out. None when some text is not UTF-8, or when
    a computed field's expression fails on a row (then all of them go to Python)."""
    found: dict[KeyValue, str | None] = {}
    try:
        for rest, values in key_chunks(mapping, keys, chunk):  # the rows rows_by_keys reads
            found.update(conn.execute(_lookup_sql(mapping, sql, rest), values))
    except UnicodeDecodeError:
        return None
    except ROW_QUERY_ERRORS:
        if not mapping.computed_fields:
            raise  # the table's trouble (its `where`, the table gone): the sync skips it
        return None
    return found
