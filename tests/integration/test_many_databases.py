"""Many databases in one daemon (`databases:`, issue 18 item 4), end to end: a real Typesense,
the app as separate stdlib-sqlite3 processes (support.app_writer, fleet_writer.py), the daemon a
real `python -m cdc_daemon run` subprocess, real signals. Each test names its collections
`<prefix>_{stem}_books`, so tests sharing the session's server never meet. Each ends with
`cdc-daemon verify` in sync for every database and each collection compared with its rows."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support import (
    API_KEY,
    Env,
    app_write,
    collection_documents,
    db_rows,
    log_backlog,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.database import ProcessorLock
from cdc_daemon.localserver import free_port

pytestmark = pytest.mark.typesense

BOOKS = "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL)"
WRITER = Path(__file__).with_name("fleet_writer.py")
INSERT = "INSERT OR REPLACE INTO books (id, title) VALUES (?, ?)"


# -- the world ------------------------------------------------------------------------------------


def write_config(env: Env, path: Path | None = None, *, glob: str = "tenants/*.db",
                 install: bool = False, workers: int = 4, **overrides: Any) -> Path:
    """A `databases:` config; each database's collection `<prefix>_<stem>_books`."""
    config: dict[str, Any] = {
        "databases": {"glob": glob, "collection": f"{env.prefix}_{{stem}}_{{collection}}",
                      "install": install, "workers": workers},
        "typesense": {"nodes": [env.typesense_url], "api_key": API_KEY, "timeout": 10},
        "sync": {"batch_size": 200, "poll_interval": 0.2, "max_attempts": 3},
        "logging": {"format": "json", "level": "debug"},  # "batch synced" is debug in a fleet
        "tables": [{"table": "books", "collection": "books"}],
    }
    for key, value in overrides.items():
        config[key] = {**config[key], **value} if isinstance(config.get(key), dict) else value
    path = path or env.config_path
    path.write_text(yaml.safe_dump(config))
    return path


def make_database(path: Path, rows: int, *, wal: bool = True) -> None:
    """The app creates the file: the books table and `rows` rows titled `<stem> book <i>`."""
    mode = "WAL" if wal else "DELETE"
    inserts = [(INSERT, [i, f"{path.stem} book {i}"]) for i in range(1, rows + 1)]
    app_write(path, [[(f"PRAGMA journal_mode={mode}", [])], [(BOOKS, [])],
                     *([inserts] if inserts else [])])


def write_rows(path: Path, *rows: tuple[int, str]) -> None:
    app_write(path, [[(INSERT, [key, title]) for key, title in rows]])


def collection_of(env: Env, stem: str) -> str:
    return f"{env.prefix}_{stem}_books"


def documents(env: Env, stem: str) -> dict[str, str]:
    """The collection's documents: id → title."""
    return {key: doc["title"] for key, doc in collection_documents(
        env.http, collection_of(env, stem)).items()}


def rows_of(path: Path) -> dict[str, str]:
    return {str(key): title for key, title in db_rows(path, "SELECT id, title FROM books")}


def synced(env: Env, path: Path) -> bool:
    return documents(env, path.stem) == rows_of(path)


def wait_synced(env: Env, path: Path, timeout: float = 30) -> None:
    wait_for(lambda: synced(env, path), timeout, message=f"{path.stem}: collection == rows")


