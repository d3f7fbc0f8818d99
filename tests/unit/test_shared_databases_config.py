"""`databases:` with one collection shared by every database (a `collection` template without
{stem}): a manager is required, each database's ids get `<stem>/` and only the manager manages
the collection; `tenant_field` adds a field holding the database's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdc_daemon.config import Config, parse_config
from cdc_daemon.errors import ConfigError

TYPESENSE = {"nodes": ["http://127.0.0.1:8108"], "api_key": "secret"}


def config(tmp_path: Path, tables: list[dict[str, Any]] | None = None, **databases: Any) -> Config:
    raw: dict[str, Any] = {
        "typesense": TYPESENSE,
        "databases": {"glob": "t/*.db", **databases},
        "tables": tables or [{"table": "books"}],
    }
    return parse_config(raw, tmp_path)


def error_of(tmp_path: Path, **keys: Any) -> str:
    with pytest.raises(ConfigError) as excinfo:
        config(tmp_path, **keys)
    return str(excinfo.value)


def test_a_shared_collection_needs_a_manager(tmp_path: Path) -> None:
    message = error_of(tmp_path, collection="all_{collection}")
    assert "databases.manager" in message and "{stem}" in message


def test_a_manager_without_a_shared_collection_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, manager="acme")
    assert "databases.manager: only for a collection shared" in message


def test_each_database_gets_its_prefix_and_only_the_manager_manages(tmp_path: Path) -> None:
    fleet = config(tmp_path, [{"table": "books", "id_prefix": "b:"}],
                   collection="all_{collection}", manager="acme")
    acme = fleet.for_database(tmp_path / "t" / "acme.db").tables[0]
    beta = fleet.for_database(tmp_path / "t" / "beta.db").tables[0]
    assert (acme.collection, acme.id_prefix, acme.manage_collection) == (
        "all_books", "acme/b:", True)
    assert (beta.collection, beta.id_prefix, beta.manage_collection) == (
        "all_books", "beta/b:", False)


def test_tenant_field_is_a_computed_field_with_the_name(tmp_path: Path) -> None:
    fleet = config(tmp_path, tenant_field="tenant")
    table = fleet.for_database(tmp_path / "t" / "o'brien.db").tables[0]
    assert table.collection == "o'brien_books"
    field = table.fields["tenant"]
    assert (field.type, field.sql) == ("string", "'o''brien'")


def test_tenant_field_clashing_with_a_configured_field_is_refused(tmp_path: Path) -> None:
    tables = [{"table": "books", "fields": {"tenant": {"type": "string", "sql": "'x'"}}}]
    with pytest.raises(ConfigError) as excinfo:
        config(tmp_path, tables, tenant_field="tenant")
    assert "databases.tenant_field: 'tenant' is also tables[0].fields.tenant" in str(excinfo.value)
