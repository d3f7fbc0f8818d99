"""Table → collection: which columns become which fields, and the derived schema (pure)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from cdc_daemon.database import TableInfo, quote_ident
from cdc_daemon.errors import ConfigError
from cdc_daemon.row_keys import Key, affinity, document_id, key_from_document_id

NUMERIC_TYPES = {"int32", "int64", "float"}
OBJECT_TYPES = {"object", "object[]"}  # need the collection's enable_nested_fields
# Keys Typesense keeps in documents for itself: 0.24.1 answers a whole import whose document has
# a `.flat` field with 400 "Bad request."; `.ref` lists reference helpers since v0.25+.
RESERVED_FIELD_NAMES = {".flat", ".ref"}


def field_name_problem(name: str) -> str | None:
    """Why Typesense can't hold a field of this name (None: it can). `id` is not checked here:
    it is the document id (build_mapping says so). Measured on 0.24.1 unless a version says
    otherwise; names with other punctuation (`.`, `:`, `,`, `&&`, non-ASCII, ...) work."""
    if not name:
        return "it is empty"
    if ".*" in name:
        return "Typesense reads a name containing '.*' as a pattern for dynamic fields"
    if name.endswith("_sequence_id"):
        return (
            "Typesense v0.25+ keeps names ending in '_sequence_id' for reference helpers and"
            " leaves them out of the schema it reports"
        )
    if name in RESERVED_FIELD_NAMES:
        return f"Typesense keeps {name!r} in documents for itself"
    if name != name.strip(" "):
        return (
            "Typesense trims spaces around field names in query_by and filter_by, so the field"
            " could never be searched or filtered"
        )
    return None


@dataclass(frozen=True)
class MappingOptions:
    """How one table becomes one collection, as plain values (the root makes them from its
    config). `include` None: every column; `rename` and `fields` are keyed by column. A column's
    `fields` entry overrides properties of its derived Typesense field (`type`, `facet`, `sort`,
    `optional`, `index`, `locale`, as in a collection schema); an entry, even empty, also takes
    in a BLOB column, which is otherwise left out. An entry with `sql` is a computed field
    named by its key (its `type` required, `optional` false by default): an SQL expression
    evaluated in each row's query; it replaces the field of a column of the same name."""

    collection: str  # the full name, any collection prefix included
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    rename: Mapping[str, str] = dataclass_field(default_factory=dict)
    fields: Mapping[str, Mapping[str, Any]] = dataclass_field(default_factory=dict)
    default_sorting_field: str | None = None
    where: str | None = None
    soft_delete: str | None = None
    id_prefix: str = ""
    manage_collection: bool = True


@dataclass(frozen=True)
class FieldMap:
    column: str
    name: str  # the Typesense field name
    type: str
    optional: bool
    facet: bool = False
    sort: bool | None = None
    index: bool = True
    locale: str | None = None
    sql: str | None = None  # a computed field's expression (`column` is then its name)

    @property
    def selected(self) -> str:
        """The SQL the row query selects for this field: the column, or `(<expression>)`."""
        return in_parentheses(self.sql) if self.sql is not None else quote_ident(self.column)

    def schema(self) -> dict[str, Any]:
        field: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.facet:
            field["facet"] = True
        if self.optional:
            field["optional"] = True
        if self.sort is not None:
            field["sort"] = self.sort
        if not self.index:
            field["index"] = False
        if self.locale:
            field["locale"] = self.locale
        return field


def in_parentheses(sql: str) -> str:
    """An expression as one value in a query: the line break ends a trailing `--` comment."""
    return f"({sql}\n)"


