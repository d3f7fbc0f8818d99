"""schema.py: declared types → Typesense types, table + config → mapping, schema comparison."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cdc_daemon.errors import ConfigError
from cdc_daemon.schema import (
    added_optional_fields,
    derived_type,
    fit_problems,
    schema_differences,
)

from .helpers import ELEMENTS, ELEMENTS_CONFIG, SERVICE_A_COLLECTION_SCHEMA, mapping, table


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        # INTEGER/INT → int64
        ("INTEGER", "int64"),
        ("INT", "int64"),
        ("integer", "int64"),
        ("BIGINT", "int64"),
        ("TINYINT", "int64"),
        ("SMALLINT", "int64"),
        ("UNSIGNED BIG INT", "int64"),
        ("INT8", "int64"),
        # REAL/FLOAT/DOUBLE/NUMERIC/DECIMAL → float
        ("REAL", "float"),
        ("FLOAT", "float"),
        ("DOUBLE", "float"),
        ("DOUBLE PRECISION", "float"),
        ("real", "float"),
        ("NUMERIC", "float"),
        ("DECIMAL", "float"),
        ("DECIMAL(10,5)", "float"),
        # BOOL/BOOLEAN → bool
        ("BOOL", "bool"),
        ("BOOLEAN", "bool"),
        ("boolean", "bool"),
        # DATE/DATETIME/TIMESTAMP → string (the stored text)
        ("DATE", "string"),
        ("DATETIME", "string"),
        ("TIMESTAMP", "string"),
        # TEXT/CHAR/CLOB → string
        ("TEXT", "string"),
        ("CHAR", "string"),
        ("VARCHAR", "string"),
        ("VARCHAR(255)", "string"),
        ("CHARACTER(20)", "string"),
        ("NVARCHAR(100)", "string"),
        ("NATIVE CHARACTER(70)", "string"),
        ("CLOB", "string"),
        # no declared type → string
        ("", "string"),
        # BLOB → left out
        ("BLOB", None),
        ("blob", None),
    ],
)
def test_derived_type(declared: str, expected: str | None) -> None:
    assert derived_type(declared) == expected


# -- the seed ------------------------------------------------------------------------------------


def test_seed_elements_table_gives_exactly_the_seed_collection_schema() -> None:
    result = mapping(ELEMENTS, **{k: v for k, v in ELEMENTS_CONFIG.items() if k != "table"})
    assert result.collection_schema() == SERVICE_A_COLLECTION_SCHEMA
    assert result.key == ("id",)
    assert result.key_affinities == ("INTEGER",)
    assert result.select_list() == (
        '"id"',
        '"element_type"',
        '"element_id"',
        '"sequence_number"',
        '"version_number"',
        '"comment"',
        '"created_at"',
        '"updated_at"',
    )


def test_seed_elements_without_overrides_uses_the_interface_defaults() -> None:
    schema = mapping(ELEMENTS).collection_schema()
    assert schema == {
        "name": "elements",
        "fields": [
            {"name": "element_type", "type": "string"},
            {"name": "element_id", "type": "int64"},
            {"name": "sequence_number", "type": "int64"},
            {"name": "version_number", "type": "int64"},
            {"name": "comment", "type": "string", "optional": True},
            {"name": "created_at", "type": "string", "optional": True},
            {"name": "updated_at", "type": "string", "optional": True},
        ],
    }


def test_collection_schema_can_take_another_name() -> None:
    assert mapping(ELEMENTS).collection_schema("elements_v2")["name"] == "elements_v2"


# -- which columns become fields -----------------------------------------------------------------

ITEMS = table(
    "items",
    [
        ("sku", "TEXT"),
        ("region", "TEXT"),
        ("price", "REAL", True),
        ("qty", "INTEGER", True),
        ("note", "TEXT"),
        ("photo", "BLOB"),
        ("deleted", "BOOLEAN"),
    ],
    key=("sku", "region"),
)


def field_names(m: Any) -> list[str]:
    return [f.name for f in m.fields]


def test_composite_key_columns_are_fields_and_required_even_without_not_null() -> None:
    m = mapping(ITEMS)
    assert field_names(m) == ["sku", "region", "price", "qty", "note", "deleted"]
    by_name = {f.name: f for f in m.fields}
    assert not by_name["sku"].optional and not by_name["region"].optional
    assert not by_name["price"].optional and by_name["note"].optional
    assert by_name["deleted"].type == "bool"
    assert m.key_affinities == ("TEXT", "TEXT")


def test_single_column_key_named_id_is_the_document_id_not_a_field() -> None:
    m = mapping(table("t", [("id", "TEXT"), ("name", "TEXT")], key=("id",)))
    assert field_names(m) == ["name"]
    assert m.select_list() == ('"id"', '"name"')


def test_single_column_key_not_named_id_is_a_field() -> None:
    m = mapping(table("t", [("code", "INTEGER"), ("name", "TEXT")], key=("code",)))
    assert field_names(m) == ["code", "name"]
    assert m.fields[0].type == "int64" and not m.fields[0].optional


@pytest.mark.parametrize(
    "info",
    [
        table("t", [("id", "INTEGER"), ("region", "TEXT")], key=("id", "region")),
        table("t", [("pk", "INTEGER"), ("id", "TEXT")], key=("pk",)),
    ],
    ids=["composite key with id", "non-key column id"],
)
def test_a_column_named_id_that_is_not_the_whole_key_must_be_renamed(info: Any) -> None:
    with pytest.raises(ConfigError, match=r"tables\[1\]\.rename"):
        mapping(info)
    renamed = mapping(info, rename={"id": "legacy_id"})
    assert "legacy_id" in field_names(renamed) and "id" not in field_names(renamed)
    assert "id" not in field_names(mapping(info, exclude=["id"]))


def test_blob_columns_are_left_out_unless_configured() -> None:
    assert "photo" not in field_names(mapping(ITEMS))
    included = mapping(ITEMS, include=["sku", "photo"])
    assert field_names(included) == ["sku", "photo"]
    assert included.fields[1].type == "string" and included.fields[1].optional
    typed = mapping(ITEMS, fields={"photo": {"type": "string", "index": False}})
    photo = next(f for f in typed.fields if f.name == "photo")
    assert photo.type == "string" and not photo.index


def test_blob_column_with_a_field_override_but_no_type_is_included_as_string() -> None:
    m = mapping(ITEMS, fields={"photo": {"optional": True, "index": False}})
    photo = next(f for f in m.fields if f.column == "photo")
    assert photo.type == "string" and photo.schema() == {
        "name": "photo",
        "type": "string",
        "optional": True,
        "index": False,
    }


def test_include_limits_fields_but_the_key_still_identifies_rows() -> None:
    m = mapping(ITEMS, include=["price", "note"])
    assert field_names(m) == ["price", "note"]
    assert m.key == ("sku", "region")
    assert m.select_list() == ('"sku"', '"region"', '"price"', '"note"')


def test_exclude_and_rename() -> None:
    m = mapping(ITEMS, exclude=["note", "deleted"], rename={"qty": "quantity", "sku": "SKU"})
    assert field_names(m) == ["SKU", "region", "price", "quantity"]
    assert [f.column for f in m.fields] == ["sku", "region", "price", "qty"]


def test_field_overrides_win() -> None:
    m = mapping(
        ITEMS,
        fields={
            "qty": {"type": "int32", "facet": True, "sort": False},
            "price": {"optional": True},
            "note": {"optional": False, "locale": "ja", "index": False},
            "deleted": {"type": "string"},
        },
    )
    by_name = {f.name: f.schema() for f in m.fields}
    assert by_name["qty"] == {"name": "qty", "type": "int32", "facet": True, "sort": False}
    assert by_name["price"] == {"name": "price", "type": "float", "optional": True}
    assert by_name["note"] == {"name": "note", "type": "string", "index": False, "locale": "ja"}
    assert by_name["deleted"] == {"name": "deleted", "type": "string", "optional": True}


def test_where_soft_delete_and_collection_name_are_carried() -> None:
    m = mapping(ITEMS, where="qty > 0", soft_delete="deleted", collection="shop_items")
    assert m.where == "qty > 0" and m.soft_delete == "deleted"
    assert m.collection == "shop_items" and m.table == "items"
    assert m.select_list()[-1] == '"deleted"'  # the flag is read last
    assert mapping(ITEMS).collection == "items"


def test_default_sorting_field_by_column_or_field_name() -> None:
    by_column = mapping(ITEMS, rename={"qty": "quantity"}, default_sorting_field="qty")
    assert by_column.collection_schema()["default_sorting_field"] == "quantity"
    by_field = mapping(ITEMS, rename={"qty": "quantity"}, default_sorting_field="quantity")
    assert by_field.default_sorting_field == "quantity"
    assert mapping(ITEMS, default_sorting_field="price").default_sorting_field == "price"
    assert "default_sorting_field" not in mapping(ITEMS).collection_schema()


@pytest.mark.parametrize(
    ("config", "path", "words"),
    [
        ({"default_sorting_field": "nope"}, "tables[1].default_sorting_field", "not a field"),
        ({"default_sorting_field": "note"}, "tables[1].default_sorting_field", "numeric"),
        ({"default_sorting_field": "deleted"}, "tables[1].default_sorting_field", "numeric"),
        (
            {"default_sorting_field": "qty", "fields": {"qty": {"optional": True}}},
            "tables[1].default_sorting_field",
            "optional",
        ),
        (
            {"default_sorting_field": "qty", "exclude": ["qty"]},
            "tables[1].default_sorting_field",
            "not a field",
        ),
        ({"include": ["price", "nope"]}, "tables[1].include", "nope"),
        ({"exclude": ["nope"]}, "tables[1].exclude", "nope"),
        ({"rename": {"nope": "x"}}, "tables[1].rename", "nope"),
        ({"fields": {"nope": {"facet": True}}}, "tables[1].fields", "nope"),
        ({"soft_delete": "nope"}, "tables[1].soft_delete", "nope"),
        ({"rename": {"note": "price"}}, "tables[1].rename", "price"),
        ({"rename": {"note": "id"}}, "tables[1].rename", "id"),
    ],
)
def test_config_errors_name_the_key_path(config: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        mapping(ITEMS, **config)
    message = str(excinfo.value)
    assert message.startswith(path), message
    assert words in message


def test_table_without_primary_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^tables\[1\]\.table: .*PRIMARY KEY"):
        mapping(table("t", [("a", "TEXT")], key=()))


# -- comparing with what Typesense reports --------------------------------------------------------


def typesense_reported(schema: dict[str, Any]) -> dict[str, Any]:
    """A collection as Typesense 0.24 answers GET /collections/<name>: every property filled in."""
    fields = [
        {
            "name": "id",
            "type": "string",
            "facet": False,
            "optional": False,
            "index": True,
            "sort": False,
            "infix": False,
            "locale": "",
        }
    ]
    for f in schema["fields"]:
        fields.append(
            {
                "facet": False,
                "index": True,
                "infix": False,
                "locale": "",
                "optional": False,
                "sort": f["type"] in ("int32", "int64", "float", "bool"),
                **f,
            }
        )
    return {
        "name": schema["name"],
        "created_at": 1700000000,
        "num_documents": 12,
        "num_memory_shards": 4,
        "symbols_to_index": [],
        "token_separators": [],
        "default_sorting_field": schema.get("default_sorting_field", ""),
        "fields": fields,
    }


def test_reported_defaults_are_not_differences() -> None:
    expected = SERVICE_A_COLLECTION_SCHEMA
    assert schema_differences(expected, typesense_reported(expected)) == []
    assert schema_differences(expected, copy.deepcopy(expected)) == []
    items = mapping(ITEMS, fields={"note": {"locale": "ja", "index": False}}).collection_schema()
    assert schema_differences(items, typesense_reported(items)) == []


def test_auto_field_is_not_a_difference() -> None:
    actual = typesense_reported(SERVICE_A_COLLECTION_SCHEMA)
    actual["fields"].append({"name": ".*", "type": "auto", "optional": True})
    assert schema_differences(SERVICE_A_COLLECTION_SCHEMA, actual) == []


def reported_with(change: Any) -> list[str]:
    actual = typesense_reported(SERVICE_A_COLLECTION_SCHEMA)
    change(actual)
    return schema_differences(SERVICE_A_COLLECTION_SCHEMA, actual)


def field_of(actual: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in actual["fields"] if f["name"] == name)


def test_type_change_is_a_difference() -> None:
    problems = reported_with(lambda a: field_of(a, "element_id").update(type="int64"))
    assert len(problems) == 1
    assert "element_id" in problems[0] and "int64" in problems[0] and "int32" in problems[0]


@pytest.mark.parametrize(
    ("name", "prop", "value"),
    [
        ("created_at", "facet", False),
        ("element_type", "facet", True),
        ("comment", "optional", False),
        ("element_type", "optional", True),
        ("comment", "index", False),
        ("sequence_number", "sort", False),
        ("comment", "sort", True),
        ("comment", "locale", "ja"),
    ],
)
def test_property_change_is_a_difference(name: str, prop: str, value: Any) -> None:
    problems = reported_with(lambda a: field_of(a, name).update({prop: value}))
    assert len(problems) == 1, problems
    assert name in problems[0] and prop in problems[0]


def test_missing_and_extra_fields_are_differences() -> None:
    def change(actual: dict[str, Any]) -> None:
        actual["fields"] = [f for f in actual["fields"] if f["name"] != "comment"]
        actual["fields"].append({"name": "colour", "type": "string"})

    problems = reported_with(change)
    assert len(problems) == 2
    assert any("comment" in p and "missing" in p for p in problems)
    assert any("colour" in p for p in problems)


def test_default_sorting_field_change_is_a_difference() -> None:
    problems = reported_with(lambda a: a.update(default_sorting_field="element_id"))
    assert len(problems) == 1 and "default_sorting_field" in problems[0]
    unsorted = mapping(ITEMS).collection_schema()
    actual = typesense_reported(unsorted)
    assert schema_differences(unsorted, actual) == []
    actual["default_sorting_field"] = "qty"
    assert len(schema_differences(unsorted, actual)) == 1


# -- field names Typesense can't hold (each measured on 0.24.1 unless a version is named) --------

BAD_NAMES = [
    (".*", "pattern"),  # the catch-all `auto` field: every document then fails ("duplicate")
    ("tag.*", "pattern"),  # a dynamic-field pattern: never searchable or filterable by name
    (".*_at", "pattern"),
    ("parent_sequence_id", "_sequence_id"),  # v0.25+ hides it from GET /collections/<c>
    ("_sequence_id", "_sequence_id"),
    (".flat", "for itself"),  # 0.24.1 answers the whole import 400 "Bad request."
    (".ref", "for itself"),  # v0.25+ keeps its reference helpers' names there
    (" name", "spaces"),  # query_by / filter_by trim it: the field can't be named in a query
    ("name ", "spaces"),
    (" ", "spaces"),
]


@pytest.mark.parametrize(("column", "why"), BAD_NAMES)
def test_a_column_typesense_cant_hold_is_refused_naming_the_table_entry(
    column: str, why: str
) -> None:
    info = table("items", [("sku", "TEXT"), (column, "TEXT")], key=("sku",))
    with pytest.raises(ConfigError) as excinfo:
        mapping(info)
    message = str(excinfo.value)
    assert message.startswith(
        f"tables[1].table: column {column!r} of 'items' cannot be a Typesense field name ("
    ), message
    assert why in message
    assert message.endswith("exclude it or rename it (tables[1].rename)"), message
    # Left out or renamed, the column is fine.
    assert field_names(mapping(info, exclude=[column])) == ["sku"]
    assert field_names(mapping(info, include=["sku"])) == ["sku"]
    assert field_names(mapping(info, rename={column: "renamed"})) == ["sku", "renamed"]


@pytest.mark.parametrize(("name", "why"), [*BAD_NAMES, ("", "empty")])
def test_a_rename_to_a_name_typesense_cant_hold_is_refused(name: str, why: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        mapping(ITEMS, rename={"note": name})
    message = str(excinfo.value)
    assert message.startswith(
        f"tables[1].rename.note: {name!r} cannot be a Typesense field name ("
    ), message
    assert why in message and message.endswith("choose another name")


@pytest.mark.parametrize(
    "name",
    # All created, imported, searched and filtered on 0.24.1 (`:`, `,`, `(` and `&&` can't be
    # used in filter_by or query_by, but the field holds its values and the rest works).
    [".", "..", "a.b", "*", "a*", "a:b", "a,b", "(a)", "a&&b", "\ta", "é", "\u00a0",
     "_sequence_idx", "sequence_id", "ID", "_id", "x" * 300],
)
def test_names_typesense_holds_are_accepted(name: str) -> None:
    info = table("items", [("sku", "TEXT"), (name, "TEXT")], key=("sku",))
    assert field_names(mapping(info)) == ["sku", name]


def test_a_field_inside_an_object_fields_path_is_refused() -> None:
    info = table("t", [("id", "INTEGER"), ("meta", "TEXT"), ("meta.color", "TEXT")], key=("id",))
    objects = {"meta": {"type": "object"}}
    with pytest.raises(ConfigError, match=r"^tables\[1\]\.table: column 'meta\.color'.*nested"):
        mapping(info, fields=objects)
    with pytest.raises(ConfigError, match=r"^tables\[1\]\.rename\.meta\.color: 'm\.c'.*field 'm'"):
        mapping(info, fields=objects, rename={"meta": "m", "meta.color": "m.c"})
    assert field_names(mapping(info)) == ["meta", "meta.color"]  # no object field: no conflict
    assert field_names(mapping(info, fields=objects, rename={"meta.color": "colour"})) == [
        "meta", "colour"]


# -- object fields: nested fields enabled, and what Typesense then reports ------------------------

OBJECTS = table(
    "docs", [("id", "INTEGER"), ("title", "TEXT", True), ("meta", "TEXT"), ("tags", "TEXT")],
    key=("id",),
)


def objects_schema(**fields: Any) -> dict[str, Any]:
    return mapping(OBJECTS, fields=fields).collection_schema()


@pytest.mark.parametrize("kind", ["object", "object[]"])
def test_object_fields_enable_nested_fields(kind: str) -> None:
    schema = objects_schema(meta={"type": kind})
    assert schema["enable_nested_fields"] is True
    assert {"name": "meta", "type": kind, "optional": True} in schema["fields"]
    assert "enable_nested_fields" not in objects_schema()
    assert "enable_nested_fields" not in mapping(ELEMENTS).collection_schema()


def test_nested_fields_typesense_adds_are_not_differences() -> None:
    schema = objects_schema(meta={"type": "object"}, tags={"type": "object[]"})
    actual = typesense_reported(schema)
    # As 0.24.1 reports a collection once documents with nested values are in it.
    actual["enable_nested_fields"] = True
    actual["fields"] += [
        {"name": "meta.color", "type": "string", "optional": True},
        {"name": "meta.deep.n", "type": "int64", "optional": True, "sort": True},
        {"name": "tags.k", "type": "string[]", "optional": True},
    ]
    assert schema_differences(schema, actual) == []
    assert fit_problems(schema, actual) == []
    # Fields that only look nested are still differences.
    actual["fields"].append({"name": "metadata", "type": "string"})
    assert schema_differences(schema, actual) == ["field 'metadata' is not in the table mapping"]


def test_a_collection_without_nested_fields_needs_a_rebuild_for_object_fields() -> None:
    schema = objects_schema(meta={"type": "object"})
    actual = typesense_reported(schema)
    actual["enable_nested_fields"] = False
    assert schema_differences(schema, actual) == [
        "enable_nested_fields is off, expected on (object fields need it)"]
    assert fit_problems(schema, actual) == [
        "enable_nested_fields is off, expected on (object fields need it)"]
    # Typesense refuses a PATCH adding an object field there: not an optional addition.
    without = typesense_reported(mapping(OBJECTS, exclude=["meta"]).collection_schema())
    assert added_optional_fields(schema, without) == []
    without["enable_nested_fields"] = True
    assert added_optional_fields(schema, without) == [
        {"name": "meta", "type": "object", "optional": True}]


def test_nested_fields_on_without_object_fields_are_fine() -> None:
    schema = objects_schema()
    actual = typesense_reported(schema)
    actual["enable_nested_fields"] = True
    assert schema_differences(schema, actual) == []
    assert fit_problems(schema, actual) == []
