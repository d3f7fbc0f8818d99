"""The commands on a `databases:` config (many database files, one config), against a real
Typesense: each database in turn under an `== NAME (PATH)` line, JSON outputs as one
{"databases": {NAME: ...}} object, the highest exit code, `--database NAME` for one of them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from support import API_KEY, Env, collection_documents

NAMES = ("acme", "beta", "corp")
BOOKS = "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL)"


def make_database(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as db:  # the app's own writes: Python's stdlib sqlite3
        db.execute(BOOKS)
        db.executemany("INSERT INTO books VALUES (?, ?)",
                       [(i, f"{path.stem} book {i}") for i in range(1, rows + 1)])
    db.close()


def write_config(env: Env, glob: str = "tenants/*.db") -> None:
    env.config_path.write_text(yaml.safe_dump({
        "databases": {"glob": glob},
        "typesense": {"nodes": [env.typesense_url], "api_key": API_KEY, "timeout": 10},
        "sync": {"batch_size": 200, "poll_interval": 0.2, "max_attempts": 3},
        "logging": {"format": "json", "level": "warning"},
        "tables": [{"table": "books", "collection": env.collection("books")}],
    }))


def collection(env: Env, name: str) -> str:
    """A database's collection: the default `databases.collection`, {stem}_{collection}."""
    return f"{name}_{env.collection('books')}"


def headers(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("== ")]


