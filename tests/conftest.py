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
from urllib.parse import quote

import httpx
import pytest
import yaml

from cdc_daemon.localserver import LocalTypesense

TESTS = Path(__file__).parent
API_KEY = "test-admin-key"

ELEMENTS_DDL = (TESTS.parent / "config" / "elements.sql").read_text(encoding="utf-8")


# The seed's elements configuration: the table entry of the example config (config/cdc.yaml),
# interface.md's example under the seed's collection name.
ELEMENTS_CONFIG: dict[str, Any] = yaml.safe_load(
    (TESTS.parent / "config" / "cdc.yaml").read_text(encoding="utf-8")
)["tables"][0]

# The seed's SERVICE_A_COLLECTION_SCHEMA without its `id` entry (Typesense's document id, which
# is not a schema field in ours), in the seed's order.
SERVICE_A_COLLECTION_SCHEMA: dict[str, Any] = {
    "name": "service_a_collection",
    "fields": [
        {"name": "element_type", "type": "string"},
        {"name": "element_id", "type": "int32"},
        {"name": "sequence_number", "type": "int32"},
        {"name": "version_number", "type": "int32"},
        {"name": "comment", "type": "string", "optional": True},
        {"name": "created_at", "type": "string", "facet": True, "optional": True},
        {"name": "updated_at", "type": "string", "facet": True, "optional": True},
    ],
    "default_sorting_field": "sequence_number",
}



@pytest.fixture(scope="session")
def typesense(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTypesense]:
    """One real Typesense for the session. A server that cannot start fails the run; never skips."""
    server = LocalTypesense(tmp_path_factory.mktemp("typesense"), api_key=API_KEY)
    server.start()
    yield server
    server.stop()


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, message: str = "condition",
             interval: float = 0.05) -> Any:
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

    def cli(
        self, *args: str, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "cdc_daemon", "--config", str(self.config_path), *args],
            capture_output=True, text=True, timeout=timeout, cwd=self.tmp,
        )
        if check:
            assert result.returncode == 0, (
                f"{args}: rc={result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def start_daemon(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "cdc_daemon", "--config", str(self.config_path), "run", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.tmp,
            env={**os.environ, **(env or {})},
        )

    def documents(self, table: str) -> dict[str, dict[str, Any]]:
        return collection_documents(self.http, self.collection(table))

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
    env.write_config([{k: v for k, v in ELEMENTS_CONFIG.items() if k != "collection"}])
    env.cli("install", check=True)
    return env


def insert_elements(db: Path, ids: range, comment: str = "hello") -> None:
    app_write(db, [[(
        "INSERT INTO elements (id, element_type, element_id, sequence_number, version_number,"
        " comment) VALUES (?, 'note', ?, ?, 1, ?)", [i, i, i, f"{comment} {i}"]
    ) for i in ids]])


# -- helpers for tests/integration (appended; the fixtures above are unchanged) -----------------


def start_daemon_logged(env: Env, *args: str, extra_env: dict[str, str] | None = None,
                        name: str = "daemon") -> subprocess.Popen[str]:
    """`run` as a subprocess whose stdout/stderr go to files (a PIPE nobody reads would fill up
    and block a chatty daemon). Read the log with `read_daemon_log(env, name)`."""
    out = open(env.tmp / f"{name}.out", "a")  # noqa: SIM115  (owned by the process)
    err = open(env.tmp / f"{name}.log", "a")  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "cdc_daemon", "--config", str(env.config_path), "run", *args],
            stdout=out, stderr=err, text=True, cwd=env.tmp, env={**os.environ, **(extra_env or {})},
        )
    finally:
        out.close()
        err.close()


def read_daemon_log(env: Env, name: str = "daemon") -> str:
    path = env.tmp / f"{name}.log"
    return path.read_text() if path.exists() else ""


def stop_process(process: subprocess.Popen[str], timeout: float = 10) -> int:
    """SIGTERM, wait; kill -9 if it does not exit in time. Returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


def db_scalar(db: Path, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """One value read straight from the database (a short read transaction of its own)."""
    import sqlite3

    conn = sqlite3.connect(db, timeout=30)
    try:
        row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]
    finally:
        conn.close()


def db_rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import sqlite3

    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def log_backlog(db: Path, log_table: str = "change_log") -> int:
    """Rows in the change log, counted directly (cheaper than `status` for tight polling)."""
    return int(db_scalar(db, f'SELECT COUNT(*) FROM "{log_table}"'))


def insert_many_elements(db: Path, count: int, start: int = 1, comment: str = "bulk") -> None:
    """`count` elements rows in one app transaction, through one recursive-CTE INSERT."""
    app_write(db, [[(
        "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        " INSERT INTO elements (id, element_type, element_id, sequence_number, version_number,"
        " comment) SELECT i, 'note', i, i, 1, ? || ' ' || i FROM n",
        [start, start + count - 1, comment],
    )]])


def expected_elements(db: Path) -> dict[str, dict[str, Any]]:
    """The documents the elements rows should become (interface.md's mapping)."""
    docs: dict[str, dict[str, Any]] = {}
    columns = ("element_type", "element_id", "sequence_number", "version_number", "comment",
               "created_at", "updated_at")
    for row in db_rows(db, f"SELECT id, {', '.join(columns)} FROM elements"):
        doc: dict[str, Any] = {"id": str(row[0])}
        doc.update({c: v for c, v in zip(columns, row[1:], strict=True) if v is not None})
        docs[doc["id"]] = doc
    return docs


def run_cdc(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI with exactly these arguments (no --config added), in `cwd`."""
    environ = {k: v for k, v in os.environ.items() if k != "CDC_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "cdc_daemon", *args], capture_output=True, text=True,
        timeout=timeout, cwd=cwd, env={**environ, **(extra_env or {})},
    )


def collection_documents(http: httpx.Client, collection: str) -> dict[str, dict[str, Any]]:
    """Every document of a collection (or alias), by id; {} when it does not exist. The JSONL
    export is split on "\\n" only: str.splitlines() also splits inside documents holding U+0085,
    U+2028 and other Unicode line breaks."""
    response = http.get(f"/collections/{quote(collection, safe='')}/documents/export")
    if response.status_code == 404:
        return {}
    response.raise_for_status()
    docs = [json.loads(line) for line in response.text.split("\n") if line.strip()]
    return {d["id"]: d for d in docs}
