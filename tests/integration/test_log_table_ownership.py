"""The log's three tables (`change_log`, `change_log_dead`, `change_log_state`) are adopted only
if cdc-daemon created them (issue 15): an app's own table of one of those names is refused by
`install` (and its dry run) and every command, never dropped by `uninstall --drop-log`; a side
table dropped by hand is named by install as one it creates. The app's tables are written by
stdlib sqlite3 in its own process; the CLI runs in the test's process (support.cli_inprocess:
nothing here reaches a server)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml
from support import app_exec, cli_inprocess, db_rows

from cdc_daemon.localserver import free_port

# The app's own tables that happen to have the names of the log's side tables.
APP_STATE = (
    "CREATE TABLE {name} (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO {name} VALUES ('theme', 'dark')",
)
APP_DEAD = (
    "CREATE TABLE {name} (customer TEXT, note TEXT)",
    "INSERT INTO {name} VALUES ('acme', 'never pays on time')",
)


def _setup(tmp: Path) -> tuple[Path, Path]:
    """The app's database with one table to sync, and a config whose Typesense nobody serves."""
    db = tmp / "app.db"
    app_exec(db, "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT)",
             "INSERT INTO books VALUES (1, 'Dune')")
    config = {
        "database": "app.db",
        "typesense": {"nodes": [f"http://127.0.0.1:{free_port()}"],
                      "api_key_env": "CDC_TEST_KEY_NOBODY_SETS"},
        "tables": [{"table": "books"}],
    }
    path = tmp / "cdc.yaml"
    path.write_text(yaml.safe_dump(config))
    return db, path


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli_inprocess.run(*args, config=config, cwd=config.parent)


def _fingerprint(db: Path) -> str:
    return hashlib.sha256(db.read_bytes()).hexdigest()


def _refused(result: subprocess.CompletedProcess[str], table: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert (
        f"cdc-daemon: error: log_table: table {table!r} exists and was not created by cdc-daemon;"
        " choose another log_table" in result.stderr
    ), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("statements", "table"),
    [
        (APP_STATE, "change_log_state"),
        (APP_DEAD, "change_log_dead"),
        (APP_STATE, "Change_Log_State"),  # SQLite's names ignore case: the same table
    ],
)
def test_install_refuses_an_app_table_of_a_side_tables_name(
    tmp_path: Path, statements: tuple[str, ...], table: str
) -> None:
    db, config = _setup(tmp_path)
    app_exec(db, *(sql.format(name=table) for sql in statements))
    before = _fingerprint(db)
    _refused(_cli(config, "install", "--dry-run"), table)
    _refused(_cli(config, "install"), table)
    assert _fingerprint(db) == before  # no log, no trigger: nothing adopted


def test_uninstall_drop_log_never_drops_an_app_table(tmp_path: Path) -> None:
    db, config = _setup(tmp_path)
    assert _cli(config, "install").returncode == 0
    # The app replaces the daemon's side tables with its own tables of those names.
    app_exec(db, "DROP TABLE change_log_state", "DROP TABLE change_log_dead",
             *(sql.format(name="change_log_state") for sql in APP_STATE),
             *(sql.format(name="change_log_dead") for sql in APP_DEAD))
    before = _fingerprint(db)
    _refused(_cli(config, "uninstall", "--drop-log"), "change_log_dead")
    # SQLite reads a double-quoted unknown column as a string: once listed nonsense.
    _refused(_cli(config, "dead-letters", "list"), "change_log_dead")
    assert _fingerprint(db) == before
    assert db_rows(db, "SELECT * FROM change_log_state") == [("theme", "dark")]
    assert db_rows(db, "SELECT * FROM change_log_dead") == [("acme", "never pays on time")]


@pytest.mark.parametrize("dropped", ["change_log_dead", "change_log_state"])
def test_install_names_each_log_table_it_creates(tmp_path: Path, dropped: str) -> None:
    db, config = _setup(tmp_path)
    first = _cli(config, "install")
    assert first.returncode == 0, first.stderr
    for table in ("change_log", "change_log_dead", "change_log_state"):
        assert f"created log table {table!r}" in first.stdout.splitlines(), first.stdout
    app_exec(db, f"DROP TABLE {dropped}")
    plan = _cli(config, "install", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "-- 1 changes:" in plan.stdout.splitlines(), plan.stdout
    assert f"--   created log table {dropped!r}" in plan.stdout.splitlines(), plan.stdout
    again = _cli(config, "install")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"created log table {dropped!r}", "installed: 1 changes"]
    assert _cli(config, "install").stdout.splitlines() == ["installed: nothing to change"]