def sections(result: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    """stdout's lines under each `== NAME (PATH)` header, by NAME."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in result.stdout.splitlines():
        if line.startswith("== "):
            current = found.setdefault(line.split()[1], [])
        else:
            assert current is not None, f"output before the first header: {line!r}"
            current.append(line)
    return found


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    value = json.loads(result.stdout)
    assert list(value) == ["databases"], value
    databases: dict[str, Any] = value["databases"]
    return databases


@pytest.fixture
def tenants(env: Env) -> Env:
    folder = env.tmp / "tenants"
    folder.mkdir()
    for count, name in enumerate(NAMES, start=2):
        make_database(folder / f"{name}.db", rows=count)  # 2, 3 and 4 rows
    write_config(env)
    return env


def test_every_command_on_every_database(tenants: Env) -> None:
    env, folder = tenants, tenants.tmp / "tenants"
    expected_headers = [f"== {name} ({folder / f'{name}.db'})" for name in NAMES]

    installed = env.cli("install", check=True)
    assert headers(installed) == expected_headers
    for name, lines in sections(installed).items():
        assert lines[-1].startswith("installed: "), (name, lines)

    checked = env.cli("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert {name: lines[-1].split(":")[0] for name, lines in sections(checked).items()} == {
        name: "ok" for name in NAMES}

    status = env.cli("status", check=True)
    assert headers(status) == expected_headers
    for lines in sections(status).values():
        assert lines[0].startswith("backlog: 0 changes"), lines
        assert lines[1].startswith("daemon: not running"), lines
        assert lines[2].strip().startswith("books: backlog 0"), lines
    statuses = as_json(env.cli("status", "--json", check=True))
    assert list(statuses) == list(NAMES)
    assert all(s["backlog"] == 0 and s["daemon_running"] is False for s in statuses.values())

    backfilled = env.cli("backfill", check=True)
    assert {name: lines for name, lines in sections(backfilled).items()} == {
        "acme": ["books: backfilled 2 rows"], "beta": ["books: backfilled 3 rows"],
        "corp": ["books: backfilled 4 rows"]}
    for rows, name in enumerate(NAMES, start=2):
        documents = collection_documents(env.http, collection(env, name))
        assert sorted(d["title"] for d in documents.values()) == [
            f"{name} book {i}" for i in range(1, rows + 1)]

    in_sync = env.cli("verify", "--json")
    assert in_sync.returncode == 0, in_sync.stdout + in_sync.stderr
    assert {name: v["in_sync"] for name, v in as_json(in_sync).items()} == dict.fromkeys(
        NAMES, True)

    # A document gone from beta's collection behind the daemon's back: only beta is out of sync.
    gone = env.http.delete(f"/collections/{quote(collection(env, 'beta'))}/documents/2")
    assert gone.status_code == 200, gone.text
    differs = env.cli("verify", "--json")
    assert differs.returncode == 1, differs.stdout + differs.stderr
    reports = as_json(differs)
    assert {name: v["in_sync"] for name, v in reports.items()} == {
        "acme": True, "beta": False, "corp": True}
    assert reports["beta"]["tables"]["books"]["missing"] == 1
    assert reports["beta"]["tables"]["books"]["examples"]["missing"] == ["2"]
    text = env.cli("verify")
    assert text.returncode == 1
    assert {name: lines[-1] for name, lines in sections(text).items()} == {
        "acme": "in sync", "beta": "NOT in sync", "corp": "in sync"}
    assert "  missing: '2'" in sections(text)["beta"]

    letters = env.cli("dead-letters", "list", "--json", check=True)
    assert as_json(letters) == {name: [] for name in NAMES}
    assert headers(env.cli("dead-letters", "list", check=True)) == expected_headers


def test_database_option_narrows_to_one_database(tenants: Env) -> None:
    env, folder = tenants, tenants.tmp / "tenants"
    env.cli("install", check=True)
    env.cli("backfill", "--database", "beta", check=True)
    assert len(collection_documents(env.http, collection(env, "beta"))) == 3
    assert collection_documents(env.http, collection(env, "acme")) == {}

    with sqlite3.connect(folder / "beta.db") as db:  # synced by `run --database beta` only
        db.execute("INSERT INTO books VALUES (4, 'beta book 4')")
    db.close()
    env.cli("run", "--once", "--database", "beta", check=True)
    assert len(collection_documents(env.http, collection(env, "beta"))) == 4

    one = env.cli("status", "--json", "--database", "beta", check=True)
    assert "databases" not in json.loads(one.stdout)  # that database's JSON as without many
    assert json.loads(one.stdout)["backlog"] == 0
    assert headers(env.cli("status", "--database", "beta", check=True)) == []
    verified = env.cli("verify", "--json", "--database", "beta")
    assert verified.returncode == 0 and json.loads(verified.stdout)["in_sync"] is True
    schema = json.loads(env.cli("schema", "--database", "corp", check=True).stdout)
    assert schema["books"]["alias"] == collection(env, "corp")
    all_schemas = as_json(env.cli("schema", check=True))
    assert {name: s["books"]["alias"] for name, s in all_schemas.items()} == {
        name: collection(env, name) for name in NAMES}

    unknown = env.cli("status", "--database", "nope")
    assert unknown.returncode == 2 and unknown.stdout == ""
    (line,) = unknown.stderr.strip().splitlines()
    assert "--database 'nope'" in line and "acme, beta, corp" in line

    removed = env.cli("uninstall", "--database", "corp", check=True)
    assert headers(removed) == [] and removed.stdout.splitlines()[-1].startswith("uninstalled: ")
    checked = env.cli("check")
    assert checked.returncode == 1
    problems = sections(checked)
    assert problems["acme"][-1].startswith("ok: ") and problems["beta"][-1].startswith("ok: ")
    assert not any(line.startswith("ok: ") for line in problems["corp"]), problems["corp"]
    assert headers(checked) == [f"== {name} ({folder / f'{name}.db'})" for name in NAMES]


def test_a_failing_database_says_its_error_and_the_others_still_run(tenants: Env) -> None:
    env, folder = tenants, tenants.tmp / "tenants"
    env.cli("install", "--database", "acme", check=True)  # beta and corp are not installed
    env.cli("backfill", "--database", "acme", check=True)
    (folder / "broken.db").write_text("not a database, " * 100)
    status = env.cli("status")
    assert status.returncode == 1, status.stderr  # the highest: 1 (DatabaseError) for three
    assert [line.split()[1] for line in headers(status)] == ["acme", "beta", "broken", "corp"]
    parts = sections(status)
    assert parts["acme"][0].startswith("backlog: 0 changes")
    assert parts["beta"] == parts["broken"] == parts["corp"] == []
    errors = [line for line in status.stderr.splitlines() if line.startswith("cdc-daemon: ")]
    assert len(errors) == 3, status.stderr
    assert "not installed in" in errors[0] and str(folder / "beta.db") in errors[0]
    assert errors[1].endswith("broken.db: file is not a SQLite database")

    verify = env.cli("verify", "--json")
    assert verify.returncode == 1, verify.stderr
    reports = as_json(verify)
    assert reports["acme"]["in_sync"] is True
    assert set(reports["broken"]) == {"error"} and "not a SQLite database" in reports["broken"][
        "error"]
    assert f"cdc-daemon: error: broken: {reports['broken']['error']}" in verify.stderr


def test_no_database_and_files_left_out(env: Env) -> None:
    folder = env.tmp / "tenants"
    folder.mkdir()
    write_config(env)
    status = env.cli("status")
    assert status.returncode == 0 and status.stdout == ""
    assert "databases.glob" in status.stderr and str(folder / "*.db") in status.stderr
    assert env.cli("check").returncode == 1
    assert as_json(env.cli("status", "--json", check=True)) == {}

    make_database(folder / "acme.db", rows=1)
    make_database(folder / "acme.sqlite", rows=1)
    write_config(env, glob="tenants/acme.*")
    listed = env.cli("schema", check=True)
    assert list(as_json(listed)) == ["acme"]
    (warning,) = listed.stderr.strip().splitlines()
    assert warning.startswith("cdc-daemon: warning: ") and "acme.sqlite" in warning


def test_database_option_on_a_one_database_config(env: Env) -> None:
    make_database(env.db, rows=1)
    env.write_config([{"table": "books"}])
    refused = env.cli("schema", "--database", "other")
    assert refused.returncode == 2 and refused.stdout == ""
    (line,) = refused.stderr.strip().splitlines()
    assert "--database 'other'" in line and "'app'" in line
    run = env.cli("run", "--once", "--database", "other")
    assert run.returncode == 2 and "--database 'other'" in run.stderr
    accepted = env.cli("schema", "--database", "app", check=True)
    assert "databases" not in json.loads(accepted.stdout)
