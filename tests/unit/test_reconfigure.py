"""reconfigure.py's pure parts: which config keys a reload changes, and which it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdc_daemon.config import Config, config_changes, parse_config, refuse_restart_only
from cdc_daemon.errors import ConfigError


def _config(**overrides: Any) -> Config:
    raw: dict[str, Any] = {
        "database": "app.db",
        "typesense": {"nodes": ["http://127.0.0.1:8108"], "api_key": "secret-key-1"},
        "tables": [{"table": "items"}, {"table": "other"}],
    }
    raw.update(overrides)
    return parse_config(raw, base_dir=Path("/srv"))


def test_changed_keys_are_named_never_their_values() -> None:
    old = _config()
    new = _config(
        typesense={"nodes": ["http://127.0.0.1:8108"], "api_key": "secret-key-2", "timeout": 5},
        sync={"poll_interval": 0.1},
        tables=[{"table": "items", "where": "n > 1"}, {"table": "other"}],
    )
    changes = config_changes(old, new)
    assert changes == [
        "sync.poll_interval",
        "tables[0].where",
        "typesense.api_key",
        "typesense.timeout",
    ]
    assert not any("secret" in change for change in changes)
    assert config_changes(old, _config()) == []
    refuse_restart_only(old, new)  # all of these apply live


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"database": "other.db"}, "database"),
        ({"log_table": "other_log"}, "log_table"),
        ({"admin": {"listen": "127.0.0.1:9188"}}, "admin.listen"),
        ({"metrics": {"listen": "127.0.0.1:9187"}}, "metrics.listen"),
    ],
)
def test_restart_only_keys_refuse_the_reload(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        refuse_restart_only(_config(), _config(**overrides))
    assert str(refused.value) == f"{key}: cannot change on reload; restart the service"
