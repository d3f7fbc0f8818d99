"""Row → document (pure). Values are converted by fixed rules; what can't be sent: DocumentError.

Rules (also in the README):
- NULL leaves the field out.
- int32/int64 fields: integers as they are; an integral REAL becomes an int; int32 values outside
  ±2^31 and int64 values outside ±2^63 are rejected (Typesense would silently truncate).
- NaN and ±Infinity are rejected whatever the field type (JSON has no such value).
- float fields: integers become floats.
- bool fields: 0/1 become false/true.
- string fields: numbers become their decimal text; BLOBs become base64 text. A BLOB in a
  field of any other type is rejected.
- object / object[] fields: the column holds JSON text, sent parsed; it must be a JSON object (an
  array of objects for object[]), without NaN/Infinity, nested at most MAX_JSON_DEPTH deep.
- A NULL in the primary key (nullable non-INTEGER key columns allow it) is rejected.
- Anything else is sent unchanged, and Typesense decides (e.g. text in an INTEGER column is
  rejected by Typesense and dead-lettered after max_attempts).
- A document whose JSON line is longer than MAX_DOCUMENT_BYTES is rejected (size_problem; the
  sync step checks every line, whichever path built it).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from typing import Any

from cdc_daemon.errors import DocumentError
from cdc_daemon.row_keys import Key
from cdc_daemon.schema import OBJECT_TYPES, FieldMap, TableMapping

INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
# Field type → the value type that needs no conversion (SQLite's integers always fit an int64).
_AS_IS = {"string": str, "int64": int}
# The largest document one import carries, as sent (JSON, non-ASCII escaped). Bigger ones are
# that row's failure: 0.24.1 takes ~4.5 s to index 16 MiB of words, well inside the default
# 30 s request timeout; a 110 MB text timed out, was retried forever and blocked the table.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
# Deeper JSON in an object field is refused: Python's own parsers and encoders stop near 1,000
# levels (RecursionError), and no search needs more.
MAX_JSON_DEPTH = 100


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json.loads accepts NaN/Infinity by default


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (a scalar: 0)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


def _json_object(field: FieldMap, value: Any) -> Any:
    """An object / object[] field's value: the column's JSON text, parsed and checked."""
    where = f"column {field.column!r}"
    if not isinstance(value, str):
        raise DocumentError(f"{where}: {type(value).__name__} is not JSON text for {field.type}")
    try:
        parsed = json.loads(value, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise DocumentError(f"{where}: not valid JSON for {field.type} ({exc})") from None
    if field.type == "object":
        fits = isinstance(parsed, dict)
    else:
        fits = isinstance(parsed, list) and all(isinstance(item, dict) for item in parsed)
    if not fits:
        wanted = "an object" if field.type == "object" else "an array of objects"
        raise DocumentError(f"{where}: JSON {type(parsed).__name__} is not {wanted}")
    if _depth(parsed) > MAX_JSON_DEPTH:
        raise DocumentError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return parsed


def sent_size(line: str) -> int:
    """Bytes of a document's JSON line in an import body, where each non-ASCII character is a
    \\uXXXX escape, two for one beyond the BMP (sink.ascii_json_body); three C-speed passes."""
    if line.isascii():
        return len(line)
    ascii_chars = len(line.encode("ascii", "ignore"))
    beyond_bmp = len(line.encode("utf-16-le", "surrogatepass")) // 2 - len(line)
    return ascii_chars + 6 * (len(line) - ascii_chars) + 6 * beyond_bmp


def size_problem(line: str) -> str | None:
    """Why a document's JSON line is too large to send (None: it is not). Most lines are
    answered by their length alone: no character takes more than 12 bytes when sent."""
    if len(line) * 12 <= MAX_DOCUMENT_BYTES:
        return None
    size = sent_size(line)
    if size <= MAX_DOCUMENT_BYTES:
        return None
    return (
        f"the document is {size} bytes of JSON, more than the {MAX_DOCUMENT_BYTES} bytes"
        " (16 MiB) one document may have"
    )


def _convert(field: FieldMap, value: Any) -> Any:
    kind = field.type
    # JSON has neither non-finite numbers nor bytes: the sink's json.dumps would fail the batch.
    if isinstance(value, float) and not math.isfinite(value):
        raise DocumentError(f"column {field.column!r}: {value} cannot be sent (not finite)")
    if isinstance(value, bytes) and kind != "string":
        raise DocumentError(f"column {field.column!r}: a BLOB cannot be sent as {kind}")
    if kind in OBJECT_TYPES:
        return _json_object(field, value)
    if kind in INT_RANGES:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            low, high = INT_RANGES[kind]
            if not low <= value <= high:
                raise DocumentError(f"column {field.column!r}: {value} is out of range for {kind}")
        return value
    if kind == "float":
        return float(value) if isinstance(value, int) else value
    if kind == "bool":
        return bool(value) if isinstance(value, int) and value in (0, 1) else value
    if kind == "string":
        if isinstance(value, bytes):
            return base64.b64encode(value).decode("ascii")
        if isinstance(value, int | float):
            return str(value)
    return value


def row_is_live(mapping: TableMapping, row: Sequence[Any]) -> bool:
    """False when the soft-delete column holds a truthy value: the document must go."""
    if mapping.soft_delete is None:
        return True
    flag = row[-1]
    if isinstance(flag, str):
        return flag.strip().lower() in ("", "0", "false", "no", "f", "n")
    return not flag


def row_key(mapping: TableMapping, row: Sequence[Any]) -> Key:
    return tuple(row[: len(mapping.key)])


def build_document(mapping: TableMapping, row: Sequence[Any]) -> dict[str, Any]:
    """The document for a row SELECTed as `mapping.columns`."""
    key = row_key(mapping, row)
    if any(value is None for value in key):
        raise DocumentError(f"NULL in the primary key {mapping.key} of {mapping.table!r}")
    document: dict[str, Any] = {"id": mapping.doc_id(key)}
    for field, value in zip(mapping.fields, row[len(mapping.key) :], strict=False):  # + soft_delete
        if value is None:
            continue
        if type(value) is _AS_IS.get(field.type):  # the common case, ~5x cheaper than _convert
            document[field.name] = value
        else:
            document[field.name] = _convert(field, value)
    return document
