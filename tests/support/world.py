"""`Env`: one test's world against a real Typesense — a directory, the app's database, a config
for the CLI, an HTTP client to look at the collections, and the CLI run as a subprocess (or in
this process for a world that reaches no server). The fault suite's FaultWorld builds on it."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from cdc_daemon.localserver import LocalTypesense

from . import cli_inprocess, launcher

API_KEY = "test-admin-key"


def typesense_client(url: str, api_key: str = API_KEY) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"X-TYPESENSE-API-KEY": api_key}, timeout=30)


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


class Env:
    """One test's world: a database, a config for it, and helpers to run the CLI. Collections
    are named `<prefix>_<table>`, so tests sharing the session's server never meet.
    `in_process`: `cli` runs the CLI in the test's process (support.cli_inprocess), for a
    world no command reaches a server from; otherwise as a subprocess."""

    def __init__(self, tmp_path: Path, typesense: LocalTypesense | str, name: str, *,
                 db: Path | None = None, in_process: bool = False) -> None:
        self.tmp = tmp_path
        self.typesense_url = typesense if isinstance(typesense, str) else typesense.url
        self.typesense = typesense
        self.db = db or tmp_path / "app.db"
        self.config_path = tmp_path / "cdc.yaml"
        self.prefix = name
        self.in_process = in_process

    @functools.cached_property
    def http(self) -> httpx.Client:
        """Made on first use: a client costs ~30 ms (its TLS context), and most worlds that
        reach no server never look at a collection."""
        return typesense_client(self.typesense_url)

    def collection(self, table: str) -> str:
        return f"{self.prefix}_{table}"

    def write_config(self, tables: list[dict[str, Any]], **overrides: Any) -> Path:
        config: dict[str, Any] = {
            "database": "app.db",
            "typesense": {"nodes": [self.typesense_url], "api_key": API_KEY, "timeout": 10},
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

    def cli(self, *args: str, timeout: float = 120, check: bool = False,
            config: Path | None = None) -> subprocess.CompletedProcess[str]:
        config = config or self.config_path
        if self.in_process:  # no timeout: pytest's own (pyproject) ends a hung test
            return cli_inprocess.run(*args, config=config, cwd=self.tmp, check=check)
        return launcher.run(*args, config=config, cwd=self.tmp, timeout=timeout, check=check)

    def start_daemon(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """`run` with its output in pipes (for short runs; see start_daemon_logged)."""
        return launcher.start("run", *args, config=self.config_path, cwd=self.tmp, extra_env=env)

    def documents(self, table: str) -> dict[str, dict[str, Any]]:
        return collection_documents(self.http, self.collection(table))

    def drop_collection(self, table: str) -> None:
        """The table's collection and its alias gone (the server is shared by the session).
        The configured name is an alias: deleting through it drops the collection behind it."""
        self.http.delete(f"/collections/{self.collection(table)}")
        self.http.delete(f"/aliases/{self.collection(table)}")

    def verify_report(self, *args: str) -> tuple[int, dict[str, Any]]:
        """`verify --json`: its exit code (0 in sync, 1 not) and its report."""
        result = self.cli("verify", "--json", *args)
        assert result.returncode in (0, 1), result.stderr
        return result.returncode, json.loads(result.stdout)

    def verify(self, *args: str) -> dict[str, Any]:
        return self.verify_report(*args)[1]

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json", check=True).stdout)

    def close(self) -> None:
        if "http" in self.__dict__:
            self.http.close()


def start_daemon_logged(env: Env, *args: str, extra_env: dict[str, str] | None = None,
                        name: str = "daemon") -> subprocess.Popen[str]:
    """`run` as a subprocess whose stdout/stderr go to files (a PIPE nobody reads would fill up
    and block a chatty daemon). Read the log with `read_daemon_log(env, name)`."""
    return launcher.start_logged("run", *args, config=env.config_path, cwd=env.tmp,
                                 log=env.tmp / f"{name}.log", out=env.tmp / f"{name}.out",
                                 extra_env=extra_env)


def read_daemon_log(env: Env, name: str = "daemon") -> str:
    path = env.tmp / f"{name}.log"
    return path.read_text() if path.exists() else ""
