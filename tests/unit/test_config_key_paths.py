"""The key-path mechanism: core code names keys relative to the part of the config it was handed
(errors.ConfigError's `key` and `see`), the root puts that part's path in front (`within`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_daemon.auth import hmac_secret, load_public_key
from cdc_daemon.config import JwtConfig, TableConfig
from cdc_daemon.errors import ConfigError
from cdc_daemon.schema import MappingOptions, build_mapping
from cdc_daemon.wiring import jwt_verifier, mapping_from_config, mapping_options

from .helpers import table

ITEMS = table("items", [("sku", "TEXT"), ("note", "TEXT")], key=("sku",))


def test_within_puts_the_path_in_front_of_the_key_and_the_key_it_points_to() -> None:
    error = ConfigError("column 'a' is bad: exclude it or rename it", key="table", see="rename")
    assert str(error) == "table: column 'a' is bad: exclude it or rename it (rename)"
    moved = error.within("tables[3]")
    assert str(moved) == (
        "tables[3].table: column 'a' is bad: exclude it or rename it (tables[3].rename)"
    )
    assert (moved.key, moved.see, moved.message) == ("tables[3].table", "tables[3].rename",
                                                     error.message)
    assert moved.exit_code == 2


def test_within_nests_and_joins_indexes_and_keyless_errors() -> None:
    assert str(ConfigError("m", key="secret_env").within("jwt").within("admin")) == (
        "admin.jwt.secret_env: m"
    )
    assert str(ConfigError("m", key="[2].table").within("tables")) == "tables[2].table: m"
    assert str(ConfigError("not set").within("admin.jwt")) == "admin.jwt: not set"
    assert str(ConfigError("plain text, no key")) == "plain text, no key"


def test_within_keeps_the_error_class() -> None:
    class Narrower(ConfigError):
        pass

    assert type(Narrower("m", key="k").within("p")) is Narrower


def test_the_core_names_keys_relative_to_what_it_was_given() -> None:
    """schema.py and auth.py know nothing of `tables[N]` or `admin.jwt`."""
    with pytest.raises(ConfigError) as caught:
        build_mapping(ITEMS, MappingOptions(collection="items", rename={"note": "id"}))
    assert caught.value.key == "rename"
    assert str(caught.value).startswith("rename: column 'note' would become field 'id'")
    with pytest.raises(ConfigError) as caught:
        build_mapping(ITEMS, MappingOptions(collection="items", fields={"nope": {}}))
    assert str(caught.value) == "fields.nope: no column 'nope' in 'items'"
    with pytest.raises(ConfigError) as caught:
        hmac_secret("CDC_TEST_UNSET", {})
    assert str(caught.value) == "secret_env: environment variable CDC_TEST_UNSET is not set"


def test_the_root_adds_the_entry_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        mapping_from_config(ITEMS, TableConfig(table="items", soft_delete="gone"), "tables[7]")
    assert str(caught.value) == "tables[7].soft_delete: no column 'gone' in 'items'"
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError) as caught:
        load_public_key(missing, ["RS256"])
    assert str(caught.value).startswith(f"public_key_file: cannot read {missing}: ")
    with pytest.raises(ConfigError) as caught:
        jwt_verifier(JwtConfig(algorithms=["RS256"], public_key_file=missing))
    assert str(caught.value).startswith(f"admin.jwt.public_key_file: cannot read {missing}: ")


def test_options_carry_the_collection_prefix_and_every_setting() -> None:
    options = mapping_options(
        TableConfig(table="items", collection="goods", include=["sku"], id_prefix="h1:",
                    fields={"sku": {"facet": True}}),
        collection_prefix="app_",
    )
    assert options.collection == "app_goods" and options.include == ("sku",)
    assert options.id_prefix == "h1:" and options.fields["sku"] == {"facet": True}
    assert build_mapping(ITEMS, options).collection == "app_goods"
