"""Scale-out config and mapping: nearest_node, collection_prefix, id_prefix, manage_collection,
and which collections another host manages our documents fit (pure parts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdc_daemon.config import TableConfig, parse_config
from cdc_daemon.documents import build_document
from cdc_daemon.errors import ConfigError
from cdc_daemon.schema import fit_problems
from cdc_daemon.wiring import mapping_from_config

from .helpers import ELEMENTS, ELEMENTS_CONFIG, mapping, table

BASE: dict[str, Any] = {
    "database": "app.db",
    "typesense": {"nodes": ["http://10.0.0.1:8108", "http://10.0.0.2:8108/"], "api_key": "k"},
    "tables": [{"table": "elements"}],
}


def parse(**changes: Any) -> Any:
    raw: dict[str, Any] = {**BASE, "typesense": dict(BASE["typesense"])}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            raw[section] = {**raw[section], name: value}
        else:
            raw[section] = value
    return parse_config(raw, base_dir=Path("/etc/cdc-daemon"))


def test_defaults_change_nothing() -> None:
    config = parse()
    assert config.typesense.nodes == ["http://10.0.0.1:8108", "http://10.0.0.2:8108"]
    assert config.typesense.nearest_node is None
    assert config.typesense.collection_prefix == ""
    assert config.tables[0].id_prefix is None
    assert config.tables[0].manage_collection is True


def test_nearest_node_is_a_url() -> None:
    assert parse(typesense__nearest_node="http://127.0.0.1:8108/").typesense.nearest_node == (
        "http://127.0.0.1:8108"
    )
    with pytest.raises(ConfigError, match=r"typesense\.nearest_node: .*http://"):
        parse(typesense__nearest_node="127.0.0.1:8108")


@pytest.mark.parametrize("prefix", ["host1:", "eu-west/7|", "a_"])
def test_id_prefix_ending_with_a_separator(prefix: str) -> None:
    config = parse(tables=[{"table": "elements", "id_prefix": prefix}])
    assert config.tables[0].id_prefix == prefix


@pytest.mark.parametrize("prefix", ["host1", "a`b:", ""])
def test_id_prefix_that_could_start_another_hosts_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"tables\[0\]\.id_prefix"):
        parse(tables=[{"table": "elements", "id_prefix": prefix}])


def test_manage_collection_must_be_a_bool() -> None:
    assert (
        not parse(tables=[{"table": "elements", "manage_collection": False, "id_prefix": "b:"}])
        .tables[0]
        .manage_collection
    )
    with pytest.raises(ConfigError, match=r"tables\[0\]\.manage_collection"):
        parse(tables=[{"table": "elements", "manage_collection": "maybe"}])


def test_a_following_host_needs_its_own_id_prefix() -> None:
    # Without one, its documents take the managing host's ids: its rows overwrite, and its
    # deletes remove, that host's documents.
    with pytest.raises(ConfigError, match=r"tables\[0\].*needs this host's own id_prefix"):
        parse(tables=[{"table": "elements", "manage_collection": False}])


def test_collection_prefix_applies_to_every_collection_name() -> None:
    config = TableConfig(**ELEMENTS_CONFIG)
    plain = mapping_from_config(ELEMENTS, config)
    prefixed = mapping_from_config(ELEMENTS, config, collection_prefix="app1_")
    assert plain.collection == "service_a_collection"
    assert prefixed.collection == "app1_service_a_collection"
    assert prefixed.collection_schema()["name"] == "app1_service_a_collection"
    assert (
        prefixed.collection_schema("app1_service_a_collection__v2")["fields"]
        == (plain.collection_schema()["fields"])
    )
    default_name = mapping_from_config(
        ELEMENTS, TableConfig(table="elements"), collection_prefix="p_"
    )
    assert default_name.collection == "p_elements"


def test_id_prefix_goes_in_front_of_every_document_id() -> None:
    m = mapping(ELEMENTS, id_prefix="host1:")
    row = (7, "note", 7, 7, 1, None, None, None)
    assert build_document(m, row)["id"] == "host1:7"
    assert m.doc_id((7,)) == "host1:7"
    assert m.key_of("host1:7") == (7,)
    assert m.key_of("host2:7") is None  # another host's document
    assert m.key_of("7") is None


def test_id_prefix_with_a_composite_key() -> None:
    info = table("t", [("a", "INTEGER", True), ("b", "TEXT", True)], key=("a", "b"))
    m = mapping(info, id_prefix="eu:")
    assert m.doc_id((42, "x")) == 'eu:[42,"x"]'
    assert m.key_of('eu:[42,"x"]') == (42, "x")
    assert m.key_of('us:[42,"x"]') is None


def test_without_id_prefix_ids_are_unchanged() -> None:
    m = mapping(ELEMENTS)
    assert m.doc_id((7,)) == "7"
    assert m.key_of("7") == (7,)


def collection(*fields: dict[str, Any]) -> dict[str, Any]:
    return {"name": "shared__v1", "fields": [{"name": "id", "type": "string"}, *fields]}


def test_documents_fit_the_same_schema() -> None:
    schema = mapping(ELEMENTS).collection_schema()
    assert fit_problems(schema, {"name": "x", "fields": schema["fields"]}) == []


# This host's schema in the two tests below.
OURS = {
    "name": "s",
    "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "int64", "optional": True}],
}


def test_fields_the_collection_lacks_or_indexes_differently_still_fit() -> None:
    theirs = collection(
        {"name": "a", "type": "string", "facet": True},  # the managing host's choice
        {"name": "c", "type": "string", "optional": True},  # we never send it: fine
    )
    assert fit_problems(OURS, theirs) == []


def test_what_does_not_fit() -> None:
    theirs = collection(
        {"name": "a", "type": "int64"},
        {"name": "b", "type": "int64"},
        {"name": "d", "type": "string"},
    )
    problems = fit_problems(OURS, theirs)
    assert problems == [
        "field 'a' is int64 there, string here",
        "field 'b' is required there but optional here",
        "the collection requires field 'd', which the table lacks",
    ]
