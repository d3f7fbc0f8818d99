"""The seed's `elements` table: its DDL, its table config, the seed's collection schema, and rows
written as the app writes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .app_writer import app_write
from .db import db_rows

REPO = Path(__file__).resolve().parents[2]

ELEMENTS_DDL = (REPO / "config" / "elements.sql").read_text(encoding="utf-8")

# The seed's elements configuration: the table entry of the example config (config/cdc.yaml),
# The example of docs/documents.md under the seed's collection name.
ELEMENTS_CONFIG: dict[str, Any] = yaml.safe_load(
    (REPO / "config" / "cdc.yaml").read_text(encoding="utf-8")
)["tables"][0]

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


def insert_elements(db: Path, ids: range, comment: str = "hello") -> None:
    app_write(db, [[(
        "INSERT INTO elements (id, element_type, element_id, sequence_number, version_number,"
        " comment) VALUES (?, 'note', ?, ?, 1, ?)", [i, i, i, f"{comment} {i}"]
    ) for i in ids]])


def insert_many_elements(db: Path, count: int, start: int = 1, comment: str = "bulk") -> None:
    """`count` elements rows in one app transaction, through one recursive-CTE INSERT."""
    app_write(db, [[(
        "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        " INSERT INTO elements (id, element_type, element_id, sequence_number, version_number,"
        " comment) SELECT i, 'note', i, i, 1, ? || ' ' || i FROM n",
        [start, start + count - 1, comment],
    )]])


def expected_elements(db: Path) -> dict[str, dict[str, Any]]:
    """The documents the elements rows should become (docs/documents.md's mapping)."""
    docs: dict[str, dict[str, Any]] = {}
    columns = ("element_type", "element_id", "sequence_number", "version_number", "comment",
               "created_at", "updated_at")
    for row in db_rows(db, f"SELECT id, {', '.join(columns)} FROM elements"):
        doc: dict[str, Any] = {"id": str(row[0])}
        doc.update({c: v for c, v in zip(columns, row[1:], strict=True) if v is not None})
        docs[doc["id"]] = doc
    return docs
