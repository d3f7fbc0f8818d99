"""Builders shared by the unit tests: tables described by hand, no SQLite file needed."""

from __future__ import annotations

import math
import struct
from typing import Any

from cdc_daemon.config import TableConfig
from cdc_daemon.database import Column, TableInfo
from cdc_daemon.schema import TableMapping, build_mapping


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

# The seed's elements configuration (interface.md's example, under the seed's collection name).
ELEMENTS_CONFIG: dict[str, Any] = {
    "table": "elements",
    "collection": "service_a_collection",
    "fields": {
        "element_id": {"type": "int32"},
        "sequence_number": {"type": "int32"},
        "version_number": {"type": "int32"},
        "created_at": {"facet": True},
        "updated_at": {"facet": True},
    },
    "default_sorting_field": "sequence_number",
}

# The seed's SERVICE_A_COLLECTION_SCHEMA without its `id` entry (Typesense's document id, which
# is not a schema field in ours), in the seed's order.
SERVICE_A_COLLECTION_SCHEMA: dict[str, Any] = {
    "name": "service_a_collection",
    "fields": [
        {"name": "element_type", "type": "string"},
        {"name": "element_id", "type": "int32"},
        {"name": "sequence_number", "type": "int32"},
        {"name": "version_number", "type": "int32"},
        {"name": "comment", "type": "string", "optional": True},
        {"name": "created_at", "type": "string", "facet": True, "optional": True},
        {"name": "updated_at", "type": "string", "facet": True, "optional": True},
    ],
    "default_sorting_field": "sequence_number",
}


def mapping(info: TableInfo, **config: Any) -> TableMapping:
    return build_mapping(info, TableConfig(table=info.name, **config), where="tables[1]")


def same_value(a: Any, b: Any) -> bool:
    """Equal with the same type; floats bit for bit (so -0.0 != 0.0, inf == inf)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def same_key(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
