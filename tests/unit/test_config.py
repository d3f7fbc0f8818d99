"""config.py: YAML loading, validation errors that name the key path, paths, secrets."""

from __future__ import annotations

import copy
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc_daemon.config import Config, default_config_path, load_config, parse_config, read_api_key
from cdc_daemon.errors import ConfigError

BASE: dict[str, Any] = {
    "database": "app.db",
    "typesense": {"nodes": ["http://127.0.0.1:8108"], "api_key": "secret"},
    "tables": [{"table": "elements"}, {"table": "other", "collection": "other_c"}],
}


def config_with(change: Any = None) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    if change is not None:
        change(raw)
    return raw


def write(tmp_path: Path, raw: Any, name: str = "cdc.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw), encoding="utf-8")
    return path


def error_of(tmp_path: Path, raw: Any) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load_config(write(tmp_path, raw))
    assert excinfo.value.exit_code == 2
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_minimal_config_and_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.database == tmp_path / "app.db"
    assert config.log_table == "change_log"
    assert config.typesense.nodes == ["http://127.0.0.1:8108"]
    assert config.typesense.timeout == 30
    assert (config.sync.batch_size, config.sync.poll_interval, config.sync.max_attempts) == (
        5000,  # the upper bound: batches are sized below it (batching.py)
        0.5,
        10,
    )
    assert config.metrics.listen is None and config.admin.listen is None
    assert [t.collection_name for t in config.tables] == ["elements", "other_c"]
    assert config.table("other").collection == "other_c"
    with pytest.raises(ConfigError, match="nope"):
        config.table("nope")


def test_the_interface_example_config_loads(tmp_path: Path) -> None:
    text = """
    database: ./app.db
    log_table: change_log
    typesense:
      nodes: ["http://127.0.0.1:8108", "http://127.0.0.1:8109/"]
      api_key_env: TYPESENSE_API_KEY
      timeout: 30
    sync:
      batch_size: 1000
      poll_interval: 0.5
      max_attempts: 10
    metrics:
      listen: "127.0.0.1:9187"
    logging:
      format: json
      level: info
    admin:
      listen: "127.0.0.1:9188"
      jwt:
        algorithms: [RS256]
        public_key_file: keys/jwt.pub
        issuer: "https://auth.example"
        audience: "cdc-daemon"
        roles_claim: roles
    tables:
      - table: elements
        collection: service_a_collection
        fields:
          element_id: {type: int32}
          created_at: {type: string, facet: true}
          element_type: {facet: true}
        default_sorting_field: sequence_number
        include: [element_id, created_at, element_type, sequence_number]
        exclude: []
        rename: {comment: remark}
        where: "element_type <> 'draft'"
        soft_delete: deleted
    """
    config = load_config(write(tmp_path, textwrap.dedent(text)))
    assert config.typesense.nodes[1] == "http://127.0.0.1:8109"  # trailing slash dropped
    table = config.tables[0]
    assert table.fields["element_id"].type == "int32"
    assert table.fields["created_at"].facet is True
    assert table.rename == {"comment": "remark"}
    assert config.admin.jwt is not None
    assert config.admin.jwt.public_key_file == tmp_path / "keys" / "jwt.pub"


@pytest.mark.parametrize(
    ("change", "path"),
    [
        # unknown keys
        (lambda c: c.update(databse="x.db"), "databse"),
        (lambda c: c["typesense"].update(apikey="x"), "typesense.apikey"),
        (lambda c: c["tables"][1].update(colection="x"), "tables[1].colection"),
        (
            lambda c: c["tables"][0].update(fields={"a": {"facets": True}}),
            "tables[0].fields.a.facets",
        ),
        (lambda c: c.update(sync={"batchsize": 5}), "sync.batchsize"),
        # wrong types and values
        (lambda c: c["tables"][1].update(collection=""), "tables[1].collection"),
        (lambda c: c["tables"][1].update(collection=["a"]), "tables[1].collection"),
        (lambda c: c["tables"][0].update(table=""), "tables[0].table"),
        (lambda c: c["tables"][0].update(include="a,b"), "tables[0].include"),
        (
            lambda c: c["tables"][0].update(fields={"a": {"type": "integer"}}),
            "tables[0].fields.a.type",
        ),
        (
            lambda c: c["tables"][0].update(fields={"a": {"facet": "maybe"}}),
            "tables[0].fields.a.facet",
        ),
        (lambda c: c.update(sync={"batch_size": "many"}), "sync.batch_size"),
        (lambda c: c.update(sync={"batch_size": 0}), "sync.batch_size"),
        (lambda c: c.update(sync={"poll_interval": -1}), "sync.poll_interval"),
        (lambda c: c.update(sync={"max_attempts": 0}), "sync.max_attempts"),
        (lambda c: c.update(logging={"level": "loud"}), "logging.level"),
        (lambda c: c.update(logging={"format": "xml"}), "logging.format"),
        (lambda c: c["typesense"].update(nodes=[]), "typesense.nodes"),
        (lambda c: c["typesense"].update(nodes="http://x:8108"), "typesense.nodes"),
        (lambda c: c["typesense"].update(nodes=["127.0.0.1:8108"]), "typesense.nodes"),
        (lambda c: c["typesense"].update(timeout=0), "typesense.timeout"),
        (lambda c: c.update(tables=[]), "tables"),
        (lambda c: c.update(tables={"table": "x"}), "tables"),
        (lambda c: c.update(log_table=""), "log_table"),
        # missing required keys
        (lambda c: c.pop("database"), "database"),
        (lambda c: c.pop("typesense"), "typesense"),
        (lambda c: c["typesense"].pop("nodes"), "typesense.nodes"),
        (lambda c: c.pop("tables"), "tables"),
        (lambda c: c["tables"][1].pop("table"), "tables[1].table"),
        (
            lambda c: c["typesense"].update(api_key=None, kms={"url": "http://k"}),
            "typesense.kms.key_name",
        ),
    ],
)
def test_errors_name_the_key_path(tmp_path: Path, change: Any, path: str) -> None:
    message = error_of(tmp_path, config_with(change))
    assert f": {path}: " in message, message
    assert message.startswith(str(tmp_path / "cdc.yaml"))


@pytest.mark.parametrize(
    "sources",
    [
        {},
        {"api_key": "a", "api_key_env": "B"},
        {"api_key_env": "B", "api_key_file": "k"},
        {"api_key": "a", "kms": {"url": "http://k", "key_name": "n", "token_file": "t"}},
    ],
)
def test_exactly_one_api_key_source(tmp_path: Path, sources: dict[str, Any]) -> None:
    raw = config_with(lambda c: c.update(typesense={"nodes": ["http://x:1"], **sources}))
    message = error_of(tmp_path, raw)
    assert "typesense" in message and "exactly one" in message


@pytest.mark.parametrize(
    ("tables", "path", "word"),
    [
        ([{"table": "a"}, {"table": "a", "collection": "b"}], "tables[1].table", "'a'"),
        ([{"table": "a"}, {"table": "b", "collection": "a"}], "tables[1].collection", "'a'"),
        (
            [{"table": "a", "collection": "c"}, {"table": "b", "collection": "c"}],
            "tables[1].collection",
            "'c'",
        ),
        ([{"table": "x"}, {"table": "a"}, {"table": "a"}], "tables[2].table", "'a'"),
    ],
)
def test_duplicate_tables_and_collections_are_refused(
    tmp_path: Path, tables: list[dict[str, Any]], path: str, word: str
) -> None:
    message = error_of(tmp_path, config_with(lambda c: c.update(tables=tables)))
    assert path in message and word in message


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "cdc"
    folder.mkdir(parents=True)
    raw = config_with(
        lambda c: c.update(
            database="../data/app.db",
            typesense={
                "nodes": ["http://x:1"],
                "kms": {"url": "http://k", "key_name": "svc", "token_file": "kms.token"},
            },
            admin={"listen": "127.0.0.1:1", "jwt": {"public_key_file": "jwt.pub"}},
        )
    )
    path = write(folder, raw)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    relative = Path(os.path.relpath(path, elsewhere))
    config = load_config(relative)
    assert config.database.resolve() == (tmp_path / "etc" / "data" / "app.db").resolve()
    assert config.database.is_absolute()
    assert config.typesense.kms is not None
    assert config.typesense.kms.token_file == folder.resolve() / "kms.token"
    assert config.typesense.kms.refresh_interval == 3600
    assert config.admin.jwt is not None
    assert config.admin.jwt.public_key_file == folder.resolve() / "jwt.pub"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    key_file = tmp_path / "abs.key"
    raw = config_with(
        lambda c: c.update(
            database=str(tmp_path / "x.db"),
            typesense={"nodes": ["http://x:1"], "api_key_file": str(key_file)},
        )
    )
    config = load_config(write(tmp_path, raw))
    assert config.database == tmp_path / "x.db"
    assert config.typesense.api_key_file == key_file


def test_api_key_file_is_relative_to_the_config(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "ts.key").write_text("  the-key\n")
    raw = config_with(
        lambda c: c.update(typesense={"nodes": ["http://x:1"], "api_key_file": "ts.key"})
    )
    config = load_config(write(sub, raw))
    assert config.typesense.api_key_file == sub.resolve() / "ts.key"
    assert read_api_key(config.typesense) == "the-key"


def test_api_key_file_errors(tmp_path: Path) -> None:
    raw = config_with(
        lambda c: c.update(typesense={"nodes": ["http://x:1"], "api_key_file": "no.key"})
    )
    config = load_config(write(tmp_path, raw))
    with pytest.raises(ConfigError, match=r"^typesense\.api_key_file: .*no\.key"):
        read_api_key(config.typesense)
    (tmp_path / "no.key").write_text(" \n")
    with pytest.raises(ConfigError, match=r"^typesense\.api_key_file: .*empty"):
        read_api_key(config.typesense)


def test_api_key_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = config_with(
        lambda c: c.update(typesense={"nodes": ["http://x:1"], "api_key_env": "CDC_TEST_KEY"})
    )
    config = load_config(write(tmp_path, raw))
    monkeypatch.delenv("CDC_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"^typesense\.api_key_env: .*CDC_TEST_KEY"):
        read_api_key(config.typesense)
    monkeypatch.setenv("CDC_TEST_KEY", "")
    with pytest.raises(ConfigError, match=r"^typesense\.api_key_env"):
        read_api_key(config.typesense)
    monkeypatch.setenv("CDC_TEST_KEY", " from-env \n")
    assert read_api_key(config.typesense) == "from-env"


def test_api_key_inline() -> None:
    config = parse_config(copy.deepcopy(BASE), base_dir=Path("/srv"))
    assert read_api_key(config.typesense) == "secret"
    assert config.database == Path("/srv/app.db")


def test_errors_never_echo_the_api_key(tmp_path: Path) -> None:
    raw = config_with(lambda c: c["typesense"].update(api_key="s3cr3t-value", api_key_env="X"))
    assert "s3cr3t-value" not in error_of(tmp_path, raw)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("database: app.db\ntypesense:\n  nodes: [\n", 4),
        ("database: app.db\ntables:\n  - table: a\n   collection: b\n", 4),
        ("database: app.db\n\ttypesense: {}\n", 2),
        ("database: 'app.db\n", 2),
        ("a: 1\nb: [1, 2\nc: 3\n", 3),
    ],
)
def test_invalid_yaml_is_one_line_naming_the_line(tmp_path: Path, text: str, line: int) -> None:
    message = error_of(tmp_path, text)
    assert "not valid YAML" in message and f"line {line}" in message, message


def test_unreadable_yaml_characters_give_one_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, "database: app.db\nx: \x07\n")
    assert "YAML" in message


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n", "42\n"])
def test_a_config_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    assert "mapping" in error_of(tmp_path, text)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_default_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDC_CONFIG", raising=False)
    assert default_config_path(None) == Path("cdc.yaml")
    monkeypatch.setenv("CDC_CONFIG", "/etc/cdc/env.yaml")
    assert default_config_path(None) == Path("/etc/cdc/env.yaml")
    assert default_config_path("given.yaml") == Path("given.yaml")


def test_config_is_immutable() -> None:
    config = parse_config(copy.deepcopy(BASE), base_dir=Path("/srv"))
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        config.log_table = "other"  # type: ignore[misc]
    assert isinstance(config, Config)
