"""Dry runs (issue 15 item 7): `install --dry-run` prints the SQL `install` runs and changes
nothing; `schema` prints the collection schema each table gets without a Typesense or its key.
The CLI runs on a database the app (stdlib sqlite3, its own process) wrote: in the test's
process (support.cli_inprocess; nothing here reaches a server), except the dry run whose script
the app runs, which comes from `python -m cdc_daemon` itself."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from support import app_exec, cli_inprocess, launcher

from cdc_daemon.localserver import free_port

APP_TABLES = (
    "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT, year INTEGER, genre TEXT,"
    " isbn TEXT UNIQUE)",
    "CREATE TABLE loans (book INTEGER, reader TEXT, since TEXT, PRIMARY KEY (book, reader))"
    " WITHOUT ROWID",
)
UNSET_KEY = "CDC_TEST_KEY_NOBODY_SETS"  # the API key is never needed here


def fingerprint(db: Path) -> str:
    return hashlib.sha256(db.read_bytes()).hexdigest()


def write_config(tmp: Path, tables: list[dict[str, Any]]) -> Path:
    """A config whose Typesense node nobody listens on and whose key variable is unset."""
    config = {
        "database": "app.db",
        "typesense": {"nodes": [f"http://127.0.0.1:{free_port()}"], "api_key_env": UNSET_KEY},
        "tables": tables,
    }
    path = tmp / "cdc.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def app_database(tmp: Path) -> Path:
    db = tmp / "app.db"
    app_exec(db, *APP_TABLES, "INSERT INTO books (title, year) VALUES ('Dune', 1965)")
    return db


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli_inprocess.run(*args, config=config, cwd=config.parent)


def run_script_as_the_app(db: Path, script: str) -> None:
    """What `cdc-daemon install --dry-run | sqlite3 app.db` does, with the stdlib's sqlite3."""
    code = "import sqlite3, sys; sqlite3.connect(sys.argv[1]).executescript(sys.stdin.read())"
    result = subprocess.run(
        [sys.executable, "-c", code, str(db)], input=script, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_install_dry_run_prints_install_sql_and_changes_nothing(tmp_path: Path) -> None:
    db = app_database(tmp_path)
    config = write_config(tmp_path, [{"table": "books"}, {"table": "loans"}])
    before = fingerprint(db)
    result = launcher.run("install", "--dry-run", config=config, cwd=config.parent)
    assert result.returncode == 0, result.stderr
    assert fingerprint(db) == before
    script = result.stdout
    lines = script.splitlines()
    assert lines[0].startswith("-- `cdc-daemon install` on ") and "nothing was changed" in lines[0]
    assert "--   created log table 'change_log'" in lines
    assert "--   installed trigger 'change_log:loans:delete'" in lines
    assert lines[lines.index("BEGIN;") + 1 :][-1] == "COMMIT;"
    assert 'CREATE TABLE IF NOT EXISTS "change_log_dead"' in script
    assert script.count("CREATE TRIGGER ") == 11  # the guard; 6 on books (isbn UNIQUE), 4 on loans

    # Run by the app's own sqlite3, the script leaves what install would: it has nothing to do.
    run_script_as_the_app(db, script)
    installed = cli(config, "install")
    assert installed.stdout.splitlines() == ["installed: nothing to change"], installed.stdout
    again = cli(config, "install", "--dry-run").stdout
    assert "-- Nothing to change: the log tables exist and every trigger is current." in again
    assert "CREATE TRIGGER" not in again


def test_install_dry_run_shows_the_triggers_of_a_table_no_longer_configured(
    tmp_path: Path,
) -> None:
    db = app_database(tmp_path)
    config = write_config(tmp_path, [{"table": "books"}, {"table": "loans"}])
    assert cli(config, "install").returncode == 0
    write_config(tmp_path, [{"table": "books"}])
    before = fingerprint(db)
    result = cli(config, "install", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert fingerprint(db) == before
    assert (
        "--   removed trigger 'change_log:loans:insert' (table 'loans' not configured)"
        in result.stdout.splitlines()
    )
    assert 'DROP TRIGGER "change_log:loans:insert";' in result.stdout
    run_script_as_the_app(db, result.stdout)
    assert cli(config, "install").stdout == "installed: nothing to change\n"


def test_schema_prints_each_collection_without_typesense_or_its_key(tmp_path: Path) -> None:
    db = app_database(tmp_path)
    config = write_config(
        tmp_path,
        [
            {
                "table": "books",
                "collection": "library_books",
                "exclude": ["isbn"],
                "rename": {"title": "name"},
                "fields": {"year": {"type": "int32", "optional": False}, "genre": {"facet": True}},
                "default_sorting_field": "year",
            },
            {
                "table": "loans",
                "collection": "shared_loans",
                "manage_collection": False,
                "id_prefix": "host2:",
            },
        ],
    )
    before = fingerprint(db)
    result = cli(config, "schema")
    assert result.returncode == 0, result.stderr
    assert fingerprint(db) == before
    books = {
        "alias": "library_books",
        "manage_collection": True,
        "schema": {
            "name": "library_books__v1",
            "fields": [
                {"name": "name", "type": "string", "optional": True},
                {"name": "year", "type": "int32"},
                {"name": "genre", "type": "string", "facet": True, "optional": True},
            ],
            "default_sorting_field": "year",
        },
    }
    assert json.loads(result.stdout) == {
        "books": books,
        "loans": {
            "alias": "shared_loans",
            "manage_collection": False,  # another host creates it: the name is the shared one
            "schema": {
                "name": "shared_loans",
                "fields": [
                    {"name": "book", "type": "int64"},  # the key: never null
                    {"name": "reader", "type": "string"},
                    {"name": "since", "type": "string", "optional": True},
                ],
            },
        },
    }
    one = cli(config, "schema", "--table", "books")
    assert json.loads(one.stdout) == {"books": books}
    unknown = cli(config, "schema", "--table", "nope")
    assert unknown.returncode == 2
    assert unknown.stderr == "cdc-daemon: error: --table nope: not a configured table\n"
