"""Shared fixtures: a real Typesense server, an app database written by a separate stdlib-sqlite3
process, configs, and the CLI run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cdc_daemon.localserver import LocalTypesense

TESTS = Path(__file__).parent
API_KEY = "test-admin-key"

ELEMENTS_DDL = """CREATE TABLE elements (
  id INTEGER PRIMARY KEY,
  element_type VARCHAR NOT NULL,
  element_id INTEGER NOT NULL,
  sequence_number INTEGER NOT NULL,
  version_number INTEGER NOT NULL,
  comment VARCHAR,
  created_at DATETIME DEFAULT (CURRENT_TIMESTAMP),
  updated_at DATETIME DEFAULT (CURRENT_TIMESTAMP)
)"""


@pytest.fixture(scope="session")
def typesense(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTypesense]:
    """One real Typesense for the session. A server that cannot start fails the run; never skips."""
    server = LocalTypesense(tmp_path_factory.mktemp("typesense"), api_key=API_KEY)
    server.start()
    yield server
    server.stop()


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
             message: str = "condition") -> Any:
    """Poll until `condition()` is truthy; fail with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def app_write(db: Path, transactions: list[list[tuple[str, list[Any]]]]) -> None:
    """Apply transactions through stdlib sqlite3 in a separate process (the app)."""
    result = subprocess.run(
        [sys.executable, str(TESTS / "app_writer.py"), str(db)],
        input=json.dumps(transactions), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr


def app_exec(db: Path, *statements: str) -> None:
    """Each statement in its own transaction, through the app process."""
    app_write(db, [[(sql, [])] for sql in statements])


class Env:
    """One test's world: a database, a config for it, and helpers to run the CLI."""

    def __init__(self, tmp_path: Path, typesense: LocalTypesense, name: str) -> None:
        self.tmp = tmp_path
        self.typesense = typesense
        self.db = tmp_path / "app.db"
        self.config_path = tmp_path / "cdc.yaml"
        self.prefix = name
        self.http = httpx.Client(base_url=typesense.url, headers={"X-TYPESENSE-API-KEY": API_KEY},
                                 timeout=30)

    def collection(self, table: str) -> str:
        return f"{self.prefix}_{table}"

    def write_config(self, tables: list[dict[str, Any]], **overrides: Any) -> Path:
        config: dict[str, Any] = {
            "database": "app.db",
            "typesense": {"nodes": [self.typesense.url], "api_key": API_KEY, "timeout": 10},
            "sync": {"batch_size": 200, "poll_interval": 0.2, "max_attempts": 3},
            "logging": {"format": "json", "level": "info"},
            "tables": [{"collection": self.collection(t["table"]), **t} for t in tables],
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.config_path.write_text(yaml.safe_dump(config))
        return self.config_path

    def cli(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "cdc_daemon", "--config", str(self.config_path), *args],
            capture_output=True, text=True, timeout=timeout, cwd=self.tmp,
        )
        if check:
            assert result.returncode == 0, f"{args}: rc={result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    def start_daemon(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "cdc_daemon", "--config", str(self.config_path), "run", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.tmp,
            env={**os.environ, **(env or {})},
        )

    def documents(self, table: str) -> dict[str, dict[str, Any]]:
        response = self.http.get(f"/collections/{self.collection(table)}/documents/export")
        if response.status_code == 404:
            return {}
        response.raise_for_status()
        docs = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        return {d["id"]: d for d in docs}

    def verify(self, *args: str) -> dict[str, Any]:
        result = self.cli("verify", "--json", *args)
        assert result.returncode in (0, 1), result.stderr
        return json.loads(result.stdout)

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json", check=True).stdout)


@pytest.fixture
def env(tmp_path: Path, typesense: LocalTypesense, request: pytest.FixtureRequest) -> Iterator[Env]:
    name = "t" + str(abs(hash(request.node.nodeid)) % 10**10)
    environment = Env(tmp_path, typesense, name)
    yield environment
    environment.http.close()


@pytest.fixture
def elements_env(env: Env) -> Env:
    """The seed's `elements` table, installed and configured like the seed's collection schema."""
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    env.write_config([{
        "table": "elements",
        "fields": {"element_id": {"type": "int32"}, "sequence_number": {"type": "int32"},
                   "version_number": {"type": "int32"}, "created_at": {"facet": True},
                   "updated_at": {"facet": True}},
        "default_sorting_field": "sequence_number",
    }])
    env.cli("install", check=True)
    return env


def insert_elements(db: Path, ids: range, comment: str = "hello") -> None:
    app_write(db, [[(
        "INSERT INTO elements (id, element_type, element_id, sequence_number, version_number,"
        " comment) VALUES (?, 'note', ?, ?, 1, ?)", [i, i, i, f"{comment} {i}"]
    ) for i in ids]])
