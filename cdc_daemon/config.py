"""The YAML configuration: pydantic models, loading, and the only place that reads env and files."""

from __future__ import annotations

import difflib
import ipaddress
import os
import string
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cdc_daemon.errors import ConfigError
from cdc_daemon.permissions import not_readable
from cdc_daemon.secret_files import read_secret_file

FieldType = Literal[
    "string",
    "int32",
    "int64",
    "float",
    "bool",
    "string[]",
    "int32[]",
    "int64[]",
    "float[]",
    "bool[]",
    "auto",
    "string*",
    "geopoint",
    "object",
    "object[]",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldOverride(_Strict):
    """Per-column overrides of the derived Typesense field; with `sql`, a computed field: an SQL
    expression evaluated in each row's query (its key under `fields` is its name)."""

    type: FieldType | None = None
    facet: bool | None = None
    sort: bool | None = None
    optional: bool | None = None
    index: bool | None = None
    locale: str | None = None
    sql: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _computed_fields_have_a_type(self) -> FieldOverride:
        # No column to derive it from: what the expression gives is only known row by row.
        if self.sql is not None and self.type is None:
            raise ValueError("a field with `sql` needs its `type` (e.g. type: string)")
        return self


class DependencyConfig(_Strict):
    """A table whose rows a document reads (computed fields): its changes re-send the documents
    joined to the changed row. `join` maps the parent's columns (the configured table's, or the
    enclosing dependency's) to this table's; `depends_on` continues the chain."""

    table: str = Field(min_length=1)
    join: dict[str, str] = Field(min_length=1)
    depends_on: list[DependencyConfig] = Field(default_factory=list)


class TableConfig(_Strict):
    """One SQLite table mirrored into one Typesense collection."""

    table: str = Field(min_length=1)
    collection: str | None = Field(default=None, min_length=1)
    fields: dict[str, FieldOverride] = Field(default_factory=dict)
    default_sorting_field: str | None = None
    include: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    rename: dict[str, str] = Field(default_factory=dict)
    where: str | None = Field(default=None, min_length=1)
    soft_delete: str | None = None
    # Many hosts, one collection: this host's documents get ids `<id_prefix><key>`; it only
    # ever deletes, verifies and repairs documents with its own prefix.
    id_prefix: str | None = Field(default=None, min_length=1)
    # False on every host but one for a shared collection: the others never create, change,
    # rebuild or drop it; they wait for it and follow the managing host's migrations.
    manage_collection: bool = True
    # Tables the computed fields read: a change there re-sends the documents it joins to.
    depends_on: list[DependencyConfig] = Field(default_factory=list)

    @field_validator("id_prefix")
    @classmethod
    def _prefix_ends_with_separator(cls, prefix: str | None) -> str | None:
        if prefix is not None and (prefix[-1].isalnum() or "`" in prefix):
            raise ValueError(
                f"id_prefix {prefix!r} must end with a separator such as ':' (so that no host's"
                " prefix starts another's) and contain no backtick"
            )
        return prefix

    @model_validator(mode="after")
    def _followers_have_a_prefix(self) -> TableConfig:
        # Without its own id_prefix a following host's documents take the managing host's ids:
        # its rows would overwrite and its deletes remove that host's documents.
        if not self.manage_collection and self.id_prefix is None:
            raise ValueError(
                "manage_collection: false (a collection another host manages) needs this host's"
                " own id_prefix, e.g. 'host2:'"
            )
        return self

    @property
    def collection_name(self) -> str:
        return self.collection or self.table


class KmsConfig(_Strict):
    url: str
    key_name: str
    token_file: Path
    refresh_interval: float = Field(default=3600, gt=0)


def node_url_problem(node: str) -> str | None:
    """What is wrong with a Typesense node's URL (`init --typesense-url` checks the same): a
    scheme, a host, and a port from 1 to 65535 when one is given."""
    if not node.startswith(("http://", "https://")):
        return f"node {_shown_url(node)!r} must start with http:// or https://"
    parts = urlsplit(node)
    try:
        port = parts.port  # ValueError: not a number, or above 65535
    except ValueError:
        port = 0
    if not parts.hostname:
        return f"node {_shown_url(node)!r} names no host: give http://HOST:PORT"
    if port == 0 or parts.netloc.endswith(":"):
        return f"node {_shown_url(node)!r}: the port must be a number from 1 to 65535"
    return None


def _shown_url(url: str) -> str:
    """`url` with a `user:password@` in it replaced by `***@`, to echo in an error."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if sep and "@" in netloc:
        return f"{scheme}{sep}***@{netloc.rsplit('@', 1)[1]}{slash}{path}"
    return url


def init_node_url(url: str) -> tuple[str, str | None]:
    """`init --typesense-url` as `typesense.nodes` accepts it, and a note when it was changed: a
    bare `HOST:PORT` gets `http://`; ConfigError for anything else the config would refuse."""
    if "://" not in url:  # judged as what would be written: `:8108` names no host
        url = f"http://{url}"
        if node_url_problem(url) is None:
            shown = _shown_url(url)
            return url, f"--typesense-url {shown[7:]}: no scheme given; wrote {shown}"
    problem = node_url_problem(url)
    if problem is not None:
        raise ConfigError(problem, key="--typesense-url")
    return url, None


class TypesenseConfig(_Strict):
    nodes: list[str] = Field(min_length=1)
    api_key: str | None = Field(default=None, min_length=1)
    api_key_env: str | None = Field(default=None, min_length=1)
    api_key_file: Path | None = None
    kms: KmsConfig | None = None
    timeout: float = Field(default=30, gt=0)
    # Tried before `nodes` (e.g. the node on this host); may also be one of `nodes`.
    nearest_node: str | None = None
    # Put in front of every collection (and alias) name: one instance's collections never
    # collide with another's on a shared cluster.
    collection_prefix: str = ""

    @field_validator("nodes")
    @classmethod
    def _nodes_are_urls(cls, nodes: list[str]) -> list[str]:
        for node in nodes:
            if (problem := node_url_problem(node)) is not None:
                raise ValueError(problem)
        return [node.rstrip("/") for node in nodes]

    @field_validator("nearest_node")
    @classmethod
    def _nearest_is_url(cls, node: str | None) -> str | None:
        if node is not None and (problem := node_url_problem(node)) is not None:
            raise ValueError(problem)
        return node.rstrip("/") if node is not None else None

    @model_validator(mode="after")
    def _exactly_one_key_source(self) -> TypesenseConfig:
        sources = [self.api_key, self.api_key_env, self.api_key_file, self.kms]
        if sum(source is not None for source in sources) != 1:
            raise ValueError("set exactly one of api_key, api_key_env, api_key_file, kms")
        return self


class SyncConfig(_Strict):
    # The most log entries one batch reads: the daemon sizes each batch below it (batching.py),
    # large while a backlog waits, small when caught up.
    batch_size: int = Field(default=5000, ge=1, le=50_000)
    poll_interval: float = Field(default=0.5, gt=0, le=60)
    max_attempts: int = Field(default=10, ge=1)
    # The running daemon puts back triggers a migration dropped (what `install` does), then
    # resyncs the table. Off by default: the daemon then only reports them.
    reinstall_triggers: bool = False


class MetricsConfig(_Strict):
    listen: str | None = None


class LoggingConfig(_Strict):
    format: Literal["json", "console"] | None = None
    level: Literal["debug", "info", "warning", "error"] = "info"


HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
PUBLIC_KEY_ALGORITHMS = (
    *("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    *("ES256", "ES384", "ES512", "EdDSA"),
)


class JwtConfig(_Strict):
    algorithms: list[str] = Field(default_factory=lambda: ["RS256"], min_length=1)
    public_key_file: Path | None = None
    jwks_file: Path | None = None  # a JSON Web Key Set file, keys chosen by the token's `kid`
    secret_env: str | None = None
    issuer: str | None = None
    audience: str | None = None
    roles_claim: str = Field(default="roles", min_length=1)

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, algorithms: list[str]) -> list[str]:
        for algorithm in algorithms:
            if algorithm.lower() == "none":
                raise ValueError("'none' is never accepted (unsigned tokens)")
            if algorithm not in HMAC_ALGORITHMS + PUBLIC_KEY_ALGORITHMS:
                known = ", ".join(HMAC_ALGORITHMS + PUBLIC_KEY_ALGORITHMS)
                raise ValueError(f"unknown algorithm {algorithm!r} (one of {known})")
        hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
        if hmac and len(hmac) != len(algorithms):
            # One key, one family: a public key must never double as an HMAC secret.
            raise ValueError("HS* and public-key algorithms cannot be mixed")
        return algorithms

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtConfig:
        sources = [self.public_key_file, self.jwks_file, self.secret_env]
        if sum(source is not None for source in sources) != 1:
            raise ValueError("set exactly one of public_key_file, jwks_file, secret_env")
        hmac = self.algorithms[0] in HMAC_ALGORITHMS
        if hmac and self.secret_env is None:
            raise ValueError(f"algorithms {self.algorithms} need secret_env (an HMAC secret)")
        if not hmac and self.secret_env is not None:
            raise ValueError(
                f"secret_env is for HS256/HS384/HS512; algorithms {self.algorithms} need"
                " public_key_file or jwks_file"
            )
        return self


class AdminConfig(_Strict):
    jwt: JwtConfig | None = None  # before `listen`: its validator looks at it
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _authenticated_off_loopback(cls, listen: str | None, info: ValidationInfo) -> str | None:
        if listen is None:
            return None
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"{listen!r} is not HOST:PORT")
        if info.data.get("jwt") is None and not is_loopback(host.strip("[]")):
            raise ValueError(
                f"{listen!r} is not a loopback address; an admin API reachable from other"
                " hosts needs a jwt section (tokens with roles)"
            )
        return listen


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; any other name or address is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DatabasesConfig(_Strict):
    """Many database files served by one process (`databases:` instead of `database:`): every
    file the glob matches is synced like a `database:` of its own, with the same tables."""

    glob: str = Field(min_length=1)  # wildcards in the file name only: one folder is watched
    # Each table's collection in each database: {stem} is the file name without its suffix,
    # {collection} the table's own collection name.
    # Without {stem}: one collection shared by every database, each database's ids prefixed
    # `<stem>/`; `manager` names the database that creates and migrates it (the others follow).
    collection: str = "{stem}_{collection}"
    manager: str | None = Field(default=None, min_length=1)
    tenant_field: str | None = Field(default=None, min_length=1)  # a field holding the name
    install: bool = False  # a new file gets the triggers and a backfill; else it is reported
    # Databases synced at the same time; at most HEAVY_WORKERS of them starting or reading full
    # batches (fleet.py): many small commits need many at once, catching up needs few.
    workers: int = Field(default=16, ge=1, le=64)

    @field_validator("glob")
    @classmethod
    def _wildcards_in_the_name_only(cls, glob: str) -> str:
        folder, _, name = glob.rpartition("/")
        if any(c in folder for c in "*?["):
            raise ValueError(
                f"{glob!r}: wildcards only in the file name (one folder is watched), e.g."
                " /var/lib/app/tenants/*.db"
            )
        if not name or name in {".", ".."}:
            raise ValueError(f"{glob!r}: the glob must end with a file name pattern, e.g. *.db")
        return glob

    @field_validator("collection")
    @classmethod
    def _known_placeholders(cls, template: str) -> str:
        try:
            parts = string.Formatter().parse(template)
            names = {name for _, name, _, _ in parts if name is not None}
        except ValueError as exc:
            raise ValueError(f"{template!r}: {exc}") from None
        unknown = names - {"stem", "collection"}
        if unknown:
            raise ValueError(
                f"{template!r}: unknown placeholder {{{sorted(unknown)[0]}}}; use {{stem}} (the"
                " database file's name without its suffix) and {collection}"
            )
        return template

    @model_validator(mode="after")
    def _shared_collections_have_a_manager(self) -> DatabasesConfig:
        if self.shared and self.manager is None:
            raise ValueError(
                f"databases.manager: collection {self.collection!r} has no {{stem}}, so every"
                " database shares it: name the database that creates and migrates it (e.g."
                " manager: acme); the others follow it"
            )
        if not self.shared and self.manager is not None:
            raise ValueError(
                f"databases.manager: only for a collection shared by every database (a"
                f" `collection` without {{stem}}); {self.collection!r} gives each its own"
            )
        return self

    @property
    def shared(self) -> bool:
        """One collection (per table) for every database: no {stem} in the template."""
        return "{stem}" not in self.collection

    def collection_name(self, stem: str, collection: str) -> str:
        return self.collection.format(stem=stem, collection=collection)


def database_name(path: Path) -> str:
    """A database's name in a `databases:` config: its file name without the last suffix."""
    return path.stem if path.suffix else path.name


class Config(_Strict):
    # Exactly one of the two: one database file, or many (`databases:`; see for_database).
    database: Path | None = None
    databases: DatabasesConfig | None = None
    log_table: str = Field(default="change_log", min_length=1)
    typesense: TypesenseConfig
    sync: SyncConfig = Field(default_factory=SyncConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    tables: list[TableConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_database_or_many(self) -> Config:
        if (self.database is None) == (self.databases is None):
            raise ValueError(
                "database: give either `database:` (one file) or `databases:` (a glob)"
                + (", not both" if self.database is not None else "")
            )
        fleet = self.databases
        tenant = fleet.tenant_field if fleet is not None else None
        for i, table in enumerate(self.tables):
            if tenant is not None and tenant in table.fields:
                raise ValueError(
                    f"databases.tenant_field: {tenant!r} is also tables[{i}].fields.{tenant}:"
                    " choose another name for the database's field"
                )
        if fleet is not None and len(self.tables) > 1 and "{collection}" not in fleet.collection:
            raise ValueError(
                "databases.collection: several tables need {collection} in the template"
                " (each table's collection of its own)"
            )
        return self

    @property
    def path(self) -> Path:
        """The one database file; a ConfigError for a `databases:` config not yet narrowed
        to one database (for_database)."""
        if self.database is None:
            raise ConfigError("databases: this needs one database: name it with --database NAME")
        return self.database

    def for_database(self, path: Path) -> Config:
        """A `databases:` config narrowed to one of its files: a plain `database:` config, each
        table's collection named by the `databases.collection` template."""
        databases = self.databases
        assert databases is not None
        stem = database_name(path)
        tables = []
        for table in self.tables:
            update: dict[str, Any] = {
                "collection": databases.collection_name(stem, table.collection_name)
            }
            if databases.shared:  # `<stem>/`: no database's prefix starts another's
                update["id_prefix"] = f"{stem}/{table.id_prefix or ''}"
                update["manage_collection"] = table.manage_collection and stem == databases.manager
            if databases.tenant_field is not None:
                literal = "'" + stem.replace("'", "''") + "'"
                tenant = FieldOverride(type="string", sql=literal)
                update["fields"] = {**table.fields, databases.tenant_field: tenant}
            tables.append(table.model_copy(update=update))
        return self.model_copy(update={"database": path, "databases": None, "tables": tables})

    @model_validator(mode="after")
    def _tables_and_collections_unique(self) -> Config:
        # The message starts with the key path: parse_config shows it as the error's location.
        seen_tables: dict[str, int] = {}
        seen_collections: dict[str, int] = {}
        for i, table in enumerate(self.tables):
            if table.table in seen_tables:
                raise ValueError(
                    f"tables[{i}].table: table {table.table!r} is configured twice"
                    f" (also tables[{seen_tables[table.table]}])"
                )
            if table.collection_name in seen_collections:
                _refuse_unprefixed_sharing(self.tables, seen_collections[table.collection_name], i)
            seen_tables[table.table] = i
            seen_collections.setdefault(table.collection_name, i)
        return self

    def table(self, name: str) -> TableConfig:
        for table in self.tables:
            if table.table == name:
                return table
        raise ConfigError(f"--table {name or repr(name)}: not a configured table")


def _refuse_unprefixed_sharing(tables: list[TableConfig], first: int, i: int) -> None:
    """Entry `i` names the collection of entry `first` (and maybe others before it): allowed
    when every entry sharing it has its own id_prefix, none starting another's (verify and the
    sweep tell a table's documents by prefix: with `a:` and `a:b:`, `a:b:1` would be both
    tables'), and all of them manage it (or all follow another host)."""
    table = tables[i]
    name = table.collection_name
    key = "collection" if table.collection else "table"
    members = [j for j in range(i) if tables[j].collection_name == name]
    if any(tables[j].id_prefix is None for j in [*members, i]):
        raise ValueError(
            f"tables[{i}].{key}: collection {name!r} is used by two tables (also tables[{first}]):"
            " tables sharing a collection each need their own id_prefix, e.g. 'b:' and 'a:'"
        )
    prefix = table.id_prefix or ""
    for j in members:
        other = tables[j].id_prefix or ""
        if prefix.startswith(other) or other.startswith(prefix):
            raise ValueError(
                f"tables[{i}].id_prefix: {prefix!r} and tables[{j}]'s {other!r} in shared"
                f" collection {name!r}: no prefix may start another (an id would be both"
                " tables'); choose e.g. 'b:' and 'a:'"
            )
        if tables[j].manage_collection != table.manage_collection:
            raise ValueError(
                f"tables[{i}].manage_collection: differs from tables[{j}]'s in shared collection"
                f" {name!r}: the tables of one config that share a collection all manage it or"
                " all follow another host"
            )


def default_config_path(cli_value: str | None) -> Path:
    """`--config`, else `$CDC_CONFIG`, else `./cdc.yaml`."""
    return Path(cli_value or os.environ.get("CDC_CONFIG") or "cdc.yaml")


def load_config(path: Path) -> Config:
    """Read, validate and resolve a config file; every problem is a ConfigError naming the key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path.absolute()}: config file not found (name one with --config PATH or"
            " $CDC_CONFIG; `cdc-daemon init` writes one)"
        ) from None
    except PermissionError:
        raise ConfigError(not_readable(path, "--config")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None)
        if isinstance(exc, yaml.reader.ReaderError):  # a bad character: no mark, a position
            line = text.count("\n", 0, exc.position) + 1
            problem = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        where = f" (line {line})" if line is not None else ""
        detail = " ".join(str(problem or exc).split())  # one line
        raise ConfigError(f"{path}: not valid YAML{where}: {detail}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping")
    return parse_config(raw, base_dir=path.resolve().parent, source=str(path))


def parse_config(raw: dict[str, Any], base_dir: Path, source: str = "config") -> Config:
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_problem(exc)}") from None
    return _resolve_paths(config, base_dir)


def _first_problem(exc: ValidationError) -> str:
    """`<key path>: <message>` of the error to show. An unknown key comes first: a misspelled
    `typesens:` also leaves `typesense` missing, and the misspelling is what to fix."""
    errors = exc.errors()
    unknown = [error for error in errors if error["type"] == "extra_forbidden"]
    error = unknown[0] if unknown else errors[0]
    loc = error["loc"]
    if unknown:
        message = unknown_key_message(str(loc[-1]), _known_keys(loc[:-1]))
    else:
        message = str(error["msg"])
        if error["type"] == "value_error":  # our own validators: the text is the message
            message = message.removeprefix("Value error, ")
    return f"{_key_path(loc)}: {message}" if loc else message


def unknown_key_message(key: str, known: list[str]) -> str:
    """`unknown key 'typesens' (did you mean 'typesense'?)`, else the keys allowed there."""
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown key {key!r} (did you mean {close[0]!r}?)"
    return f"unknown key {key!r}" + (f" (known here: {', '.join(known)})" if known else "")


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the section at `loc` (a pydantic error location) allows, in model order."""
    annotation: Any = Config
    for part in loc:
        annotation = _inside(annotation, part)
    model = _without_none(annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _inside(annotation: Any, part: int | str) -> Any:
    """The type of `part` (a field, a list index, a dict key) inside a value of `annotation`;
    None when it can't be told."""
    annotation = _without_none(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field is not None else None
    args = get_args(annotation)
    if get_origin(annotation) is list and args and isinstance(part, int):
        return args[0]
    if get_origin(annotation) is dict and len(args) == 2:
        return args[1]
    return None


def _without_none(annotation: Any) -> Any:
    """`X | None` → X."""
    if get_origin(annotation) in (Union, UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else None
    return annotation


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _resolve_paths(config: Config, base_dir: Path) -> Config:
    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else base_dir / path

    ts = config.typesense
    updates: dict[str, Any] = {}
    if ts.api_key_file is not None:
        updates["api_key_file"] = resolve(ts.api_key_file)
    if ts.kms is not None:
        updates["kms"] = ts.kms.model_copy(update={"token_file": resolve(ts.kms.token_file)})
    admin = config.admin
    if admin.jwt is not None:
        files = {
            name: resolve(path)
            for name in ("public_key_file", "jwks_file")
            if (path := getattr(admin.jwt, name)) is not None
        }
        admin = admin.model_copy(update={"jwt": admin.jwt.model_copy(update=files)})
    return config.model_copy(
        update={
            "database": resolve(config.database) if config.database is not None else None,
            "databases": (
                config.databases.model_copy(
                    update={"glob": str(resolve(Path(config.databases.glob)))}
                )
                if config.databases is not None
                else None
            ),
            "typesense": ts.model_copy(update=updates),
            "admin": admin,
        }
    )


def read_api_key(config: TypesenseConfig) -> str:
    """The static API key from `api_key`, `api_key_env` or `api_key_file`."""
    if config.api_key is not None:
        return config.api_key
    if config.api_key_env is not None:
        value = os.environ.get(config.api_key_env)
        if value is None:
            raise ConfigError(
                f"typesense.api_key_env: environment variable {config.api_key_env} is not set"
            )
        if not value.strip():
            raise ConfigError(
                f"typesense.api_key_env: environment variable {config.api_key_env} is empty:"
                f" set it to the Typesense API key (export {config.api_key_env}=...)"
            )
        return value.strip()
    if config.api_key_file is not None:
        return read_secret_file(config.api_key_file, "typesense.api_key_file", ConfigError)
    raise ConfigError("typesense.kms: the key comes from the KMS (see cdc_daemon.kms)")


# -- two configs compared (a reload) ----------------------------------------------------------

# Keys a running daemon can't change: the file and log it syncs (its lock, its triggers) and
# the sockets it serves. A reload that changes one is refused as a whole.
RESTART_ONLY = ("database", "databases", "log_table", "admin.listen", "metrics.listen")


def config_changes(old: Config, new: Config) -> list[str]:
    """The key paths whose values differ (`tables[0].where`, `sync.poll_interval`); never the
    values themselves (some are secrets)."""
    return sorted(_differences(old.model_dump(mode="json"), new.model_dump(mode="json"), ""))


def _differences(old: Any, new: Any, path: str) -> Iterator[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _differences(old.get(key), new.get(key), f"{path}.{key}" if path else key)
    elif _table_list(old) and _table_list(new) and len(old) == len(new):
        for i, (before, after) in enumerate(zip(old, new, strict=True)):
            yield from _differences(before, after, f"{path}[{i}]")
    elif old != new:
        yield path


def _table_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def refuse_restart_only(old: Config, new: Config) -> None:
    """ConfigError naming the first key in RESTART_ONLY that the new config changes."""
    changed = config_changes(old, new)
    for key in RESTART_ONLY:
        if any(c == key or c.startswith(key + ".") for c in changed):
            raise ConfigError(f"{key}: cannot change on reload; restart the service")
