"""`databases:` mode against what a hostile tester found (one test per fix): a file created before
its tables, a never-installed file moved over a syncing database, files that are not (yet)
SQLite databases, the daemon's own opens of a file it does not sync, a removed database's
descriptor, the admin API on a database that is not syncing, the metrics of a database that lost
a trigger. A real Typesense, the daemon a `python -m cdc_daemon run` subprocess, the app's writes
with stdlib sqlite3 in a separate process (support.app_writer)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import inotify_simple
import pytest
from support import Env, app_exec, app_write, read_daemon_log, stop_process, wait_for
from test_many_databases import (
    BOOKS,
    INSERT,
    acme_syncing,
    assert_all_verified,
    documents,
    events,
    make_database,
    metric_problems,
    rows_of,
    running,
    start_daemon,
    tenants,
    wait_synced,
    write_config,
    write_rows,
)

from cdc_daemon.localserver import free_port

pytestmark = pytest.mark.typesense

BUGS = ("Traceback", "Exception in ASGI application")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Daemons a test starts: stopped at its end whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in reversed(started):
        stop_process(process)


def looked_at(env: Env, name: str, log: str = "daemon") -> bool:
    """The daemon tried the database `name` once: reported it not synced, or installed it."""
    return bool(events(env, "database not synced", log, database=name)
                or events(env, "database installed; backfilling", log, database=name))


def opens(folder: Path, files: tuple[str, ...], seconds: float) -> int:
    """How many times any process opened these database files of the folder over `seconds`, as
    inotify sees it (each try at a database opens the file once, and its side files)."""
    with inotify_simple.INotify() as inotify:
        inotify.add_watch(str(folder), inotify_simple.flags.OPEN)
        count = 0
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            for event in inotify.read(timeout=max(1, int(left * 1000))):
                count += event.name in files
    return count


# -- 1. a file created before its tables ----------------------------------------------------------


def test_install_waits_until_every_table_is_there(env: Env, processes: list[Any]) -> None:
    """The app creates its new database file (journal_mode=WAL), and only later its table and
    rows: the daemon installs it then, not into the empty file (whose books table would never
    get its triggers: every later change lost)."""
    folder = tenants(env)
    write_config(env, install=True)
    daemon = start_daemon(env, processes)
    wait_for(lambda: events(env, "running"), 15, message="the daemon running")
    new = folder / "new.db"
    app_exec(new, "PRAGMA journal_mode=WAL")
    wait_for(lambda: looked_at(env, "new"), 15, message="the daemon looked at the empty file")
    app_write(new, [[(BOOKS, [])], [(INSERT, [1, "one"]), (INSERT, [2, "two"])]])
    wait_synced(env, new, timeout=15)
    write_rows(new, (1, "one, updated"), (3, "three"))
    wait_synced(env, new, timeout=15)
    assert documents(env, "new") == {"1": "one, updated", "2": "two", "3": "three"}
    (waiting, *_) = events(env, "database not synced", database="new")
    assert waiting["state"] == "not_installed" and "books" in waiting["problem"], waiting
    assert len(events(env, "database installed; backfilling", database="new")) == 1
    running(daemon, env)
    assert not any(bug in read_daemon_log(env) for bug in BUGS)


# -- 2. a never-installed file moved over a syncing database --------------------------------------


def test_a_file_without_the_log_moved_over_a_database_is_adopted(env: Env,
                                                                 processes: list[Any]) -> None:
    """`databases.install: true`, a fresh database (no change log) moved over acme.db: installed
    and adopted as any replaced file (its rows searchable, the old file's documents gone), not
    failing over and over."""
    folder = tenants(env)
    acme = folder / "acme.db"
    make_database(acme, rows=3, wal=False)
    write_config(env, install=True)
    daemon = start_daemon(env, processes)
    wait_synced(env, acme, timeout=15)
    fresh = env.tmp / "fresh.db"
    app_write(fresh, [[("PRAGMA journal_mode=DELETE", [])], [(BOOKS, [])],
                      [(INSERT, [7, "fresh seven"])]])
    os.rename(fresh, acme)
    wait_synced(env, acme, timeout=15)
    assert documents(env, "acme") == {"7": "fresh seven"}
    write_rows(acme, (8, "eight"))
    wait_synced(env, acme, timeout=15)
    running(daemon, env)
    failed = events(env, "sync failed", database="acme")
    assert len(failed) < 10, failed[:3]
    assert_all_verified(env, [acme])
    assert not any(bug in read_daemon_log(env) for bug in BUGS)


# -- 3. files that are not (yet) SQLite databases -------------------------------------------------


def test_a_file_that_is_not_a_database_is_never_written(env: Env, processes: list[Any]) -> None:
    """`databases.install: true`: a non-SQLite file and a 0-byte file (a copy that has just
    begun) matching the glob are looked at, never written; the 0-byte one is installed once its
    bytes are a database."""
    folder = tenants(env)
    junk, empty = folder / "junk.db", folder / "empty.db"
    junk_bytes = b"this is not an SQLite database\n" * 300
    junk.write_bytes(junk_bytes)
    empty.touch()
    write_config(env, install=True)
    daemon = start_daemon(env, processes)
    wait_for(lambda: looked_at(env, "junk") and looked_at(env, "empty"), 15,
             message="the daemon looked at both files")
    running(daemon, env)
    assert junk.read_bytes() == junk_bytes
    assert empty.read_bytes() == b""
    assert sorted(os.listdir(folder)) == ["empty.db", "junk.db"]  # no -journal, -wal, lock
    # The copy goes on: the file is now the app's database, with its tables and rows.
    source = env.tmp / "source.db"
    make_database(source, rows=3, wal=False)
    with open(empty, "r+b") as file:
        file.write(source.read_bytes())
    wait_synced(env, empty, timeout=15)
    assert len(documents(env, "empty")) == 3
    assert junk.read_bytes() == junk_bytes
    running(daemon, env)
    assert not any(bug in read_daemon_log(env) for bug in BUGS)


# -- 4. no busy loop on the daemon's own opens ----------------------------------------------------


def test_no_busy_loop_on_a_database_not_synced(env: Env, processes: list[Any]) -> None:
    """A database without the change log (`install: false`), and one a second fleet daemon finds
    locked by the first: each is opened a few times a minute at most, not again on the event of
    its own last opening (thousands of opens a second)."""
    folder = tenants(env)
    plain, taken = folder / "plain.db", folder / "taken.db"
    make_database(plain, rows=2)
    make_database(taken, rows=2)
    write_config(env)  # install: false
    env.cli("install", "--database", "taken", check=True)
    env.cli("backfill", "--database", "taken", check=True)
    first = start_daemon(env, processes)
    wait_for(lambda: events(env, "database not synced", database="plain",
                            state="not_installed"), 15, message="plain reported not installed")
    wait_synced(env, taken, timeout=15)
    seen = opens(folder, ("plain.db",), 3.0)
    assert seen < 10, f"plain.db opened {seen} times in 3 s"

    second = start_daemon(env, processes, name="second")
    wait_for(lambda: events(env, "database not synced", "second", database="taken",
                            state="locked"), 15, message="the second daemon finds taken locked")
    seen = opens(folder, ("taken.db", "plain.db"), 3.0)
    assert seen < 20, f"the databases opened {seen} times in 3 s"  # taken.db: its backoff
    write_rows(taken, (3, "taken book 3"))  # the first daemon still syncs it
    wait_synced(env, taken, timeout=15)
    running(first, env)
    running(second, env, "second")
    for name in ("daemon", "second"):
        assert not any(bug in read_daemon_log(env, name) for bug in BUGS)


# -- 5. a removed database's descriptor -----------------------------------------------------------


def test_a_removed_database_leaves_no_descriptor_open(env: Env, processes: list[Any]) -> None:
    """`rm` of a synced database: its member stops and every descriptor to the deleted file is
    closed (else its space is never freed while the daemon runs)."""
    _folder, acme, daemon = acme_syncing(env, processes, timeout=15)

    def links() -> list[str]:
        fds = Path(f"/proc/{daemon.pid}/fd")
        found = []
        for fd in fds.iterdir():
            try:
                found.append(os.readlink(fd))
            except FileNotFoundError:  # closed meanwhile
                continue
        return [link for link in found if str(acme) in link]

    assert links(), "the daemon holds acme.db open while syncing it"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{acme}{suffix}").unlink(missing_ok=True)
    wait_for(lambda: events(env, "database stopped", database="acme"), 15,
             message="acme's member stopped")
    wait_for(lambda: not links(), 5, message=f"no descriptor left to acme.db: {links()}")
    running(daemon, env)


# -- 6. the admin API on a database that is not syncing -------------------------------------------


def test_admin_api_on_a_database_not_syncing_answers_409(env: Env, processes: list[Any]) -> None:
    folder = tenants(env)
    make_database(folder / "plain.db", rows=2)
    port = free_port()
    write_config(env, admin={"listen": f"127.0.0.1:{port}"})  # install: false
    daemon = start_daemon(env, processes)
    wait_for(lambda: events(env, "database not synced", database="plain",
                            state="not_installed"), 15, message="plain reported not installed")
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=30)
    with api:
        answers = [api.post("/verify", json={"database": "plain"}),
                   api.post("/pause", json={"database": "plain"}),
                   api.get("/status", params={"database": "plain"})]
        for answer in answers:
            assert answer.status_code == 409, (answer.request.url, answer.text)
            error = answer.json()["error"]
            assert "not syncing" in error and "not_installed" in error, error
        assert api.get("/status", params={"database": "nope"}).status_code == 400
    running(daemon, env)
    assert not any(bug in read_daemon_log(env) for bug in BUGS)


# -- 8. a syncing database that lost a trigger, in the metrics ------------------------------------


def test_metrics_name_a_database_whose_trigger_was_dropped(env: Env,
                                                           processes: list[Any]) -> None:
    folder = tenants(env)
    acme, beta = folder / "acme.db", folder / "beta.db"
    make_database(acme, rows=2)
    make_database(beta, rows=2)
    port = free_port()
    write_config(env, install=True, metrics={"listen": f"127.0.0.1:{port}"})
    daemon = start_daemon(env, processes)
    wait_synced(env, acme, timeout=15)
    wait_synced(env, beta, timeout=15)
    assert metric_problems(port) == set()
    app = sqlite3.connect(acme, isolation_level=None)  # the app's migration drops one
    try:
        (trigger,) = app.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"
                                 " AND tbl_name = 'books' AND sql LIKE '%UPDATE%'"
                                 " ORDER BY name LIMIT 1").fetchone()
        app.execute(f'DROP TRIGGER "{trigger}"')
    finally:
        app.close()
    wait_for(lambda: metric_problems(port) == {("acme", "triggers_missing")}, 15,
             message="cdc_database_problem{database=acme,state=triggers_missing}")
    assert rows_of(beta) == documents(env, "beta")
    running(daemon, env)


def test_the_folder_deleted_and_made_again_is_watched_again(env: Env,
                                                           processes: list[Any]) -> None:
    """`rm -rf tenants; mkdir tenants` while running: its databases stop, the watch is put back
    once the folder is there again, and a database created in it then syncs at once (not at
    the next 30 s listing)."""
    import shutil

    folder, _acme, daemon = acme_syncing(env, processes)

    shutil.rmtree(folder)
    wait_for(lambda: events(env, "database stopped", database="acme"), 10, "acme stopped")
    folder.mkdir()
    wait_for(lambda: events(env, "watching the folder again"), 10, "the watch put back")
    beta = folder / "beta.db"
    make_database(beta, rows=3)
    write_rows(beta, (4, "beta book 4"))
    wait_synced(env, beta, timeout=10)
    running(daemon, env)
    log = read_daemon_log(env, "daemon")
    assert not any(bug in log for bug in BUGS), log[-2000:]
    assert len(events(env, "databases not listed")) == 0
    assert stop_process(daemon) == 0