@dataclass(frozen=True)
class TableMapping:
    """Everything needed to turn one row of `table` into one document of `collection`."""

    table: str
    collection: str
    key: tuple[str, ...]
    key_affinities: tuple[str, ...]
    fields: tuple[FieldMap, ...]
    default_sorting_field: str | None
    where: str | None
    soft_delete: str | None
    id_prefix: str = ""  # documents' ids are `id_prefix + document_id(key)`
    manage_collection: bool = True  # False: a shared collection another host manages
    # The tables its documents read (depends_on), one text per path: a new one re-sends them.
    reads: tuple[str, ...] = ()

    def doc_id(self, key: Key) -> str:
        return self.id_prefix + document_id(key)

    def key_of(self, doc_id: str) -> Key | None:
        """The key of the row that would have this document id; None when no row of this table
        can have it: another host's id (prefix), an id that does not parse into key values, or
        one a row would spell otherwise (`007` or `7.0` is not INTEGER key 7's id, `7`)."""
        if not doc_id.startswith(self.id_prefix):
            return None
        try:
            key = key_from_document_id(doc_id[len(self.id_prefix) :], self.key_affinities)
        except (ValueError, TypeError, KeyError, AttributeError):  # JSONDecodeError included
            return None
        kept = all(_stored_as_is(v, a) for v, a in zip(key, self.key_affinities, strict=True))
        return key if kept and self.doc_id(key) == doc_id else None

    def select_list(self) -> tuple[str, ...]:
        """What the row query SELECTs, as SQL, in order: the key columns, each field (its
        column, or its expression in parentheses), then the soft-delete flag (read last)."""
        key = tuple(quote_ident(c) for c in self.key)
        flag = (quote_ident(self.soft_delete),) if self.soft_delete else ()
        return key + tuple(f.selected for f in self.fields) + flag

    @property
    def computed_fields(self) -> tuple[FieldMap, ...]:
        return tuple(f for f in self.fields if f.sql is not None)

    def collection_schema(self, name: str | None = None) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "name": name or self.collection,
            "fields": [f.schema() for f in self.fields],
        }
        if self.default_sorting_field:
            schema["default_sorting_field"] = self.default_sorting_field
        if any(f.type in OBJECT_TYPES for f in self.fields):
            schema["enable_nested_fields"] = True  # else Typesense refuses object fields
        return schema


def _stored_as_is(value: Any, column_affinity: str) -> bool:
    """Whether a key column of this affinity can hold `value` as it is: JSON also gives bools,
    nulls, lists and NaN; an INTEGER or NUMERIC column stores 7.0 as 7, a REAL one 7 as 7.0."""
    if type(value) is float:
        if math.isnan(value):
            return False
        return column_affinity not in ("INTEGER", "NUMERIC") or not value.is_integer()
    if type(value) is int:
        return column_affinity != "REAL" and -(2**63) <= value < 2**63  # SQLite's integers
    return type(value) in (str, bytes)


def derived_type(declared_type: str) -> str | None:
    """The type mapping (docs/documents.md); None for BLOB columns (left out unless configured)."""
    upper = declared_type.upper()
    if "BOOL" in upper:
        return "bool"
    kind = affinity(declared_type)
    if kind == "INTEGER":
        return "int64"
    if kind == "TEXT" or not upper:
        return "string"
    if kind == "BLOB":
        return None
    if kind == "REAL" or any(w in upper for w in ("NUMERIC", "DECIMAL")):
        return "float"
    return "string"  # DATE, DATETIME, TIMESTAMP and anything else: the stored text


# Said wherever a table without a key is refused (init's note, the config error): the fix.
NO_KEY_FIX = (
    "cdc-daemon needs an explicit key (an implicit rowid is renumbered by VACUUM): rebuild the"
    " table with a PRIMARY KEY on its unique column(s), or an `id INTEGER PRIMARY KEY` column,"
    " and copy the rows over (ALTER TABLE can't add one)"
)

# A configured view: what it is not, and what to configure instead.
VIEW_FIX = (
    "a view has no triggers to log its changes and no key of its own: configure the table it"
    " reads from instead (its `where` can select the same rows)"
)


