"""Builders shared by the unit tests: tables described by hand, no SQLite file needed."""

from __future__ import annotations

import math
import struct
from typing import Any

from support import ELEMENTS_CONFIG as ELEMENTS_CONFIG  # the seed, re-exported
from support import SERVICE_A_COLLECTION_SCHEMA as SERVICE_A_COLLECTION_SCHEMA

from cdc_daemon.config import TableConfig
from cdc_daemon.database import Column, TableInfo
from cdc_daemon.schema import TableMapping
from cdc_daemon.wiring import mapping_from_config


def table(
    name: str,
    columns: list[tuple[str, str] | tuple[str, str, bool]],
    key: tuple[str, ...],
    unique: tuple[tuple[str, ...], ...] = (),
) -> TableInfo:
    """A TableInfo like Database.table_info would return: (name, declared type[, NOT NULL])."""
    cols = []
    for spec in columns:
        col_name, declared = spec[0], spec[1]
        not_null = bool(spec[2]) if len(spec) > 2 else False
        position = key.index(col_name) + 1 if col_name in key else 0
        cols.append(Column(col_name, declared, not_null, position))
    return TableInfo(name=name, columns=tuple(cols), key=key, unique_indexes=unique)


# The seed's `elements` table (tests/conftest.py ELEMENTS_DDL), as PRAGMA table_xinfo sees it.
ELEMENTS = table(
    "elements",
    [
        ("id", "INTEGER"),
        ("element_type", "VARCHAR", True),
        ("element_id", "INTEGER", True),
        ("sequence_number", "INTEGER", True),
        ("version_number", "INTEGER", True),
        ("comment", "VARCHAR"),
        ("created_at", "DATETIME"),
        ("updated_at", "DATETIME"),
    ],
    key=("id",),
)

def mapping(info: TableInfo, **config: Any) -> TableMapping:
    return mapping_from_config(info, TableConfig(table=info.name, **config), "tables[1]")


def same_value(a: Any, b: Any) -> bool:
    """Equal with the same type; floats bit for bit (so -0.0 != 0.0, inf == inf)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def same_key(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))


def sqlite_key_text(key: tuple[Any, ...]) -> Any:
    """The log key SQLite writes for `key` (keys.log_key_sql, as the triggers and the daemon's
    enqueue_keys do), from an in-memory database."""
    import apsw

    from cdc_daemon.row_keys import log_key_sql

    conn = apsw.Connection(":memory:")
    try:
        operands = [f"?{i}" for i in range(1, len(key) + 1)]
        return conn.execute(f"SELECT {log_key_sql(operands)}", key).fetchone()[0]
    finally:
        conn.close()
