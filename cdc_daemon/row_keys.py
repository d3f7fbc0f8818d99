"""Primary keys: how the triggers write them into the log, and how they become document ids.

Log key: a single-column key is stored as the value itself (the log's `pk` column has no type, so
integers, text, reals and blobs keep their type exactly). A composite key is the text
`quote(a) || ',' || quote(b) ...`, SQLite's own literal syntax, parsed back here; a TEXT part
holding a NUL (where quote() would stop) is written as `t` + the quoted blob of its bytes
(`tX'610062'`), and a REAL part as printf('%!.20e') (`1.0e+00`). SQLite writes every log key
text (log_key_sql): the triggers, and the daemon for the keys it logs itself (backfill, repair,
re-sends), so one key has one text.

Document id: a single-column key is `str(value)` (blobs as lowercase hex). A composite key is the
compact JSON array of its values, e.g. `[42,"eu"]`, with a blob as `{"hex":"00ff"}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from cdc_daemon.database import InvalidText

KeyValue = int | float | str | bytes
Key = tuple[KeyValue, ...]
NOT_UTF8 = "the key is text that is not valid UTF-8"  # the dead letter's reason

_LITERAL = re.compile(
    r"""\s*(?:
        '(?P<text>(?:[^']|'')*)'            # 'text' with '' for a quote
      | t[xX]'(?P<nul_text>[0-9a-fA-F]*)'    # tX'610062': text with a NUL, as its UTF-8 bytes
      | [xX]'(?P<blob>[0-9a-fA-F]*)'         # X'00FF'
      | (?P<number>[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?|[-+]?Inf)
      | (?P<null>NULL)
    )\s*(?P<sep>,|$)""",
    re.VERBOSE,
)


def _key_part_sql(operand: str) -> str:
    # quote() stops a TEXT value at its first NUL: such a value is logged as its bytes instead.
    # typeof() first: instr() on a number would format it as text.
    # A REAL is logged with 21 digits: an older SQLite (3.40 here) quote()s about 1 in 10^4
    # doubles with 15 digits that only its own inexact parser reads back as the value (another
    # value for the daemon: the row is not found); printf('%!.20e') reads back exactly in both.
    return (
        f"CASE WHEN typeof({operand}) = 'text' AND instr({operand}, char(0))"
        f" THEN 't' || quote(CAST({operand} AS BLOB))"
        f" WHEN typeof({operand}) = 'real' THEN printf('%!.20e', {operand})"
        f" ELSE quote({operand}) END"
    )


def log_key_sql(operands: Sequence[str]) -> str:
    """SQL for the log key of the key values `operands` (SQL expressions: `NEW."id"`, `?1`):
    the value itself for one column, the composite key text for more. Only SQL that SQLite
    3.31+ understands (the triggers run inside the app's SQLite)."""
    if len(operands) == 1:
        return operands[0]
    return " || ',' || ".join(_key_part_sql(operand) for operand in operands)


def _text_from_hex(hex_text: str) -> str:
    try:
        return bytes.fromhex(hex_text).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(NOT_UTF8) from None


def parse_quoted_key(text: str, nulls: bool = False) -> Key:
    """Parse `quote(a)||','||quote(b)` (log_key_sql's text) back into values; a NULL part is
    an error unless `nulls` (a dependency entry's join values may be NULL)."""
    values: list[Any] = []
    pos = 0
    while pos < len(text):
        match = _LITERAL.match(text, pos)
        if match is None:
            raise ValueError(f"malformed composite key {text!r}")
        if match["text"] is not None:
            values.append(match["text"].replace("''", "'"))
        elif match["nul_text"] is not None:
            values.append(_text_from_hex(match["nul_text"]))
        elif match["blob"] is not None:
            values.append(bytes.fromhex(match["blob"]))
        elif match["number"] is not None:
            number = match["number"]
            is_int = re.fullmatch(r"[-+]?[0-9]+", number) is not None
            values.append(int(number) if is_int else float(number))
        elif nulls:
            values.append(None)
        else:
            raise ValueError(f"NULL in composite key {text!r}")
        pos = match.end()
        if match["sep"] == "":
            break
    return tuple(values)


def log_key_to_key(log_key: Any, width: int) -> Key:
    if log_key is None:
        # A nullable non-INTEGER key column can hold NULL: such a row has no document id
        # (str(None) would be 'None', another row's key).
        raise ValueError("NULL primary key")
    if isinstance(log_key, InvalidText):  # no id (Typesense ids are UTF-8)
        raise ValueError(NOT_UTF8)
    if width == 1:
        return (log_key,)
    return parse_quoted_key(str(log_key))


def document_id(key: Key) -> str:
    if len(key) == 1:
        value = key[0]
        return value.hex() if isinstance(value, bytes) else str(value)
    return json.dumps(
        [{"hex": v.hex()} if isinstance(v, bytes) else v for v in key],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def affinity(declared_type: str) -> str:
    """SQLite's column affinity rules (https://sqlite.org/datatype3.html, 3.1)."""
    upper = declared_type.upper()
    if "INT" in upper:
        return "INTEGER"
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in upper or not upper:
        return "BLOB"
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def _id_part_to_value(text: str, column_affinity: str) -> KeyValue:
    if column_affinity in ("INTEGER", "NUMERIC", "REAL", "BLOB"):
        if re.fullmatch(r"-?[0-9]+", text):
            return int(text)
        if column_affinity != "BLOB":
            try:
                return float(text)
            except ValueError:
                pass
    return text


def key_from_document_id(doc_id: str, affinities: tuple[str, ...]) -> Key:
    """Best inverse of document_id, used to log orphan documents for deletion."""
    if len(affinities) == 1:
        return (_id_part_to_value(doc_id, affinities[0]),)
    parts = json.loads(doc_id)
    if not isinstance(parts, list) or len(parts) != len(affinities):
        raise ValueError(f"document id {doc_id!r} is not a composite key of {len(affinities)}")
    return tuple(bytes.fromhex(part["hex"]) if isinstance(part, dict) else part for part in parts)