def build_mapping(info: TableInfo, options: MappingOptions) -> TableMapping:
    """Combine the table's columns with its options; ConfigError names the bad option's key
    relative to the table's entry (`fields.x`; the root adds `tables[N]`)."""
    if not info.key:
        raise ConfigError(f"table {info.name!r} has no PRIMARY KEY; {NO_KEY_FIX}", key="table")
    names = {c.name for c in info.columns}
    for key_name, columns in (
        ("include", options.include or []),
        ("exclude", options.exclude),
        ("rename", list(options.rename)),
        ("fields", [c for c, props in options.fields.items() if props.get("sql") is None]),
    ):
        for name in columns:
            if name not in names:
                raise ConfigError(f"no column {name!r} in {info.name!r}", key=f"{key_name}.{name}")
    if options.soft_delete is not None and options.soft_delete not in names:
        raise ConfigError(f"no column {options.soft_delete!r} in {info.name!r}", key="soft_delete")

    single_id_key = len(info.key) == 1 and info.key[0] == "id"
    computed = {
        name: _computed_field(name, props)
        for name, props in options.fields.items()
        if props.get("sql") is not None
    }
    fields: list[FieldMap] = []
    for column in info.columns:
        if column.name in computed:
            fields.append(computed.pop(column.name))  # in the column's place
            continue
        override = options.fields.get(column.name)
        if options.include is not None and column.name not in options.include:
            continue
        if column.name in options.exclude or (single_id_key and column.name == "id"):
            continue
        props = override or {}
        field_type = props.get("type") or derived_type(column.declared_type)
        if field_type is None:
            configured = override is not None or (
                options.include is not None and column.name in options.include
            )
            if not configured:
                continue  # BLOB: left out unless configured (in `include` or `fields`)
            field_type = "string"  # base64 text
        name = options.rename.get(column.name, column.name)
        if name == "id":
            raise ConfigError(
                f"column {column.name!r} would become field 'id', which is the"
                " document id; rename it",
                key="rename",
            )
        problem = field_name_problem(name)
        if problem is not None:
            raise _bad_field_name(info.name, column.name, options, problem)
        is_key = column.key_position > 0
        optional = not (column.not_null or is_key)
        if props.get("optional") is not None:
            optional = props["optional"]
        fields.append(
            FieldMap(
                column=column.name,
                name=name,
                type=field_type,
                optional=optional,
                facet=bool(props.get("facet")),
                sort=props.get("sort"),
                index=props.get("index") is not False,
                locale=props.get("locale"),
            )
        )
    fields.extend(computed.values())
    seen: set[str] = set()
    for f in fields:
        if f.name in seen:
            if any(c.name == f.name for c in fields if c.sql is not None):
                raise ConfigError(
                    f"a column is renamed to {f.name!r}, the name of a computed field",
                    key=f"fields.{f.name}",
                )
            raise ConfigError(f"two columns map to field {f.name!r}", key="rename")
        seen.add(f.name)
    _refuse_names_inside_objects(fields, info.name, options)

    sorting = options.default_sorting_field
    if sorting is not None:
        target = next((f for f in fields if f.name == sorting or f.column == sorting), None)
        if target is None:
            raise ConfigError(f"{sorting!r} is not a field", key="default_sorting_field")
        if target.type not in NUMERIC_TYPES or target.optional:
            raise ConfigError(
                f"{sorting!r} must be a required numeric field"
                f" (it is {target.type}{', optional' if target.optional else ''})",
                key="default_sorting_field",
            )
        sorting = target.name
    return TableMapping(
        table=info.name,
        collection=options.collection,
        key=info.key,
        key_affinities=tuple(affinity(info.column(k).declared_type) for k in info.key),
        fields=tuple(fields),
        default_sorting_field=sorting,
        where=options.where,
        soft_delete=options.soft_delete,
        id_prefix=options.id_prefix,
        manage_collection=options.manage_collection,
    )


def _computed_field(name: str, props: Mapping[str, Any]) -> FieldMap:
    """A `fields.<name>` entry with `sql`: its name is its key, its type the configured one."""
    if name == "id":
        raise ConfigError(
            "a computed field can't be named 'id', which is the document id", key=f"fields.{name}"
        )
    problem = field_name_problem(name)
    if problem is not None:
        raise ConfigError(
            f"{name!r} cannot be a Typesense field name ({problem}): choose another name",
            key=f"fields.{name}",
        )
    return FieldMap(
        column=name,
        name=name,
        type=props["type"],
        optional=bool(props.get("optional", False)),
        facet=bool(props.get("facet")),
        sort=props.get("sort"),
        index=props.get("index") is not False,
        locale=props.get("locale"),
        sql=props["sql"],
    )