def assert_all_verified(env: Env, paths: list[Path]) -> None:
    """`cdc-daemon verify` (every database, exit 0) and each collection compared with its rows."""
    result = env.cli("verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    reports = json.loads(result.stdout)["databases"]
    assert sorted(reports) == sorted(p.stem for p in paths), reports
    assert all(report["in_sync"] is True for report in reports.values()), reports
    for path in paths:
        assert documents(env, path.stem) == rows_of(path), path.stem


def events(env: Env, event: str, name: str = "daemon", **fields: Any) -> list[dict[str, Any]]:
    """The daemon's JSON log lines with this event (and these fields)."""
    found = []
    for line in read_daemon_log(env, name).splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
                found.append(entry)
    return found


def running(daemon: subprocess.Popen[str], env: Env, name: str = "daemon") -> None:
    assert daemon.poll() is None, read_daemon_log(env, name)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Daemons and app processes a test starts: stopped at its end whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in reversed(started):
        stop_process(process)


def start_daemon(env: Env, processes: list[subprocess.Popen[str]],
                 name: str = "daemon") -> subprocess.Popen[str]:
    daemon = start_daemon_logged(env, name=name)
    processes.append(daemon)
    return daemon


def tenants(env: Env) -> Path:
    folder = env.tmp / "tenants"
    folder.mkdir()
    return folder


def acme_syncing(env: Env, processes: list[subprocess.Popen[str]],
                 timeout: float = 30) -> tuple[Path, Path, subprocess.Popen[str]]:
    """The folder with acme.db (2 rows), `install: true`, and a daemon that has synced it."""
    folder = tenants(env)
    acme = folder / "acme.db"
    make_database(acme, rows=2)
    write_config(env, install=True)
    daemon = start_daemon(env, processes)
    wait_synced(env, acme, timeout=timeout)
    return folder, acme, daemon


# -- 1. databases come and go while the daemon runs -----------------------------------------------


def test_databases_added_and_removed_while_running(env: Env, processes: list[Any]) -> None:
    folder = tenants(env)
    first = [folder / f"{stem}.db" for stem in ("acme", "beta", "corp")]
    for path in first:
        make_database(path, rows=3)
    write_config(env)  # databases.install: false
    env.cli("install", check=True)
    env.cli("backfill", check=True)
    daemon = start_daemon(env, processes)
    for path in first:
        write_rows(path, (10, f"{path.stem} live"))
    for path in first:
        wait_synced(env, path)

    # delta: installed elsewhere with `install --database delta`, its rows logged, moved in.
    staging = env.tmp / "staging"
    staging.mkdir()
    staging_config = write_config(env, env.tmp / "staging.yaml", glob="staging/*.db")
    make_database(staging / "delta.db", rows=0)
    env.cli("install", "--database", "delta", config=staging_config, check=True)
    write_rows(staging / "delta.db", *((i, f"delta book {i}") for i in range(1, 6)))
    delta = folder / "delta.db"
    os.rename(staging / "delta.db", delta)
    wait_synced(env, delta)  # its logged changes, no backfill needed
    assert len(documents(env, "delta")) == 5

    # echo: not installed. Reported, left alone; installed while running: new writes flow at
    # once, the rows from before the install wait for `backfill --database echo`.
    make_database(staging / "echo.db", rows=4)
    echo = folder / "echo.db"
    os.rename(staging / "echo.db", echo)
    wait_for(lambda: events(env, "database not synced", database="echo",
                            state="not_installed"), 15, message="echo reported not installed")
    assert env.http.get(f"/collections/{collection_of(env, 'echo')}").status_code == 404
    env.cli("install", "--database", "echo", check=True)
    write_rows(echo, (5, "echo book 5"))
    wait_for(lambda: documents(env, "echo") == {"5": "echo book 5"}, 15,
             message="echo: the write after the install synced (its older rows not)")
    env.cli("backfill", "--database", "echo", check=True)
    wait_synced(env, echo)
    assert len(documents(env, "echo")) == 5

    # beta removed (the file, its -wal and -shm) while the daemon runs.
    beta = folder / "beta.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{beta}{suffix}").unlink(missing_ok=True)
    wait_for(lambda: events(env, "database stopped", database="beta"), 15,
             message="beta's member stopped")
    lock = ProcessorLock(beta)  # the daemon released its lock: this process can take it
    assert lock.acquire(), read_daemon_log(env)
    lock.release()
    remaining = [folder / f"{stem}.db" for stem in ("acme", "corp", "delta", "echo")]
    for path in remaining:  # the others keep syncing
        write_rows(path, (1, f"{path.stem} after beta left"), (20, f"{path.stem} new"))
    for path in remaining:
        wait_synced(env, path)
    running(daemon, env)
    assert documents(env, "beta") == {"1": "beta book 1", "2": "beta book 2",
                                      "3": "beta book 3", "10": "beta live"}  # its collection stays
    assert_all_verified(env, remaining)
    assert stop_process(daemon) == 0
    assert "Traceback" not in read_daemon_log(env)


def test_install_true_new_files_are_installed_with_their_rows(env: Env, processes: list[Any],
                                                                ) -> None:
    """`databases.install: true`: a file the app creates while the daemon runs gets the log,
    the triggers and a backfill by itself; every row it had, and every row after, searchable."""
    folder, acme, daemon = acme_syncing(env, processes)
    assert len(documents(env, "acme")) == 2

    # The app makes the file in place, in several transactions (the daemon may look between).
    beta = folder / "beta.db"
    make_database(beta, rows=0)
    app_write(beta, [[(INSERT, [i, f"beta book {i}"]) for i in range(n, n + 50)]
                     for n in range(1, 301, 50)])
    write_rows(beta, (301, "beta book 301"))
    wait_synced(env, beta)
    assert len(documents(env, "beta")) == 301
    running(daemon, env)
    assert_all_verified(env, [acme, beta])
    assert stop_process(daemon) == 0


