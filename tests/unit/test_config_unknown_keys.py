"""An unknown key, at any level, is named with its key path and the closest known key (issue 15
item 5): a misspelled `typesens:` is not reported as "typesense: Field required"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdc_daemon.config import parse_config, unknown_key_message
from cdc_daemon.errors import ConfigError


def base() -> dict[str, Any]:
    return {
        "database": "app.db",
        "typesense": {"nodes": ["http://127.0.0.1:8108"], "api_key": "k"},
        "tables": [{"table": "items"}],
    }


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, base_dir=Path("/srv"), source="cdc.yaml")
    return str(caught.value)


def test_a_misspelled_required_section_is_named_not_reported_missing() -> None:
    raw = base()
    raw["typesens"] = raw.pop("typesense")
    assert error_of(raw) == (
        "cdc.yaml: typesens: unknown key 'typesens' (did you mean 'typesense'?)"
    )


@pytest.mark.parametrize(("change", "expected"), [
    (lambda r: r["typesense"].update(nodess=r["typesense"].pop("nodes")),
     "typesense.nodess: unknown key 'nodess' (did you mean 'nodes'?)"),
    (lambda r: r["tables"][0].update(colection="x"),
     "tables[0].colection: unknown key 'colection' (did you mean 'collection'?)"),
    (lambda r: r["tables"][0].update(fields={"title": {"facett": True}}),
     "tables[0].fields.title.facett: unknown key 'facett' (did you mean 'facet'?)"),
    (lambda r: r.update(sync={"batch_sise": 10}),
     "sync.batch_sise: unknown key 'batch_sise' (did you mean 'batch_size'?)"),
    (lambda r: r.update(admin={"jwt": {"secret_env": "S", "algorithms": ["HS256"],
                                       "isuer": "x"}}),
     "admin.jwt.isuer: unknown key 'isuer' (did you mean 'issuer'?)"),
    (lambda r: r["typesense"].update(kms={"url": "http://127.0.0.1:1", "key_name": "n",
                                          "token_file": "t", "refresh": 5}),
     "typesense.kms.refresh: unknown key 'refresh' (did you mean 'refresh_interval'?)"),
])
def test_a_nested_unknown_key_gets_its_path_and_a_suggestion(change: Any, expected: str) -> None:
    raw = base()
    change(raw)
    assert error_of(raw) == f"cdc.yaml: {expected}"


def test_without_a_close_match_the_known_keys_are_listed() -> None:
    raw = base()
    raw["sync"] = {"zzz": 1}
    assert error_of(raw) == (
        "cdc.yaml: sync.zzz: unknown key 'zzz' (known here: batch_size, poll_interval,"
        " max_attempts, reinstall_triggers)"
    )


def test_other_errors_are_unchanged() -> None:
    raw = base()
    del raw["typesense"]
    assert error_of(raw) == "cdc.yaml: typesense: Field required"


def test_the_message_alone() -> None:
    assert unknown_key_message("tabels", ["database", "tables"]) == (
        "unknown key 'tabels' (did you mean 'tables'?)"
    )
    assert unknown_key_message("x", []) == "unknown key 'x'"
