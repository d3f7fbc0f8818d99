"""Row → document (pure). Values are converted by fixed rules; what can't be sent: DocumentError.

Rules (also in the README); they apply alike to columns and computed fields (`sql:`):
- NULL leaves the field out; in a field that is not optional it is rejected (`field 'x' is
  NULL but not optional`). Key and NOT NULL columns are never NULL; a computed field is not
  optional unless configured so.
- int32/int64 fields: integers as they are; an integral REAL becomes an int; int32 values outside
  ±2^31 and int64 values outside ±2^63 are rejected (Typesense would silently truncate).
- NaN and ±Infinity are rejected whatever the field type (JSON has no such value).
- float fields: integers become floats.
- bool fields: 0/1 become false/true.
- string fields: numbers become their decimal text; BLOBs become base64 text. A BLOB in a
  field of any other type is rejected.
- object / object[] fields: the column holds JSON text, sent parsed; it must be a JSON object (an
  array of objects for object[]), without NaN/Infinity, nested at most MAX_JSON_DEPTH deep.
- string[] / int32[] / int64[] / float[] / bool[] fields: JSON array text, sent parsed; each
  element follows the scalar rules above (ints range-checked, an integral REAL becomes an int,
  numbers become text in string[], 0/1 become false/true in bool[]); a JSON null element is
  dropped; any other element (a nested array or object, true in a number array) is rejected.
- geopoint fields: JSON text `[lat, lng]` (`json_array(lat, lng)`): two finite numbers, lat
  within ±90, lng within ±180.
- A computed field whose expression failed on the row (an ExpressionFailed in the row) is
  rejected, naming the field and SQLite's message.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ExpressionFailed:
    """In a row read by table_rows, the value of a computed field whose expression failed on
    that row: `error` is SQLite's message. build_document rejects the row, naming the field."""

    error: str


def _label(field: FieldMap) -> str:
    """How a message names a field: the config key it comes from (a column, or a computed
    field's own name)."""
    return f"field {field.name!r}" if field.sql is not None else f"column {field.column!r}"


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
    where = _label(field)
    parsed = _parsed_json(field, value)
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


def _parsed_json(field: FieldMap, value: Any) -> Any:
    """A field's JSON text, parsed (NaN and Infinity refused)."""
    if not isinstance(value, str):
        raise DocumentError(
            f"{_label(field)}: {type(value).__name__} is not JSON text for {field.type}"
        )
    try:
        return json.loads(value, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise DocumentError(f"{_label(field)}: not valid JSON for {field.type} ({exc})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and type(value) is not bool


def _int_element(kind: str) -> Callable[[Any], Any]:
    low, high = INT_RANGES[kind]

    def element(item: Any) -> Any:
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        if type(item) is not int or not low <= item <= high:
            raise ValueError(f"{item!r} is not an {kind}")
        return item

    return element


def _float_element(item: Any) -> Any:
    if not _is_number(item) or not math.isfinite(item):  # json.loads reads 1e999 as inf
        raise ValueError(f"{item!r} is not a finite number")
    return float(item)


def _bool_element(item: Any) -> Any:
    if type(item) is bool:
        return item
    if type(item) is int and item in (0, 1):
        return bool(item)
    raise ValueError(f"{item!r} is not a bool")


def _string_element(item: Any) -> Any:
    if isinstance(item, str):
        return item
    if _is_number(item):
        return str(item)
    raise ValueError(f"{item!r} is not a string")


_ELEMENTS: dict[str, Callable[[Any], Any]] = {
    "string[]": _string_element,
    "int32[]": _int_element("int32"),
    "int64[]": _int_element("int64"),
    "float[]": _float_element,
    "bool[]": _bool_element,
}


def _json_array(field: FieldMap, value: Any) -> list[Any]:
    """A scalar array field's value: JSON array text, each element converted (nulls dropped)."""
    parsed = _parsed_json(field, value)
    if not isinstance(parsed, list):
        raise DocumentError(f"{_label(field)}: JSON {type(parsed).__name__} is not an array")
    element = _ELEMENTS[field.type]
    try:
        return [element(item) for item in parsed if item is not None]
    except ValueError as exc:
        raise DocumentError(f"{_label(field)}: {exc} (in a {field.type})") from None


def _geopoint(field: FieldMap, value: Any) -> list[Any]:
    """A geopoint's value: JSON text `[lat, lng]`, both finite numbers in range."""
    parsed = _parsed_json(field, value)
    if not (isinstance(parsed, list) and len(parsed) == 2 and all(map(_is_number, parsed))):
        raise DocumentError(f"{_label(field)}: {value!r} is not [lat, lng] (two numbers)")
    lat, lng = parsed
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        raise DocumentError(
            f"{_label(field)}: {value!r} is out of range (lat within ±90, lng within ±180)"
        )
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
    if isinstance(value, ExpressionFailed):
        raise DocumentError(f"field {field.name!r}: its sql failed on this row: {value.error}")
    # JSON has neither non-finite numbers nor bytes: the sink's json.dumps would fail the batch.
    if isinstance(value, float) and not math.isfinite(value):
        raise DocumentError(f"{_label(field)}: {value} cannot be sent (not finite)")
    if isinstance(value, bytes) and kind != "string":
        raise DocumentError(f"{_label(field)}: a BLOB cannot be sent as {kind}")
    if kind in OBJECT_TYPES:
        return _json_object(field, value)
    if kind in _ELEMENTS:
        return _json_array(field, value)
    if kind == "geopoint":
        return _geopoint(field, value)
    if kind in INT_RANGES:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            low, high = INT_RANGES[kind]
            if not low <= value <= high:
                raise DocumentError(f"{_label(field)}: {value} is out of range for {kind}")
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


def field_value(field: FieldMap, value: Any) -> Any:
    """One field's value as sent (None: left out), as build_document makes it; DocumentError
    when it can't be sent (`check` asks field by field)."""
    if value is None:
        if not field.optional:
            raise DocumentError(f"field {field.name!r} is NULL but not optional")
        return None
    return _convert(field, value)


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
    """The document for a row SELECTed as `mapping.select_list()`."""
    key = row_key(mapping, row)
    if any(value is None for value in key):
        raise DocumentError(f"NULL in the primary key {mapping.key} of {mapping.table!r}")
    document: dict[str, Any] = {"id": mapping.doc_id(key)}
    for field, value in zip(mapping.fields, row[len(mapping.key) :], strict=False):  # + soft_delete
        if value is None:
            if not field.optional:
                raise DocumentError(f"field {field.name!r} is NULL but not optional")
            continue
        if type(value) is _AS_IS.get(field.type):  # the common case, ~5x cheaper than _convert
            document[field.name] = value
        else:
            document[field.name] = _convert(field, value)
    return document