def test_a_backup_moved_over_a_database_is_synced(env: Env, processes: list[Any]) -> None:
    """`mv backup.db tenants/acme.db` while the daemon runs: reopened, and its collection
    brought back to the backup's rows (row 6, written after the backup, deleted)."""
    folder = tenants(env)
    acme, beta = folder / "acme.db", folder / "beta.db"
    for path in (acme, beta):
        make_database(path, rows=0)
    write_config(env)
    env.cli("install", check=True)
    daemon = start_daemon(env, processes)
    for path in (acme, beta):
        write_rows(path, *((i, f"{path.stem} book {i}") for i in range(1, 6)))
    for path in (acme, beta):
        wait_synced(env, path)
    backup = env.tmp / "acme.backup"
    source, target = sqlite3.connect(acme), sqlite3.connect(backup)
    source.backup(target)
    source.close()
    target.close()
    write_rows(acme, (6, "acme book 6, not in the backup"))
    wait_synced(env, acme)
    # Its log empty (acknowledged): the daemon has nothing to look again for.
    wait_for(lambda: log_backlog(acme) == 0, 10, message="acme's log acknowledged")
    os.replace(backup, acme)
    wait_for(lambda: events(env, "database reopened", database="acme"), 10,
             message="the restored file reopened")
    wait_synced(env, acme)
    assert sorted(documents(env, "acme"), key=int) == ["1", "2", "3", "4", "5"]
    running(daemon, env)
    assert_all_verified(env, [acme, beta])
    assert stop_process(daemon) == 0


# -- 2. kill -9 while 50 databases are busy -------------------------------------------------------