def _bad_field_name(table: str, column: str, options: MappingOptions, problem: str) -> ConfigError:
    """The error for a field name Typesense can't hold, at the key the name came from."""
    if column in options.rename:
        return ConfigError(
            f"{options.rename[column]!r} cannot be a Typesense field"
            f" name ({problem}): choose another name",
            key=f"rename.{column}",
        )
    return ConfigError(
        f"column {column!r} of {table!r} cannot be a Typesense field name"
        f" ({problem}): exclude it or rename it",
        key="table",
        see="rename",
    )


def _refuse_names_inside_objects(
    fields: list[FieldMap], table: str, options: MappingOptions
) -> None:
    """A field named `meta.color` beside an object field `meta` would be the same field as the
    object's nested `color` (Typesense names nested fields by their path)."""
    objects = [f.name for f in fields if f.type in OBJECT_TYPES]
    for f in fields:
        inside = next((o for o in objects if f.name.startswith(o + ".")), None)
        if inside is not None:
            problem = f"it is the name of a nested field of object field {inside!r}"
            raise _bad_field_name(table, f.column, options, problem)


# What Typesense reports for a property we did not set.
def _effective(field: dict[str, Any], prop: str) -> Any:
    if prop in field and field[prop] is not None:
        return field[prop]
    defaults = {
        "facet": False,
        "optional": False,
        "index": True,
        "locale": "",
        "sort": field.get("type") in NUMERIC_TYPES or field.get("type") == "bool",
    }
    return defaults[prop]


def _nested_children(*schemas: dict[str, Any]) -> Callable[[str], bool]:
    """Whether a field name is one Typesense added for a value nested in an object field
    (`meta.color` for `meta`): it lists them in the schema once a document has them."""
    prefixes = tuple(
        f["name"] + "."
        for s in schemas
        for f in s.get("fields", [])
        if f.get("type") in OBJECT_TYPES
    )
    return lambda name: bool(prefixes) and name.startswith(prefixes)


