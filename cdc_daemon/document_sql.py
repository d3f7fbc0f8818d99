"""The fast path: SQLite builds each row's document as JSON text in the row query itself.

Building documents in Python costs ~5 us each, a large share of the daemon's CPU when it catches
up. The SQL expression here produces the same document (the same fields, the same values) for
rows whose values need none of documents.py's conversions, and NULL for any other row: that
row takes the Python path (rows_by_keys + build_document). A BLOB, a number in a string field, an
integral REAL in an integer field, an int32 out of range, a zero or non-finite REAL: all NULL.
Mappings with a composite key or a soft-delete column have no fast path at all.

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
from cdc_daemon.table_rows import KEYS_PER_SELECT, key_chunks

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


def _value_sql(field: FieldMap) -> tuple[str, str] | None:
    """(condition under which the column needs no conversion, its JSON text), or None."""
    c = quote_ident(field.column)
    kind = field.type
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
    key = quote_ident(mapping.key[0])
    conditions = [f"typeof({key}) IN ('integer', 'text')"]  # a REAL or BLOB id: documents.py
    parts = [f"'{{\"id\":' || json_quote({quote_literal(mapping.id_prefix)} || {key})"]
    for field in mapping.fields:
        value = _value_sql(field)
        if value is None:
            return None
        when, text = value
        c = quote_ident(field.column)
        conditions.append(f"({c} IS NULL OR ({when}))")
        name = quote_literal("," + json.dumps(field.name) + ":")
        parts.append(f"CASE WHEN {c} IS NULL THEN '' ELSE {name} || {text} END")  # NULL: left out
    # CASE evaluates the THEN branch only when every condition holds: json_quote() never sees
    # a BLOB (it would fail the whole statement).
    return f"CASE WHEN {' AND '.join(conditions)} THEN {' || '.join(parts)} || '}}' END"


def fetch_documents(
    conn: apsw.Connection,
    mapping: TableMapping,
    sql: str,
    keys: Sequence[Key],
    chunk: int = KEYS_PER_SELECT,
) -> dict[KeyValue, str | None] | None:
    """The key's value → its document's JSON text, or None for a row that takes the Python
    path; keys with no (matching) row are left out. None when some text is not UTF-8 (then
    all of them go to Python)."""
    key = quote_ident(mapping.key[0])
    found: dict[KeyValue, str | None] = {}
    try:
        for rest, values in key_chunks(mapping, keys, chunk):  # the rows rows_by_keys reads
            found.update(conn.execute(f"SELECT {key}, {sql} {rest}", values))
    except UnicodeDecodeError:
        return None
    return found