def test_kill_9_while_fifty_databases_are_busy(env: Env, processes: list[Any]) -> None:
    folder = tenants(env)
    paths = [folder / f"db{i:02}.db" for i in range(50)]
    for path in paths:
        make_database(path, rows=0)  # identical files: copies of the first (app_writer)
    write_config(env)
    env.cli("install", check=True)  # every row comes after: each one is logged
    daemon = start_daemon(env, processes)
    stop_file = env.tmp / "stop-writers"
    writers = []
    for n in range(10):  # a writer per 5 databases
        writer = subprocess.Popen(
            [sys.executable, "-I", "-S", str(WRITER), str(stop_file), str(n), "40",
             *map(str, paths[n::10])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        writers.append(writer)
        processes.append(writer)

    def every_collection_filling() -> bool:
        running(daemon, env)
        return all(documents(env, p.stem) for p in paths)

    wait_for(every_collection_filling, 30, message="every database syncing", interval=0.5)
    daemon.send_signal(signal.SIGKILL)
    assert daemon.wait(10) == -signal.SIGKILL
    restarted = start_daemon(env, processes, name="restarted")

    def all_started() -> bool:
        running(restarted, env, "restarted")
        return len(events(env, "database syncing", "restarted")) == len(paths)

    wait_for(all_started, 30, message="the restarted daemon syncing all 50", interval=0.2)
    wait_for(lambda: len(events(env, "batch synced", "restarted")) >= len(paths), 30,
             message="the restarted daemon syncing the writers' changes", interval=0.2)
    stop_file.touch()
    for writer in writers:
        out, err = writer.communicate(timeout=30)
        assert writer.returncode == 0, err
        assert int(out) > 0
    for path in paths:
        wait_synced(env, path, timeout=30)
    running(restarted, env, "restarted")
    assert_all_verified(env, paths)
    assert stop_process(restarted) == 0


# -- 3. one database corrupted, another locked, for a minute --------------------------------------

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT OR REPLACE INTO books (id, title) VALUES (100, 'written while locked')")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
conn.close()
"""


def metric_problems(port: int) -> set[tuple[str, str]]:
    """(database, state) of each cdc_database_problem series."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    found = set()
    for line in text.splitlines():
        if line.startswith("cdc_database_problem{") and line.endswith(" 1.0"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:
                                                               line.index("}")].split(","))
            found.add((labels["database"].strip('"'), labels["state"].strip('"')))
    return found


def test_a_corrupted_and_a_locked_database_for_a_minute(env: Env, processes: list[Any]) -> None:
    folder = tenants(env)
    healthy = [folder / f"ok{i}.db" for i in range(8)]
    locked, broken = folder / "locked.db", folder / "broken.db"
    for path in healthy:
        make_database(path, rows=0)
    for path in (locked, broken):
        make_database(path, rows=0, wal=False)  # rollback journal: BEGIN EXCLUSIVE bars readers
    port = free_port()
    write_config(env, metrics={"listen": f"127.0.0.1:{port}"})
    env.cli("install", check=True)
    daemon = start_daemon(env, processes)
    everything = [*healthy, locked, broken]
    for path in everything:
        write_rows(path, *((i, f"{path.stem} book {i}") for i in range(1, 6)))
    for path in everything:
        wait_synced(env, path)

    copy = env.tmp / "broken.copy"
    source, target = sqlite3.connect(broken), sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.close()
    locker = subprocess.Popen([sys.executable, "-I", "-S", "-c", LOCKER, str(locked)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    processes.append(locker)
    assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
    with open(broken, "r+b") as file:  # its first pages garbage, under the daemon
        file.write(b"\xde\xad\xbe\xef" * 2048)
    began = time.monotonic()

    # A minute: the other eight keep syncing, the daemon stays up, the metrics name both.
    n = 100
    seen_problems: set[tuple[str, str]] = set()
    while time.monotonic() - began < 60:
        n += 1
        for path in healthy:
            write_rows(path, (n, f"{path.stem} round {n}"))
        for path in healthy:
            wait_synced(env, path, timeout=5)
        running(daemon, env)
        seen_problems |= metric_problems(port)
    assert n >= 104, n  # several rounds across the minute
    names = {name for name, _state in seen_problems}
    assert {"locked", "broken"} <= names, seen_problems
    assert not names - {"locked", "broken"}, seen_problems
    print("problems seen in the metrics:", sorted(seen_problems))

    assert locker.stdin is not None
    locker.stdin.write("\n")  # released: its transaction commits row 100
    locker.stdin.close()
    assert locker.wait(10) == 0
    os.replace(copy, broken)  # restored from the copy: noticed at once, no write needed
    wait_for(lambda: events(env, "database reopened", database="broken"), 10,
             message="the restored file reopened")
    write_rows(broken, (6, "broken book 6 after the restore"))
    write_rows(locked, (7, "locked book 7 after the release"))
    for path in (locked, broken):
        wait_synced(env, path, timeout=30)
    assert rows_of(locked)["100"] == "written while locked"
    running(daemon, env)
    wait_for(lambda: not metric_problems(port), 30, message="no database problem left")
    assert_all_verified(env, everything)
    assert stop_process(daemon) == 0
    assert "Traceback" not in read_daemon_log(env)  # failures said as such, not as bugs


# -- SIGHUP ---------------------------------------------------------------------------------------


def test_sighup_reload_applies_batch_size_and_refuses_a_new_glob(env: Env,
                                                                 processes: list[Any]) -> None:
    folder = tenants(env)
    paths = [folder / f"{stem}.db" for stem in ("acme", "beta")]
    for path in paths:
        make_database(path, rows=0)
    write_config(env)
    env.cli("install", check=True)
    daemon = start_daemon(env, processes)
    for path in paths:
        write_rows(path, (1, f"{path.stem} book 1"))
    for path in paths:
        wait_synced(env, path)

    write_config(env, sync={"batch_size": 7})
    daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: events(env, "config reloaded", database="acme")
             and events(env, "config reloaded", database="beta"), 15,
             message="each database applied the reload")
    (fleet_line,) = [e for e in events(env, "config reloaded") if "database" not in e]
    assert fleet_line["changed"] == ["sync.batch_size"], fleet_line
    for path in paths:  # syncing on the new config, in batches of 7
        write_rows(path, *((i, f"{path.stem} book {i}") for i in range(2, 40)))
    for path in paths:
        wait_synced(env, path)

    write_config(env, glob="elsewhere/*.db", sync={"batch_size": 7})
    daemon.send_signal(signal.SIGHUP)
    refused = wait_for(lambda: events(env, "reload failed; keeping the previous config"), 15,
                       message="the reload refused")
    assert len(refused) == 1 and "databases" in refused[0]["error"], refused
    assert "\n" not in refused[0]["error"]
    assert len(events(env, "config reloaded")) == 3  # the first reload's lines only
    for path in paths:  # still running on the old glob
        write_rows(path, (1, f"{path.stem} after the refused reload"))
    for path in paths:
        wait_synced(env, path)
    running(daemon, env)
    write_config(env, sync={"batch_size": 7})  # the running config again, for verify
    assert_all_verified(env, paths)
    assert stop_process(daemon) == 0