def nested_fields_problem(expected: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """Object fields need enable_nested_fields, which can't be turned on later (no PATCH). A
    collection that has it without needing it is fine: nothing is nested unless declared."""
    if expected.get("enable_nested_fields") and not actual.get("enable_nested_fields"):
        return "enable_nested_fields is off, expected on (object fields need it)"
    return None


def schema_differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Human-readable differences between a derived schema and an existing collection."""
    problems: list[str] = []
    nested = _nested_children(expected, actual)
    actual_fields = {
        f["name"]: f
        for f in actual.get("fields", [])
        if f["name"] != "id" and not nested(f["name"])
    }
    expected_fields = {f["name"]: f for f in expected["fields"]}
    for name, want in expected_fields.items():
        have = actual_fields.get(name)
        if have is None:
            problems.append(f"field {name!r} is missing")
            continue
        if have.get("type") != want["type"]:
            problems.append(f"field {name!r} is {have.get('type')}, expected {want['type']}")
        for prop in ("facet", "optional", "index", "sort", "locale"):
            if _effective(have, prop) != _effective(want, prop):
                problems.append(
                    f"field {name!r} has {prop}={_effective(have, prop)},"
                    f" expected {_effective(want, prop)}"
                )
    for name in actual_fields.keys() - expected_fields.keys():
        if name != ".*":
            problems.append(f"field {name!r} is not in the table mapping")
    want_sort = expected.get("default_sorting_field") or ""
    have_sort = actual.get("default_sorting_field") or ""
    if want_sort != have_sort:
        problems.append(f"default_sorting_field is {have_sort!r}, expected {want_sort!r}")
    nested_problem = nested_fields_problem(expected, actual)
    if nested_problem is not None:
        problems.append(nested_problem)
    return problems


def added_optional_fields(expected: dict[str, Any], actual: dict[str, Any]) -> list[dict[str, Any]]:
    """The fields to add when `expected` only adds optional fields to `actual`, else [].

    Anything else (a removed or changed field, a new required field, another sorting field)
    needs a rebuild.
    """
    have = {f["name"]: f for f in actual.get("fields", []) if f["name"] not in ("id", ".*")}
    want = {f["name"]: f for f in expected["fields"]}
    added = [f for name, f in want.items() if name not in have]
    if not added or any(not f.get("optional") for f in added):
        return []
    unchanged = {"name": actual.get("name"), "fields": [want[n] for n in want if n in have]}
    if expected.get("default_sorting_field"):
        unchanged["default_sorting_field"] = expected["default_sorting_field"]
    if expected.get("enable_nested_fields"):
        unchanged["enable_nested_fields"] = True  # an added object field needs it too
    if schema_differences(unchanged, actual):
        return []
    return added


def fit_problems(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Why this table's documents would not fit a collection another host manages ([] = they
    fit): a field the collection requires that the table may leave out, or a different type.
    Fields the collection lacks are fine (Typesense keeps them unindexed until they are added),
    and so are facet/sort/index differences (the managing host's choice)."""
    problems: list[str] = []
    want = {f["name"]: f for f in expected["fields"]}
    nested = _nested_children(expected, actual)
    for field in actual.get("fields", []):
        name = field["name"]
        if name in ("id", ".*") or nested(name):
            continue
        ours = want.get(name)
        if ours is None:
            if not _effective(field, "optional"):
                problems.append(f"the collection requires field {name!r}, which the table lacks")
            continue
        if ours["type"] != field.get("type"):
            problems.append(f"field {name!r} is {field.get('type')} there, {ours['type']} here")
        elif ours.get("optional") and not _effective(field, "optional"):
            problems.append(f"field {name!r} is required there but optional here")
    nested_problem = nested_fields_problem(expected, actual)
    if nested_problem is not None:
        problems.append(nested_problem)
    return problems


# -- several tables in one collection (each with its own id_prefix) ------------------------------

SHARED_PROPERTIES = ("facet", "sort", "index", "locale")  # must agree, as the type must


def union_schema(members: Sequence[TableMapping], name: str | None = None) -> dict[str, Any]:
    """The schema of a collection that several tables share: the union of their fields, in
    the order they first appear; a field some member lacks (or leaves optional) is optional.
    `default_sorting_field` only when every member names it (shared_field_conflict refuses the
    rest). One member: its own schema."""
    schemas = [member.collection_schema(name) for member in members]
    union = dict(schemas[0])
    fields: dict[str, dict[str, Any]] = {}
    for schema in schemas:
        for field in schema["fields"]:
            seen = fields.setdefault(field["name"], dict(field))
            if field.get("optional"):
                seen["optional"] = True
    for field_name, field in fields.items():
        if not all(any(f["name"] == field_name for f in s["fields"]) for s in schemas):
            field["optional"] = True
    union["fields"] = list(fields.values())
    sorting = {s.get("default_sorting_field") for s in schemas}
    union.pop("default_sorting_field", None)
    if len(sorting) == 1 and None not in sorting:
        union["default_sorting_field"] = sorting.pop()
    if any(s.get("enable_nested_fields") for s in schemas):
        union["enable_nested_fields"] = True
    return union


def shared_field_conflict(
    mapping: TableMapping, earlier: Mapping[str, TableMapping]
) -> ConfigError | None:
    """Why `mapping` can't share its collection with the `earlier` members (label → mapping,
    labelled as messages name their entries: `tables[0]`), or None. A field of the same name
    must have the same type and properties; `default_sorting_field` must be the same for all.
    The key is relative to `mapping`'s entry (the root adds `tables[N]`)."""
    shared = f"in shared collection {mapping.collection!r}"
    for label, other in earlier.items():
        theirs = {f.name: f for f in other.fields}
        for field in mapping.fields:
            their = theirs.get(field.name)
            if their is None:
                continue
            if field.type != their.type:
                return ConfigError(
                    f"type {field.type} differs from {label}'s {their.type} {shared}",
                    key=f"fields.{field.column}",
                )
            for prop in SHARED_PROPERTIES:
                ours_value = _effective(field.schema(), prop)
                their_value = _effective(their.schema(), prop)
                if ours_value != their_value:
                    return ConfigError(
                        f"{prop} {ours_value} differs from {label}'s {their_value} {shared}",
                        key=f"fields.{field.column}",
                    )
        if mapping.default_sorting_field != other.default_sorting_field:
            ours, theirs_sorting = (
                repr(m.default_sorting_field) if m.default_sorting_field else "none"
                for m in (mapping, other)
            )
            return ConfigError(
                f"{ours} differs from {label}'s {theirs_sorting} {shared}: every table in it must"
                " name the same default_sorting_field (a required numeric field in each), or none",
                key="default_sorting_field",
            )
    return None
